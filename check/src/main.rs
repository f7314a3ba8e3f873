//! `cggm-check validate DIR`: the checks of `cggm validate` (NIfTI headers and voxels through the
//! one bounded reader, dataset layouts, feature datasets) in a small process. It calls the same
//! code as `cggm validate`; it only leaves libtorch out of the process (no model code is
//! reachable from here, so the linker drops it), which costs `cggm` ~500 MB before `main` runs.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cggm-check",
    version,
    about = "Check datasets and NIfTI files without loading libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a dataset folder (every NIfTI case, or a feature dataset) and print a report.
    Validate(cggm_trainer::cli::data_commands::ValidateArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Validate(args) => cggm_trainer::cli::data_commands::validate(args),
    }
}
