//! The trainer's subcommands of the `cggm` binary (`serve` and `study` are in `main.rs`).

use crate::{bench, data_commands, run_commands};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic dataset: BraTS-2021-layout NIfTI phantoms, or (--task classification |
    /// regression) an imbalanced feature dataset.
    Synth(data_commands::SynthArgs),
    /// Check a dataset folder (every NIfTI case, or a feature dataset) and print a report.
    Validate(data_commands::ValidateArgs),
    /// Train a multimodal model (CGGM or a baseline) for segmentation, classification or regression.
    Train(Box<run_commands::TrainArgs>),
    /// Evaluate a run's best checkpoint per case in 3-D (Dice, HD95, per-modality Dice).
    Eval(run_commands::EvalArgs),
    /// Segment one study with a trained run.
    Infer(run_commands::InferArgs),
    /// Benchmarks: data loader, training step (joint vs CGGM), inference.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Synth(args) => data_commands::synth(args),
        Command::Validate(args) => data_commands::validate(args),
        Command::Train(args) => run_commands::run_train(*args),
        Command::Eval(args) => run_commands::run_eval(args),
        Command::Infer(args) => run_commands::run_infer(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
