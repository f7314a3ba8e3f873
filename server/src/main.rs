//! `cggm`: the one user-facing binary. `serve` runs the web application; the other subcommands
//! (synth, validate, train, eval, infer, bench) come from the trainer.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cggm", version, about = "CGGM Studio: multimodal brain-tumour MRI segmentation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Trainer(cggm_trainer::cli::Command),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Trainer(command) => cggm_trainer::cli::run(command),
    }
}
