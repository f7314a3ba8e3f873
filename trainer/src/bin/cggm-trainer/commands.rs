//! The subcommands that need libtorch. `cggm train|eval|infer|bench` hand their arguments to this
//! binary unchanged (`cli/src/main.rs`), so the help and the errors a user sees are these.

use crate::{bench, export_command, run_commands};
use cggm_core::data_commands;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic dataset (as `cggm synth`).
    Synth(data_commands::SynthArgs),
    /// Check a dataset folder (as `cggm validate`).
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
    /// Print how many CUDA devices libtorch sees here (the server asks once when it starts).
    Devices,
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
        Command::Devices => {
            println!("{}", cggm_trainer::device::cuda_devices());
            Ok(())
        }
    }
}
