//! `cggm bench train`: the training step time of the project's variants (joint, joint with
//! probes, CGGM's magnitude half, CGGM), alternating in one process, each one's peak memory alone
//! in a child process, and with `--against-torch` the PyTorch reference's step beside ours.
use super::inputs::{bench_feature_spec, random_batch, random_feature_batch};
use super::reference::{self, ReferenceError};
use super::report::{self, Memory, Params, PerMethod};
use super::{gpu_memory_bytes, median, peak_rss_bytes, process_cpu_seconds, sync, utilisation};
use anyhow::Result;
use cggm_core::preset::Preset;
use cggm_trainer::amp::AmpDtype;
use cggm_trainer::config::{Method, TrainConfig};
use cggm_trainer::data::features::DatasetSpec;
use cggm_trainer::device::{describe, parse_device};
use cggm_trainer::model::features::FeatureNet;
use cggm_trainer::model::network::MultimodalNetwork;
use cggm_trainer::model::Model;
use cggm_trainer::step::Trainer;
use cggm_trainer::task::TaskKind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Debug, clap::Args)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = Preset::DEFAULT.name())]
    pub preset: String,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub crop: Option<usize>,
    /// Timed steps per method per round.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Rounds; methods alternate within each round so drift hits all of them alike. The
    /// reported time of a method is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The project's variants to time (comma-separated; joint and cggm are required): joint,
    /// joint+probes, cggm-magnitude, cggm. Fewer variants need less memory (`paper`).
    #[arg(long, default_value = "joint,joint+probes,cggm-magnitude,cggm")]
    pub methods: String,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// fp32, bf16 or fp16 (autocast, fp32 master weights; fp16 with loss scaling, CUDA only).
    /// On a CPU, bf16 is fast where it has AVX512-BF16 or AMX; PyTorch (`--against-torch`) then
    /// still runs fp32, the baseline.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Also time a PyTorch eager implementation of the same model and step
    /// (scripts/bench_torch.py) on a batch of the same shapes, alternating rounds, and print the
    /// ratios; fails when its parameter counts differ from ours. Segmentation and feature presets.
    #[arg(long)]
    pub against_torch: bool,
    /// Python with torch for --against-torch (default: $CGGM_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The PyTorch reference (default: scripts/bench_torch.py of the checkout).
    #[arg(long)]
    pub torch_script: Option<PathBuf>,
    /// Skip measuring each method's peak memory alone in a child process.
    #[arg(long)]
    pub no_memory: bool,
    /// How the segmentation encoders run: auto (grouped where measured faster), grouped or
    /// separate (core/src/model_config.rs `EncoderLayout`).
    #[arg(long, default_value = "auto")]
    pub encoders: String,
    /// Internal: build only this method's trainer, take a few steps and print its peak memory
    /// (the parent runs one such child per method; timing keeps every trainer in one process).
    #[arg(long, hide = true)]
    pub memory_of: Option<String>,
}

/// The project's variants, in the order they are timed: (name in --methods, method, probes).
const VARIANTS: [(&str, Method, bool); 4] = [
    ("joint", Method::Joint, false),
    ("joint+probes", Method::Joint, true),
    ("cggm-magnitude", Method::CggmMagnitude, true),
    ("cggm", Method::Cggm, true),
];

/// One timed variant: its name in --methods and its configuration.
struct Variant {
    name: &'static str,
    cfg: TrainConfig,
}

pub fn bench_train(args: TrainBenchArgs) -> Result<()> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let spec = bench_feature_spec(&args.preset);
    let base = base_config(&args, spec.as_ref(), device)?;
    let variants = variants(&args.methods, &base)?;
    if let Some(only) = &args.memory_of {
        let cfg = variants
            .iter()
            .find(|v| v.name == only)
            .map(|v| v.cfg.clone())
            .ok_or_else(|| anyhow::anyhow!("--memory-of {only:?} is not among --methods"))?;
        return memory_alone(cfg, spec.as_ref(), device);
    }
    let torch = args
        .against_torch
        .then(|| TorchReference::new(&args, &base, spec.as_ref(), device))
        .transpose()?;
    let (rounds, params) = time_variants(
        &variants,
        &base,
        spec.as_ref(),
        &args,
        device,
        torch.as_ref(),
    )?;
    let alone = if args.no_memory {
        BTreeMap::new()
    } else {
        variants
            .iter()
            .map(|v| Ok((v.name.to_string(), measure_alone(&args, v.name)?)))
            .collect::<Result<_>>()?
    };
    let report = TrainReport::ours(
        &args,
        &base,
        spec.as_ref(),
        device,
        &variants,
        &rounds,
        params,
        alone,
    );
    report.print_ours(&variants);
    match rounds.torch.last() {
        Some(last) => compare_with_torch(report, &rounds.torch, last, device, &args),
        None => report::print(&report),
    }
}

/// The preset with the bench's sizes and precision (a feature preset takes its task from the
/// bench's shapes).
fn base_config(
    args: &TrainBenchArgs,
    spec: Option<&DatasetSpec>,
    device: Device,
) -> Result<TrainConfig> {
    let mut base = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
    if let Some(spec) = spec {
        base.task = spec.task;
    }
    if let Some(b) = args.batch_size {
        base.sampler.batch_size = b;
    }
    if let Some(c) = args.crop {
        base.sampler.crop = c;
    }
    base.model.encoders = super::encoder_layout(&args.encoders)?;
    set_precision(&mut base, &args.precision, device)?;
    Ok(base)
}

/// The variants `--methods` names (joint and cggm required), in `VARIANTS`' order.
fn variants(methods: &str, base: &TrainConfig) -> Result<Vec<Variant>> {
    let wanted: Vec<&str> = methods.split(',').map(str::trim).collect();
    for w in &wanted {
        anyhow::ensure!(
            VARIANTS.iter().any(|(n, _, _)| n == w),
            "--methods: unknown {w:?}: use a comma-separated list of joint, joint+probes, \
             cggm-magnitude, cggm"
        );
    }
    anyhow::ensure!(
        wanted.contains(&"joint") && wanted.contains(&"cggm"),
        "--methods must include joint and cggm (the ratios are taken against them)"
    );
    Ok(VARIANTS
        .iter()
        .filter(|(n, _, _)| wanted.contains(n))
        .map(|&(name, method, probes)| Variant {
            name,
            cfg: TrainConfig {
                method,
                probes,
                ..base.clone()
            },
        })
        .collect())
}

/// Where `name` is among the variants (joint and cggm always are).
fn index(variants: &[Variant], name: &str) -> Option<usize> {
    variants.iter().position(|v| v.name == name)
}

/// Builds every variant's trainer on one random batch of the task's shapes and times them in
/// alternating rounds; also the parameter counts of CGGM's trainer.
fn time_variants(
    variants: &[Variant],
    base: &TrainConfig,
    spec: Option<&DatasetSpec>,
    args: &TrainBenchArgs,
    device: Device,
    torch: Option<&TorchReference>,
) -> Result<(Rounds, Params)> {
    let cggm = index(variants, "cggm").expect("checked");
    match spec {
        None => {
            let mut trainers: Vec<Trainer> = variants
                .iter()
                .map(|v| Trainer::segmentation(v.cfg.clone(), device, 1000))
                .collect();
            let (images, labels) = random_batch(base.sampler.batch_size, base.sampler.crop, device);
            let rounds = time_rounds(&mut trainers, &images, &labels, args, device, torch);
            Ok((rounds?, param_counts(&trainers[cggm].model.vs)))
        }
        Some(spec) => {
            let mut trainers: Vec<Trainer<FeatureNet>> = variants
                .iter()
                .map(|v| {
                    Model::features(v.cfg.clone(), spec, device).map(|m| Trainer::new(m, 1000))
                })
                .collect::<Result<_>>()?;
            let (input, labels) = random_feature_batch(spec, base.sampler.batch_size, device);
            let rounds = time_rounds(&mut trainers, &input, &labels, args, device, torch);
            Ok((rounds?, param_counts(&trainers[cggm].model.vs)))
        }
    }
}

/// The JSON report of `bench train`. Serialised through a sorted map (`report::print`).
#[derive(Serialize)]
struct TrainReport {
    bench: &'static str,
    preset: String,
    encoders: String,
    task: TaskKind,
    batch_size: usize,
    crop: Option<usize>,
    feature_shapes: Option<Vec<String>>,
    device: String,
    threads: i32,
    precision: String,
    rounds: usize,
    steps_per_round: usize,
    /// Median seconds per step of each variant, by name.
    seconds_per_step: BTreeMap<String, f64>,
    cpu_seconds_per_step: BTreeMap<String, f64>,
    cpu_ratio_cggm_over_joint: f64,
    ratio_cggm_over_joint: f64,
    ratio_cggm_magnitude_over_joint: Option<f64>,
    ratio_joint_probes_over_joint: Option<f64>,
    params: Params,
    peak_rss_bytes: Option<u64>,
    gpu_memory_bytes: Option<u64>,
    /// Each variant's peak memory in a process of its own (empty with --no-memory).
    alone: BTreeMap<String, Memory>,
    seconds_per_step_rounds: BTreeMap<String, Vec<f64>>,
    // With --against-torch only.
    #[serde(skip_serializing_if = "Option::is_none")]
    torch: Option<TorchSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    utilisation: Option<utilisation::TrainUtilisation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_joint_over_torch: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_cggm_over_torch: Option<f64>,
}

impl TrainReport {
    /// Our side: the timings of every variant, their parameters and memory.
    #[allow(clippy::too_many_arguments)]
    fn ours(
        args: &TrainBenchArgs,
        base: &TrainConfig,
        spec: Option<&DatasetSpec>,
        device: Device,
        variants: &[Variant],
        rounds: &Rounds,
        params: Params,
        alone: BTreeMap<String, Memory>,
    ) -> Self {
        let per_step: Vec<f64> = rounds.seconds.iter().map(|s| median(s)).collect();
        let named = |v: &[f64]| {
            variants
                .iter()
                .zip(v)
                .map(|(v, s)| (v.name.to_string(), *s))
                .collect()
        };
        let (joint, cggm) = (
            index(variants, "joint").expect("checked"),
            index(variants, "cggm").expect("checked"),
        );
        let ratio = |name: &str| index(variants, name).map(|i| per_step[i] / per_step[joint]);
        Self {
            bench: "train-step",
            preset: args.preset.clone(),
            encoders: args.encoders.clone(),
            task: base.task,
            batch_size: base.sampler.batch_size,
            crop: spec.is_none().then_some(base.sampler.crop),
            feature_shapes: spec.map(feature_shapes),
            device: describe(device),
            threads: tch::get_num_threads(),
            precision: args.precision.clone(),
            rounds: args.rounds,
            steps_per_round: args.steps,
            seconds_per_step: named(&per_step),
            cpu_seconds_per_step: named(&rounds.cpu),
            cpu_ratio_cggm_over_joint: rounds.cpu[cggm] / rounds.cpu[joint],
            ratio_cggm_over_joint: per_step[cggm] / per_step[joint],
            ratio_cggm_magnitude_over_joint: ratio("cggm-magnitude"),
            ratio_joint_probes_over_joint: ratio("joint+probes"),
            params,
            peak_rss_bytes: peak_rss_bytes(),
            gpu_memory_bytes: device.is_cuda().then(gpu_memory_bytes).flatten(),
            alone,
            seconds_per_step_rounds: variants
                .iter()
                .zip(&rounds.seconds)
                .map(|(v, s)| (v.name.to_string(), s.clone()))
                .collect(),
            torch: None,
            utilisation: None,
            ratio_joint_over_torch: None,
            ratio_cggm_over_torch: None,
        }
    }

    /// Median seconds per step of joint and cggm.
    fn ours_per_method(&self) -> PerMethod {
        PerMethod {
            joint: self.seconds_per_step["joint"],
            cggm: self.seconds_per_step["cggm"],
        }
    }

    /// Our timings and memory on stderr.
    fn print_ours(&self, variants: &[Variant]) {
        eprintln!(
            "ours ({} rounds x {} steps, median s/step): {}",
            self.rounds,
            self.steps_per_round,
            variants
                .iter()
                .map(|v| format!("{} {:.4}", v.name, self.seconds_per_step[v.name]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let alone = (!self.alone.is_empty()).then(|| {
            format!(
                "; peak RSS alone: {}",
                self.alone
                    .iter()
                    .map(|(n, m)| format!(
                        "{n} {:.0} MiB",
                        m.peak_rss_bytes.unwrap_or(0) as f64 / 1048576.0
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        eprintln!(
            "ours: cggm/joint {:.3}; parameters: model {}, classifiers {}; peak RSS {:.0} MiB (all \
             {} trainers in one process){}",
            self.ratio_cggm_over_joint,
            self.params.model,
            self.params.classifiers,
            peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0,
            variants.len(),
            alone.unwrap_or_default()
        );
    }
}

/// `name:TxD` of each modality of a feature task.
fn feature_shapes(spec: &DatasetSpec) -> Vec<String> {
    spec.modalities
        .iter()
        .map(|m| format!("{}:{}x{}", m.name, m.steps(), m.dim))
        .collect()
}

/// The PyTorch reference's side of the report (its values as it printed them).
#[derive(Serialize)]
struct TorchSummary {
    version: serde_json::Value,
    threads: serde_json::Value,
    seconds_per_step: PerMethod,
    seconds_per_step_rounds: Vec<serde_json::Value>,
    ratio_cggm_over_joint: f64,
    params: Params,
    peak_rss_bytes: serde_json::Value,
    peak_gpu_bytes: serde_json::Value,
    peak_gpu_reserved_bytes: serde_json::Value,
}

type TorchRound = serde_json::Map<String, serde_json::Value>;

/// Adds the PyTorch reference's rounds (`last` is the last of them) to the report, prints both
/// sides and the report, and fails when the reference's parameter counts differ from ours.
fn compare_with_torch(
    mut report: TrainReport,
    torch_rounds: &[TorchRound],
    last: &TorchRound,
    device: Device,
    args: &TrainBenchArgs,
) -> Result<()> {
    let median_of = |method: &str| {
        median(
            &torch_rounds
                .iter()
                .filter_map(|r| r["seconds_per_step"][method].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    let theirs = PerMethod {
        joint: median_of("joint"),
        cggm: median_of("cggm"),
    };
    let torch_params = Params {
        model: last["params"]["model"].as_i64().unwrap_or(-1),
        classifiers: last["params"]["classifiers"].as_i64().unwrap_or(-1),
    };
    report.torch = Some(TorchSummary {
        version: last["torch"].clone(),
        threads: last["threads"].clone(),
        seconds_per_step: theirs,
        seconds_per_step_rounds: torch_rounds
            .iter()
            .map(|r| r["seconds_per_step"].clone())
            .collect(),
        ratio_cggm_over_joint: theirs.cggm / theirs.joint,
        params: torch_params,
        peak_rss_bytes: last["peak_rss_bytes"].clone(),
        peak_gpu_bytes: last["peak_gpu_bytes"].clone(),
        peak_gpu_reserved_bytes: last["peak_gpu_reserved_bytes"].clone(),
    });
    let ours = report.ours_per_method();
    let precisions = (
        args.precision.as_str(),
        torch_precision(device, &args.precision),
    );
    report.utilisation = utilisation::train_report(last, ours, theirs, device, precisions);
    report.ratio_joint_over_torch = Some(ours.joint / theirs.joint);
    report.ratio_cggm_over_torch = Some(ours.cggm / theirs.cggm);
    print_against_torch(ours, theirs, torch_params, last);
    report::print(&report)?;
    anyhow::ensure!(
        torch_params == report.params,
        "the PyTorch reference has {} model and {} classifier parameters, ours {} and {}: \
         scripts/bench_torch.py no longer copies the project's model; update it",
        torch_params.model,
        torch_params.classifiers,
        report.params.model,
        report.params.classifiers
    );
    Ok(())
}

/// Ours against the reference, per method, on stderr.
fn print_against_torch(
    ours: PerMethod,
    theirs: PerMethod,
    torch_params: Params,
    last: &TorchRound,
) {
    eprintln!(
        "{:<8} {:>12} {:>12} {:>8}",
        "method", "ours s/step", "torch s/step", "ratio"
    );
    for (name, ours, theirs) in [
        ("joint", ours.joint, theirs.joint),
        ("cggm", ours.cggm, theirs.cggm),
    ] {
        eprintln!(
            "{name:<8} {ours:>12.4} {theirs:>12.4} {:>8.3}",
            ours / theirs
        );
    }
    eprintln!(
        "cggm/joint: ours {:.3}, torch {:.3}; torch parameters: model {}, classifiers {}; \
         torch peak RSS {:.0} MiB",
        ours.cggm / ours.joint,
        theirs.cggm / theirs.joint,
        torch_params.model,
        torch_params.classifiers,
        last["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    );
}

/// The precision the PyTorch reference runs in: ours on CUDA; fp32 on a CPU, the baseline that
/// CPU bf16 training is measured against.
fn torch_precision(device: Device, precision: &str) -> &str {
    if device.is_cuda() {
        precision
    } else {
        "fp32"
    }
}

/// Applies `--precision` to a configuration; on a CPU, bf16 also turns on CPU bf16 training
/// (`amp::CPU_TRAINING_PRECISION`) for this process.
fn set_precision(cfg: &mut TrainConfig, precision: &str, device: tch::Device) -> Result<()> {
    if precision == "fp32" {
        cfg.mixed_precision = false;
        return Ok(());
    }
    cfg.mixed_precision = true;
    cfg.amp_dtype = precision
        .parse::<AmpDtype>()
        .map_err(|e| anyhow::anyhow!("--precision: {e} (or fp32)"))?;
    if !device.is_cuda() {
        anyhow::ensure!(
            cfg.amp_dtype == AmpDtype::Bf16,
            "--precision {precision}: a CPU trains in fp32 or bf16 (fp16 autocast is CUDA-only)"
        );
        std::env::set_var(cggm_trainer::amp::CPU_TRAINING_PRECISION, "bf16");
    }
    Ok(())
}

/// Trainable parameters of a trainer.
fn param_counts(vs: &tch::nn::VarStore) -> Params {
    let (mut model, mut classifiers) = (0, 0);
    for (name, t) in vs.variables() {
        if !t.requires_grad() {
            continue;
        }
        if name.starts_with("classifiers.") {
            classifiers += t.numel() as i64;
        } else {
            model += t.numel() as i64;
        }
    }
    Params { model, classifiers }
}

/// Per-round seconds per step of each trainer, the process CPU seconds per step (summed over
/// rounds), and the PyTorch reference's rounds; trainers and the reference alternate.
struct Rounds {
    seconds: Vec<Vec<f64>>,
    cpu: Vec<f64>,
    torch: Vec<TorchRound>,
}

fn time_rounds<N: MultimodalNetwork>(
    trainers: &mut [Trainer<N>],
    input: &N::Input,
    labels: &Tensor,
    args: &TrainBenchArgs,
    device: Device,
    torch: Option<&TorchReference>,
) -> Result<Rounds> {
    // Warm-up: allocator, kernels, autograd graph caches.
    for t in trainers.iter_mut() {
        for _ in 0..2 {
            t.step(input, labels)?;
        }
    }
    let mut rounds = Rounds {
        seconds: vec![Vec::new(); trainers.len()],
        cpu: vec![0.0; trainers.len()],
        torch: Vec::new(),
    };
    for _ in 0..args.rounds {
        for (i, t) in trainers.iter_mut().enumerate() {
            sync(device);
            let (t0, c0) = (Instant::now(), process_cpu_seconds());
            for _ in 0..args.steps {
                t.step(input, labels)?;
            }
            sync(device);
            rounds.seconds[i].push(t0.elapsed().as_secs_f64() / args.steps as f64);
            rounds.cpu[i] += (process_cpu_seconds() - c0) / (args.rounds * args.steps) as f64;
        }
        if let Some(torch) = torch {
            rounds.torch.push(torch.run()?);
        }
    }
    Ok(rounds)
}

/// One method's trainer alone (`--memory-of`): two warm-up steps and one more, then its peak
/// memory as one JSON line.
fn memory_alone(cfg: TrainConfig, spec: Option<&DatasetSpec>, device: Device) -> Result<()> {
    let b = cfg.sampler.batch_size;
    match spec {
        None => {
            let mut t = Trainer::segmentation(cfg.clone(), device, 1000);
            let (images, labels) = random_batch(b, cfg.sampler.crop, device);
            for _ in 0..3 {
                t.step(&images, &labels)?;
            }
        }
        Some(spec) => {
            let mut t = Trainer::new(Model::features(cfg, spec, device)?, 1000);
            let (input, labels) = random_feature_batch(spec, b, device);
            for _ in 0..3 {
                t.step(&input, &labels)?;
            }
        }
    }
    sync(device);
    let memory = Memory {
        peak_rss_bytes: peak_rss_bytes(),
        gpu_memory_bytes: device.is_cuda().then(gpu_memory_bytes).flatten(),
    };
    // One line, keys sorted as `json!` wrote them.
    println!("{}", serde_json::to_value(memory)?);
    Ok(())
}

/// Runs this binary with `--memory-of method` and the same sizes: the method's peak memory in a
/// process of its own (the timing process holds every method's trainer at once).
fn measure_alone(args: &TrainBenchArgs, method: &str) -> Result<Memory> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "train", "--preset", &args.preset])
        .args(["--methods", &args.methods, "--memory-of", method])
        .args(["--device", &args.device, "--precision", &args.precision])
        .args(["--encoders", &args.encoders]);
    if let Some(b) = args.batch_size {
        cmd.args(["--batch-size", &b.to_string()]);
    }
    if let Some(c) = args.crop {
        cmd.args(["--crop", &c.to_string()]);
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "measuring {method}'s memory alone failed (its error is above)"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(
        text.lines().last().unwrap_or_default(),
    )?)
}

/// The PyTorch eager reference run as a child process, one round at a time.
struct TorchReference {
    python: PathBuf,
    script: PathBuf,
    config: String,
    args: Vec<String>,
}

impl TorchReference {
    fn new(
        args: &TrainBenchArgs,
        cfg: &TrainConfig,
        spec: Option<&DatasetSpec>,
        device: Device,
    ) -> Result<Self> {
        Ok(Self {
            python: reference::python_with_torch(args.python.as_ref()),
            script: torch_script(args.torch_script.as_ref())?,
            config: serde_json::to_string(cfg)?,
            args: reference_args(args, cfg, spec, device),
        })
    }

    /// One round: seconds per step per method, peak memory.
    fn run(&self) -> Result<TorchRound> {
        reference::run(&self.python, &self.script, &self.args, &self.config).map_err(|e| match e {
            ReferenceError::Start(e) => anyhow::anyhow!(
                "cannot start {} for --against-torch ({e}): pass --python with a Python that has \
                 torch, or set CGGM_PYTHON",
                self.python.display()
            ),
            ReferenceError::Failed(_) => anyhow::anyhow!(
                "the PyTorch reference {} failed (its error is above)",
                self.script.display()
            ),
            ReferenceError::Io(e) => e.into(),
            ReferenceError::Output(e) => e.into(),
        })
    }
}

/// `--torch-script`, else scripts/bench_torch.py of the working directory or of the build.
fn torch_script(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    [
        PathBuf::from("scripts/bench_torch.py"),
        reference::script_of_the_build(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        anyhow::anyhow!(
            "--against-torch needs the PyTorch reference scripts/bench_torch.py: run from the \
             checkout or pass --torch-script PATH"
        )
    })
}

/// The reference's command line: the same sizes, steps, device, threads and precision (a
/// feature task adds the modalities' shapes, the task and the output width).
fn reference_args(
    args: &TrainBenchArgs,
    cfg: &TrainConfig,
    spec: Option<&DatasetSpec>,
    device: Device,
) -> Vec<String> {
    let precision = torch_precision(device, &args.precision);
    let device = match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    };
    let features = spec.into_iter().flat_map(|spec| {
        [
            "--features".into(),
            feature_shapes(spec).join(","),
            "--task".into(),
            spec.task.to_string(),
            "--outputs".into(),
            spec.outputs().to_string(),
        ]
    });
    features
        .chain([
            "--methods".into(),
            "joint,cggm".into(),
            "--batch-size".into(),
            cfg.sampler.batch_size.to_string(),
            "--crop".into(),
            cfg.sampler.crop.to_string(),
            "--steps".into(),
            args.steps.to_string(),
            "--device".into(),
            device,
            "--threads".into(),
            tch::get_num_threads().to_string(),
            "--precision".into(),
            precision.into(),
        ])
        .collect()
}
