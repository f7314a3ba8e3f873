//! `cggm export`: a run's model as an ONNX file (see `crate::export`).

use anyhow::Result;
use cggm_trainer::export::{export, ExportFormat};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A run directory (a segmentation, classification or regression run): its best checkpoint
    /// is exported, its last one when it has no best yet.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The file format: onnx.
    #[arg(long, default_value = "onnx", value_parser = parse_format)]
    pub format: ExportFormat,
    /// The file to write (e.g. model.onnx).
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_format(s: &str) -> Result<ExportFormat, cggm_core::unknown_name::UnknownName> {
    s.parse()
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    let summary = export(&args.checkpoint, args.format, &args.out)?;
    eprintln!(
        "{} model ({} checkpoint, epoch {}) written to {} ({:.1} MB); inputs {}; outputs {}",
        summary.task,
        summary.checkpoint,
        summary.epoch,
        summary.out.display(),
        summary.bytes as f64 / 1e6,
        summary.inputs.join(", "),
        summary.outputs.join(", ")
    );
    Ok(())
}
