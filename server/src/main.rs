//! `cggm`: the one user-facing binary. `serve` runs the web application; the other subcommands
//! (synth, validate, train, eval, infer, bench) come from the trainer.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cggm",
    version,
    about = "CGGM Studio: multimodal brain-tumour MRI segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large trainer arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the web application (http://127.0.0.1:8080 by default).
    Serve(cggm_server::ServeArgs),
    /// Launch a method comparison (methods x seeds on one dataset) on a running server.
    Study(cggm_server::study_cli::StudyArgs),
    #[command(flatten)]
    Trainer(cggm_trainer::cli::Command),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,tower_http=info,sqlx=warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(cggm_server::serve(args))
        }
        Command::Study(args) => cggm_server::study_cli::run(args),
        Command::Trainer(command) => {
            cggm_server::exit_with_parent();
            cggm_trainer::cli::run(command)
        }
    }
}
