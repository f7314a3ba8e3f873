//! The trainer's subcommands of the `cggm` binary. The binary itself lives in the server crate and
//! adds `serve`.

pub mod bench;
pub mod data_commands;
pub mod export_command;
pub mod run_commands;

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
    /// Write a run's model as an ONNX file (segmentation or feature model) for other runtimes.
    Export(export_command::ExportArgs),
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
        Command::Export(args) => export_command::run_export(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
