//! `cggm synth` and `cggm validate`: the data layer's subcommands (no libtorch).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;

use crate::data::features::synth::{write_feature_dataset, FeatureSynthConfig};
use crate::data::features::{is_feature_dataset, validate_features};
use crate::data::synth::{write_synthetic_dataset, SynthConfig};
use crate::data::validate_dataset_counting;
use crate::progress::Progress;
use crate::task::TaskKind;

/// Why `--size` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("expected XxYxZ such as 96x96x64, got {0:?}")]
    Form(String),
    #[error("{part:?} in {text:?} is not a whole number")]
    NotANumber { part: String, text: String },
    #[error("each side must be 16..512 voxels, got {0}")]
    Side(usize),
}

fn parse_size(text: &str) -> Result<[usize; 3], SizeError> {
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let [x, y, z] = parts.as_slice() else {
        return Err(SizeError::Form(text.to_string()));
    };
    let mut size = [0usize; 3];
    for (slot, part) in size.iter_mut().zip([x, y, z]) {
        *slot = part.trim().parse().map_err(|_| SizeError::NotANumber {
            part: part.to_string(),
            text: text.to_string(),
        })?;
        if !(16..=512).contains(slot) {
            return Err(SizeError::Side(*slot));
        }
    }
    Ok(size)
}

/// Write a synthetic BraTS-2021-layout dataset (int16 images, uint8 labels 0/1/2/4, .nii.gz).
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Folder to write the case folders into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 8)]
    pub cases: usize,
    /// Random seed: the same seed writes the same dataset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Volume size XxYxZ in 1 mm voxels (BraTS: 240x240x155).
    #[arg(long, default_value = "96x96x64", value_parser = parse_size)]
    pub size: [usize; 3],
    /// How much FLAIR dominates: the tumour contrast of t1ce/t1/t2 shrinks and their noise grows
    /// with it (0 = equally informative modalities). Feature tasks: how much weaker audio and
    /// vision are than text.
    #[arg(long, default_value_t = 1.0)]
    pub imbalance: f64,
    /// segmentation (NIfTI phantoms, the default), or classification / regression: a feature
    /// dataset (dataset.json + train/valid/test.safetensors) with text strong, audio and vision
    /// weak but needed.
    #[arg(long, default_value = "segmentation")]
    pub task: TaskKind,
    /// Feature tasks: training samples (validation and test get a third as many each).
    #[arg(long, default_value_t = 480)]
    pub samples: usize,
}

pub fn synth(args: SynthArgs) -> anyhow::Result<()> {
    if !(args.imbalance.is_finite() && args.imbalance >= 0.0) {
        bail!("--imbalance must be a finite number >= 0");
    }
    if args.task != TaskKind::Segmentation {
        if args.samples < 3 {
            bail!("--samples must be at least 3 (one per split)");
        }
        let cfg = FeatureSynthConfig {
            task: args.task,
            seed: args.seed,
            train: args.samples,
            valid: (args.samples / 3).max(1),
            test: (args.samples / 3).max(1),
            imbalance: args.imbalance,
        };
        let started = Instant::now();
        let spec = write_feature_dataset(&args.out, &cfg)?;
        println!(
            "wrote a synthetic {} feature dataset ({} train / {} valid / {} test samples; modalities {}) to {} in {:.1} s",
            spec.task,
            cfg.train,
            cfg.valid,
            cfg.test,
            spec.names().join(", "),
            args.out.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let config = SynthConfig {
        cases: args.cases,
        seed: args.seed,
        size: args.size,
        imbalance: args.imbalance,
    };
    let started = Instant::now();
    let folders = write_synthetic_dataset(&args.out, &config)?;
    println!(
        "wrote {} synthetic cases of {}x{}x{} to {} in {:.1} s",
        folders.len(),
        args.size[0],
        args.size[1],
        args.size[2],
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Check a dataset folder (BraTS 2021/2023+, MSD Task01, nnU-Net v2 raw or a feature dataset),
/// name the layout found and report every bad case.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The dataset folder.
    pub dir: PathBuf,
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    if !args.dir.is_dir() {
        bail!(
            "no such folder: {} (give the folder that holds the dataset's cases, imagesTr/ or \
             dataset.json)",
            args.dir.display()
        );
    }
    if is_feature_dataset(&args.dir) {
        let report = validate_features(&args.dir)?;
        println!("dataset: {}", args.dir.display());
        println!("layout: feature dataset ({} task)", report.spec.task);
        for m in &report.spec.modalities {
            println!("  modality {}: dim {}, steps {}", m.name, m.dim, m.steps());
        }
        if !report.spec.classes.is_empty() {
            println!("  classes: {}", report.spec.classes.join(", "));
        }
        for (split, n) in &report.samples {
            println!("  {split}: {n} samples");
        }
        println!("valid: every split matches dataset.json");
        return Ok(());
    }
    let bar = std::sync::OnceLock::new();
    let report = validate_dataset_counting(&args.dir, &|done, total| {
        bar.get_or_init(|| Progress::new("validate", total as u64, "cases"))
            .set_position(done as u64)
    });
    if let Some(bar) = bar.get() {
        bar.finish();
    }
    let labelled = report
        .cases
        .iter()
        .filter(|c| c.label_path().is_some())
        .count();
    println!("dataset: {}", args.dir.display());
    println!("layout: {}", report.layout.describe());
    println!(
        "valid cases: {} ({labelled} with labels)",
        report.cases.len()
    );
    println!("skipped cases: {}", report.problems.len());
    for problem in &report.problems {
        println!("  - {problem}");
    }
    if report.cases.is_empty() {
        bail!(
            "no valid case in {}; expected BraTS case folders (CASE/CASE_{{flair,t1ce,t1,t2,seg}}.nii.gz, or BraTS 2023 CASE-{{t2f,t1c,t1n,t2w,seg}}), an MSD Task01 or an nnU-Net v2 imagesTr/ + labelsTr/ folder (README \"Data layouts\")",
            args.dir.display()
        );
    }
    Ok(())
}
