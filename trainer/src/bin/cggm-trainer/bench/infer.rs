//! `cggm bench infer`: the time to predict one whole volume by the default path, the folded
//! network cropped to the brain, and the reference path (the training modules in eval mode),
//! alternating in one process; with `--flops` the default path's FLOP utilisation.
use super::reference::{self, ReferenceError};
use super::{process_cpu_seconds, sync, utilisation};
use anyhow::Result;
use cggm_core::preset::Preset;
use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::Study;
use cggm_trainer::device::{describe, parse_device};
use cggm_trainer::model::Model;
use cggm_trainer::predict::{synthetic_study, PredictOptions, Predictor, VolumePrediction};
use ndarray::{Array3, Array4};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

#[derive(Debug, clap::Args)]
pub struct InferBenchArgs {
    #[arg(long, default_value = Preset::DEFAULT.name())]
    pub preset: String,
    /// Volume size XxYxZ.
    #[arg(long, default_value = "240x240x155")]
    pub size: String,
    /// `brain`: a synthetic brain of a BraTS brain's typical extent (138x168x138 voxels in
    /// 240x240x155) with background around it, as in real cases; `full`: random intensities in
    /// every voxel (the worst case: nothing to crop or skip).
    #[arg(long, default_value = "brain")]
    pub volume: String,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// A trained run to take the weights from (default: the preset's fresh weights).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Skip the reference path (only time the fast one).
    #[arg(long)]
    pub no_reference: bool,
    /// Also report utilisation: the FLOPs of one slice's forward pass counted by the PyTorch
    /// reference (scripts/bench_torch.py --count-forward, through --python or $CGGM_PYTHON) times
    /// the slices the default path predicts, over its time, against the machine's peak.
    #[arg(long)]
    pub flops: bool,
    /// The Python with torch for --flops (default: $CGGM_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// How the encoders of the preset's fresh model run: auto, grouped or separate (a --run
    /// keeps its own configuration).
    #[arg(long, default_value = "auto")]
    pub encoders: String,
}

pub fn bench_infer(args: InferBenchArgs) -> Result<()> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let field = parse_size(&args.size)?;
    // A model without optimiser: inference allocates no training state.
    let model = match &args.run {
        Some(run) => Model::open_segmentation(run, Some(&args.device))?,
        None => {
            let mut cfg = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
            cfg.model.encoders = super::encoder_layout(&args.encoders)?;
            Model::segmentation(cfg, device)
        }
    };
    let study = bench_volume(&args.volume, field)?;
    let brain = brain_mask(&study);
    let predictor = model.predictor();
    let (whole, cropped) = predict_options();
    let variants = variants(&predictor, &study, args.no_reference, whole, cropped);
    let timed = time_variants(&variants, args.repeats, device);
    let brain_voxels = brain.iter().filter(|&&b| b).count();
    let default = timed.last().expect("the default path always runs");
    let mut report = InferReport {
        bench: "inference",
        preset: model.cfg.preset.clone(),
        weights: args
            .run
            .as_ref()
            .map_or("fresh".to_string(), |r| r.display().to_string()),
        size: field,
        volume: args.volume.clone(),
        brain_voxels,
        device: describe(device),
        eval_batch: model.cfg.eval_batch,
        precision: format!("{:?}", cggm_trainer::predict::inference_kind(device)),
        crop_margin_of_cropped_variant: cropped.crop_margin,
        threads: tch::get_num_threads(),
        seconds_per_case_median: upper_median(&default.seconds),
        seconds_per_case_min: min(&default.seconds),
        variants: variant_reports(&variants, &timed, &brain),
        ratio_reference_over_default: (!args.no_reference)
            .then(|| upper_median(&timed[0].seconds) / upper_median(&default.seconds)),
        utilisation: None,
    };
    if args.flops {
        let seconds = report.seconds_per_case_median;
        report.utilisation = Some(infer_utilisation(
            &args, &model.cfg, &study, device, seconds,
        )?);
    }
    super::report::print(&report)
}

/// `--size XxYxZ`.
fn parse_size(size: &str) -> Result<[usize; 3]> {
    let parts: Vec<usize> = size.split('x').map(str::parse).collect::<Result<_, _>>()?;
    match parts[..] {
        [x, y, z] => Ok([x, y, z]),
        _ => anyhow::bail!("--size must be XxYxZ, got {size}"),
    }
}

/// The `--volume` to predict on a `field` grid.
fn bench_volume(volume: &str, field: [usize; 3]) -> Result<Study> {
    Ok(match volume {
        // The phantom's brain spans ~72/84/80 % of its grid: 192x200x172 -> ~138x168x138.
        "brain" => {
            let phantom = [field[0] * 4 / 5, field[1] * 5 / 6, field[2] * 10 / 9];
            synthetic_study(field, phantom, 2)
        }
        "full" => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
            Study {
                id: "bench".into(),
                images: Array4::from_shape_fn((4, field[0], field[1], field[2]), |_| {
                    rng.gen_range(-1.0f32..1.0)
                }),
                label: None,
                header: cggm_trainer::data::synth::synthetic_header(field),
                voxel_volume_ml: 0.001,
            }
        }
        other => anyhow::bail!("--volume {other:?} is not one of: brain, full"),
    })
}

/// The voxels where any modality is non-zero, x-major.
fn brain_mask(study: &Study) -> Vec<bool> {
    let images = study.images.view();
    let (_, nx, ny, nz) = images.dim();
    let mut mask = vec![false; nx * ny * nz];
    for ((_, x, y, z), &v) in images.indexed_iter() {
        mask[(x * ny + y) * nz + z] |= v != 0.0;
    }
    mask
}

/// The options of the default path (whole slices) and of the cropped one (`CGGM_CROP_MARGIN`'s
/// margin, else the default margin), from the environment's others.
fn predict_options() -> (PredictOptions, PredictOptions) {
    let options = PredictOptions::from_env();
    let whole = PredictOptions {
        crop_margin: None,
        ..options
    };
    let cropped = PredictOptions {
        crop_margin: Some(
            options
                .crop_margin
                .unwrap_or(cggm_trainer::predict::DEFAULT_CROP_MARGIN),
        ),
        ..options
    };
    (whole, cropped)
}

/// A timed way to predict the volume, by name; the default path is always last.
type Variant<'a> = (&'a str, Box<dyn Fn() -> VolumePrediction + 'a>);

/// Alternating in one process: the reference path (training modules in eval mode, autocast,
/// whole slices: what `predict` ran before), the folded network cropped to the brain (opt-in),
/// and the default (folded, whole slices, brain slices only).
fn variants<'a>(
    predictor: &'a Predictor<'a>,
    study: &'a Study,
    no_reference: bool,
    whole: PredictOptions,
    cropped: PredictOptions,
) -> Vec<Variant<'a>> {
    let mut variants: Vec<Variant> = Vec::new();
    if !no_reference {
        variants.push((
            "reference",
            Box::new(|| predictor.predict_reference(study, false, |_| {})),
        ));
    }
    variants.push((
        "folded_cropped_to_brain",
        Box::new(move || predictor.predict_with(study, false, cropped, |_| {})),
    ));
    variants.push((
        "default",
        Box::new(move || predictor.predict_with(study, false, whole, |_| {})),
    ));
    variants
}

/// One variant's timed repeats (wall and process CPU seconds) and its last labels.
struct Timed {
    seconds: Vec<f64>,
    cpu: Vec<f64>,
    labels: Array3<u8>,
}

/// Runs every variant `repeats + 1` times in alternation; the first round warms up.
fn time_variants(variants: &[Variant], repeats: usize, device: Device) -> Vec<Timed> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut labels: Vec<Option<Array3<u8>>> = vec![None; variants.len()];
    for round in 0..=repeats {
        for (i, (_, run)) in variants.iter().enumerate() {
            sync(device);
            let (t0, c0) = (Instant::now(), process_cpu_seconds());
            let pred = run();
            sync(device);
            if round > 0 {
                times[i].push(t0.elapsed().as_secs_f64());
                cpu[i].push(process_cpu_seconds() - c0);
            }
            labels[i] = Some(pred.fused);
        }
    }
    times
        .into_iter()
        .zip(cpu)
        .zip(labels)
        .map(|((seconds, cpu), labels)| Timed {
            seconds,
            cpu,
            labels: labels.expect("ran"),
        })
        .collect()
}

/// The middle value after sorting (the upper one of an even count).
fn upper_median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The JSON report of `bench infer`. Serialised through a sorted map (`report::print`).
#[derive(Serialize)]
struct InferReport {
    bench: &'static str,
    preset: String,
    weights: String,
    size: [usize; 3],
    volume: String,
    brain_voxels: usize,
    device: String,
    eval_batch: usize,
    precision: String,
    crop_margin_of_cropped_variant: Option<usize>,
    threads: i32,
    seconds_per_case_median: f64,
    seconds_per_case_min: f64,
    variants: BTreeMap<String, VariantReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_reference_over_default: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utilisation: Option<utilisation::InferUtilisation>,
}

/// One variant's times, and how many brain voxels it labels as the first variant does (the
/// reference path, else the cropped one).
#[derive(Serialize)]
struct VariantReport {
    seconds_median: f64,
    seconds_min: f64,
    cpu_seconds_median: f64,
    labelled_voxels: usize,
    brain_voxels_labelled_as_first_variant: f64,
}

fn variant_reports(
    variants: &[Variant],
    timed: &[Timed],
    brain: &[bool],
) -> BTreeMap<String, VariantReport> {
    let first = &timed[0].labels;
    let brain_voxels = brain.iter().filter(|&&b| b).count();
    variants
        .iter()
        .zip(timed)
        .map(|((name, _), t)| {
            let same = t
                .labels
                .iter()
                .zip(first.iter())
                .zip(brain)
                .filter(|((a, b), &inside)| inside && a == b)
                .count();
            let report = VariantReport {
                seconds_median: upper_median(&t.seconds),
                seconds_min: min(&t.seconds),
                cpu_seconds_median: upper_median(&t.cpu),
                labelled_voxels: t.labels.iter().filter(|&&v| v != 0).count(),
                brain_voxels_labelled_as_first_variant: same as f64 / brain_voxels.max(1) as f64,
            };
            (name.to_string(), report)
        })
        .collect()
}

/// `bench infer --flops`: the default path's FLOPs per case (one slice's forward, counted by the
/// PyTorch reference at the slice's in-plane size, times the slices that hold brain) and its MFU.
fn infer_utilisation(
    args: &InferBenchArgs,
    cfg: &TrainConfig,
    study: &Study,
    device: Device,
    seconds: f64,
) -> Result<utilisation::InferUtilisation> {
    let (_, nx, ny, _) = study.images.dim();
    anyhow::ensure!(
        nx == ny && nx % 16 == 0,
        "--flops counts square slices whose side is a multiple of 16 (the network's stride), \
         got {nx}x{ny}"
    );
    let per_slice = forward_flops_per_slice(args.python.as_ref(), cfg, nx)?;
    let precision = match cggm_trainer::predict::inference_kind(device) {
        tch::Kind::BFloat16 => "bf16",
        tch::Kind::Half => "fp16",
        _ => "fp32",
    };
    utilisation::infer_report(per_slice, brain_slices(study), seconds, device, precision)
}

/// The slices (along z) where any voxel is non-zero: the ones the default path predicts.
fn brain_slices(study: &Study) -> usize {
    let images = study.images.view();
    (0..images.dim().3)
        .filter(|&z| {
            images
                .slice(ndarray::s![.., .., .., z])
                .iter()
                .any(|&v| v != 0.0)
        })
        .count()
}

/// The FLOPs of one `side` x `side` slice's forward pass, counted by the PyTorch reference.
fn forward_flops_per_slice(
    python: Option<&PathBuf>,
    cfg: &TrainConfig,
    side: usize,
) -> Result<f64> {
    let python = reference::python_with_torch(python);
    let script = reference::script_of_the_build();
    let args = [
        "--count-forward",
        "--batch-size",
        "1",
        "--crop",
        &side.to_string(),
    ]
    .map(String::from);
    let counted: serde_json::Value =
        reference::run(&python, &script, &args, &serde_json::to_string(cfg)?).map_err(
            |e| match e {
                ReferenceError::Start(e) => {
                    anyhow::anyhow!("--flops: cannot start {} ({e})", python.display())
                }
                ReferenceError::Failed(_) => {
                    anyhow::anyhow!("--flops: {} failed", script.display())
                }
                ReferenceError::Io(e) => e.into(),
                ReferenceError::Output(e) => e.into(),
            },
        )?;
    counted["forward_flops_per_sample"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("--flops: no count in {counted}"))
}
