//! `cggm dicom-seg`: a NIfTI prediction as a DICOM Segmentation object referring to a DICOM
//! series on disk, written by the server crate's writer (README: DICOM SEG).

use anyhow::Context;
use cggm_server::dicom_seg::{write_segmentation, SegmentationSource};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DicomSegArgs {
    /// The prediction: NIfTI labels 0/1/2/4 (or 3 for ET) on the reference series' grid.
    #[arg(long)]
    prediction: PathBuf,
    /// The folder of the reference series' DICOM files (the series the prediction was made on).
    #[arg(long)]
    reference: PathBuf,
    /// Where to write the SEG (a .dcm file).
    #[arg(long)]
    out: PathBuf,
    /// Segment Algorithm Name recorded for every segment.
    #[arg(long, default_value = "CGGM Studio")]
    algorithm: String,
}

pub fn run(args: DicomSegArgs) -> anyhow::Result<()> {
    let bytes = write_segmentation(&SegmentationSource {
        prediction: &args.prediction,
        reference_series: &args.reference,
        algorithm: &args.algorithm,
    })?;
    std::fs::write(&args.out, &bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{} ({} bytes)", args.out.display(), bytes.len());
    Ok(())
}
