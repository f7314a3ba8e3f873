//! The trainer's subcommands (synth, validate, train, eval, infer, bench) without the web server,
//! for scripts on machines that do not build the server: `cargo run -p cggm-trainer --example
//! trainer_cli -- train ...`. The user-facing binary is `cggm` (server crate).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cggm-trainer", about = "CGGM Studio trainer commands")]
struct Cli {
    #[command(subcommand)]
    command: cggm_trainer::cli::Command,
}

fn main() -> anyhow::Result<()> {
    cggm_trainer::cli::run(Cli::parse().command)
}
