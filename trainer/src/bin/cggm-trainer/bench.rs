//! `cggm bench`: measured numbers for the README. Timings are ratios against a baseline run in the
//! same process, interleaved, because the machines are shared and noisy.

use crate::loader_bench::{bench_loader, LoaderBenchArgs};
use anyhow::Result;
use cggm_trainer::amp::AmpDtype;
use cggm_trainer::config::{Method, TrainConfig};
use cggm_trainer::data::features::{DatasetSpec, FeatureModality};
use cggm_trainer::data::Study;
use cggm_trainer::device::{describe, parse_device};
use cggm_trainer::model::features::{FeatureInput, FeatureNet};
use cggm_trainer::model::network::MultimodalNetwork;
use cggm_trainer::model::Model;
use cggm_trainer::step::Trainer;
use cggm_trainer::task::TaskKind;
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Training-slice loader throughput and peak memory.
    Loader(LoaderBenchArgs),
    /// Training step time of joint (with and without per-modality probes) and CGGM.
    Train(TrainBenchArgs),
    /// Inference time of one whole volume.
    Infer(InferBenchArgs),
    /// First-step loss on the CPU and on --device from the same weights and batch (a CUDA check).
    Parity(ParityArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = "cpu-small")]
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
    /// Internal: build only this method's trainer, take a few steps and print its peak memory
    /// (the parent runs one such child per method; timing keeps every trainer in one process).
    #[arg(long, hide = true)]
    pub memory_of: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ParityArgs {
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value = "cggm")]
    pub method: String,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub crop: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Largest accepted relative difference of the deterministic (eval-mode) loss.
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
}

#[derive(Debug, clap::Args)]
pub struct InferBenchArgs {
    #[arg(long, default_value = "cpu-small")]
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
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Loader(args) => bench_loader(args),
        BenchCommand::Train(args) => bench_train(args),
        BenchCommand::Infer(args) => bench_infer(args),
        BenchCommand::Parity(args) => bench_parity(args),
    }
}

/// CPU seconds (user + system) this process has used: less sensitive than wall time to other
/// processes on a shared machine.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// A random batch with a plausible label map (a disc of each tumour class).
fn random_batch(b: usize, crop: usize, device: Device) -> (Tensor, Tensor) {
    let images = Tensor::randn(
        [b as i64, 4, crop as i64, crop as i64],
        (Kind::Float, device),
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut labels = vec![0i64; b * crop * crop];
    for s in 0..b {
        let (cx, cy) = (
            rng.gen_range(crop / 4..3 * crop / 4) as f64,
            rng.gen_range(crop / 4..3 * crop / 4) as f64,
        );
        for x in 0..crop {
            for y in 0..crop {
                let r = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
                labels[(s * crop + x) * crop + y] = if r < 3.0 {
                    1
                } else if r < 6.0 {
                    3
                } else if r < 12.0 {
                    2
                } else {
                    0
                };
            }
        }
    }
    let labels = Tensor::from_slice(&labels)
        .view([b as i64, crop as i64, crop as i64])
        .to_device(device);
    (images, labels)
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

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GPU memory this process holds (the caching allocator's high-water mark), from nvidia-smi.
fn gpu_memory_bytes() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut f = l.split(',').map(str::trim);
        (f.next()? == pid).then_some(())?;
        f.next()?.parse::<u64>().ok().map(|mib| mib << 20)
    })
}

/// The shapes `bench train` feeds a feature preset: the synthetic set of `cggm synth` for
/// `cpu-features` (text 16x4, audio 12x8, vision 8x6, 4 classes: data/features/synth.rs), and
/// the word-aligned CMU-MOSI / IEMOCAP features of MulT, which the CGGM authors train on
/// (text GloVe 300, audio COVAREP 5 / 74, vision Facet 20 / 35; 50 / 20 steps; MOSI a
/// regression, IEMOCAP 4 emotions); Food-101: one BERT text token (768) and one ViT image token
/// (768), 101 classes.
fn bench_feature_spec(preset: &str) -> Option<DatasetSpec> {
    let (task, classes, mods): (TaskKind, usize, &[(&str, usize, usize)]) = match preset {
        "cpu-features" => (
            TaskKind::Classification,
            4,
            &[("text", 16, 4), ("audio", 12, 8), ("vision", 8, 6)],
        ),
        "paper-mosi" => (
            TaskKind::Regression,
            0,
            &[("text", 300, 50), ("audio", 5, 50), ("vision", 20, 50)],
        ),
        "paper-iemocap" => (
            TaskKind::Classification,
            4,
            &[("text", 300, 20), ("audio", 74, 20), ("vision", 35, 20)],
        ),
        "paper-food101" => (
            TaskKind::Classification,
            101,
            &[("text", 768, 1), ("image", 768, 1)],
        ),
        _ => return None,
    };
    Some(DatasetSpec {
        format: "cggm-features".into(),
        task,
        modalities: mods
            .iter()
            .map(|(name, dim, steps)| FeatureModality {
                name: name.to_string(),
                dim: *dim,
                seq_len: Some(*steps),
            })
            .collect(),
        classes: (0..classes).map(|c| format!("c{c}")).collect(),
        label_range: (task == TaskKind::Regression).then_some([-3.0, 3.0]),
        description: "bench".into(),
    })
}

/// A random feature batch of the spec's shapes: [B, T_i, D_i] per modality, no padding; labels
/// uniform classes (classification) or N(0, 1.5) clipped to [-3, 3] (regression).
fn random_feature_batch(spec: &DatasetSpec, b: usize, device: Device) -> (FeatureInput, Tensor) {
    tch::manual_seed(1);
    let features = spec
        .modalities
        .iter()
        .map(|m| {
            Tensor::randn(
                [b as i64, m.steps() as i64, m.dim as i64],
                (Kind::Float, device),
            )
        })
        .collect::<Vec<_>>();
    let padding = features.iter().map(|_| None).collect();
    let labels = match spec.task {
        TaskKind::Classification => {
            Tensor::randint(spec.outputs(), [b as i64], (Kind::Int64, device))
        }
        _ => (Tensor::randn([b as i64], (Kind::Float, device)) * 1.5).clamp(-3.0, 3.0),
    };
    (FeatureInput { features, padding }, labels)
}

/// Trainable parameters of a trainer: (model, classifiers).
fn param_counts(vs: &tch::nn::VarStore) -> (i64, i64) {
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
    (model, classifiers)
}

/// Per-round seconds per step of each trainer, the process CPU seconds per step (summed over
/// rounds), and the PyTorch reference's rounds; trainers and the reference alternate.
struct Rounds {
    seconds: Vec<Vec<f64>>,
    cpu: Vec<f64>,
    torch: Vec<serde_json::Map<String, serde_json::Value>>,
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

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn bench_train(args: TrainBenchArgs) -> Result<()> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let mut base = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
    let spec = bench_feature_spec(&args.preset);
    if let Some(spec) = &spec {
        base.task = spec.task;
    }
    if let Some(b) = args.batch_size {
        base.sampler.batch_size = b;
    }
    if let Some(c) = args.crop {
        base.sampler.crop = c;
    }
    set_precision(&mut base, &args.precision, device)?;
    let all: [(&str, Method, bool); 4] = [
        ("joint", Method::Joint, false),
        ("joint+probes", Method::Joint, true),
        ("cggm-magnitude", Method::CggmMagnitude, true),
        ("cggm", Method::Cggm, true),
    ];
    let wanted: Vec<&str> = args.methods.split(',').map(str::trim).collect();
    for w in &wanted {
        anyhow::ensure!(
            all.iter().any(|(n, _, _)| n == w),
            "--methods: unknown {w:?}: use a comma-separated list of joint, joint+probes, \
             cggm-magnitude, cggm"
        );
    }
    anyhow::ensure!(
        wanted.contains(&"joint") && wanted.contains(&"cggm"),
        "--methods must include joint and cggm (the ratios are taken against them)"
    );
    let variants: Vec<(&str, TrainConfig)> = all
        .iter()
        .filter(|(n, _, _)| wanted.contains(n))
        .map(|(name, method, probes)| {
            (
                *name,
                TrainConfig {
                    method: *method,
                    probes: *probes,
                    ..base.clone()
                },
            )
        })
        .collect();
    if let Some(only) = &args.memory_of {
        let cfg = variants
            .iter()
            .find(|(n, _)| n == only)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| anyhow::anyhow!("--memory-of {only:?} is not among --methods"))?;
        return memory_alone(cfg, spec.as_ref(), device);
    }
    let index = |name: &str| variants.iter().position(|(n, _)| *n == name);
    let (joint, cggm) = (
        index("joint").expect("checked"),
        index("cggm").expect("checked"),
    );
    let torch = args
        .against_torch
        .then(|| TorchReference::new(&args, &base, spec.as_ref(), device))
        .transpose()?;
    let (rounds, params) = match &spec {
        None => {
            let mut trainers: Vec<Trainer> = variants
                .iter()
                .map(|(_, c)| Trainer::segmentation(c.clone(), device, 1000))
                .collect();
            let (images, labels) = random_batch(base.sampler.batch_size, base.sampler.crop, device);
            let rounds = time_rounds(
                &mut trainers,
                &images,
                &labels,
                &args,
                device,
                torch.as_ref(),
            );
            (rounds?, param_counts(&trainers[cggm].model.vs))
        }
        Some(spec) => {
            let mut trainers: Vec<Trainer<FeatureNet>> = variants
                .iter()
                .map(|(_, c)| {
                    Model::features(c.clone(), spec, device).map(|m| Trainer::new(m, 1000))
                })
                .collect::<Result<_>>()?;
            let (input, labels) = random_feature_batch(spec, base.sampler.batch_size, device);
            let rounds = time_rounds(
                &mut trainers,
                &input,
                &labels,
                &args,
                device,
                torch.as_ref(),
            );
            (rounds?, param_counts(&trainers[cggm].model.vs))
        }
    };
    let alone = if args.no_memory {
        serde_json::Map::new()
    } else {
        variants
            .iter()
            .map(|(name, _)| Ok((name.to_string(), measure_alone(&args, name)?)))
            .collect::<Result<_>>()?
    };
    let per_step: Vec<f64> = rounds.seconds.iter().map(|s| median(s)).collect();
    let named = |v: &[f64]| {
        variants
            .iter()
            .zip(v)
            .map(|((name, _), s)| (name.to_string(), json!(s)))
            .collect::<serde_json::Map<_, _>>()
    };
    let ratio = |name: &str| index(name).map(|i| per_step[i] / per_step[joint]);
    let mut out = json!({
        "bench": "train-step",
        "preset": args.preset,
        "task": base.task,
        "batch_size": base.sampler.batch_size,
        "crop": spec.is_none().then_some(base.sampler.crop),
        "feature_shapes": spec.as_ref().map(|s| s.modalities.iter()
            .map(|m| format!("{}:{}x{}", m.name, m.steps(), m.dim)).collect::<Vec<_>>()),
        "device": describe(device),
        "threads": tch::get_num_threads(),
        "precision": args.precision,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "seconds_per_step": named(&per_step),
        "cpu_seconds_per_step": named(&rounds.cpu),
        "cpu_ratio_cggm_over_joint": rounds.cpu[cggm] / rounds.cpu[joint],
        "ratio_cggm_over_joint": per_step[cggm] / per_step[joint],
        "ratio_cggm_magnitude_over_joint": ratio("cggm-magnitude"),
        "ratio_joint_probes_over_joint": ratio("joint+probes"),
        "params": {"model": params.0, "classifiers": params.1},
        "peak_rss_bytes": peak_rss_bytes(),
        "gpu_memory_bytes": device.is_cuda().then(gpu_memory_bytes).flatten(),
        "alone": alone,
    });
    out["seconds_per_step_rounds"] = variants
        .iter()
        .zip(&rounds.seconds)
        .map(|((name, _), s)| (name.to_string(), json!(s)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    eprintln!(
        "ours ({} rounds x {} steps, median s/step): {}",
        args.rounds,
        args.steps,
        variants
            .iter()
            .zip(&per_step)
            .map(|((n, _), s)| format!("{n} {s:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "ours: cggm/joint {:.3}; parameters: model {}, classifiers {}; peak RSS {:.0} MiB (all \
         {} trainers in one process){}",
        per_step[cggm] / per_step[joint],
        params.0,
        params.1,
        peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0,
        variants.len(),
        out["alone"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| format!(
                "; peak RSS alone: {}",
                m.iter()
                    .map(|(n, v)| format!(
                        "{n} {:.0} MiB",
                        v["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .unwrap_or_default()
    );
    if let Some(last) = rounds.torch.last() {
        let theirs = |method: &str| {
            median(
                &rounds
                    .torch
                    .iter()
                    .filter_map(|r| r["seconds_per_step"][method].as_f64())
                    .collect::<Vec<_>>(),
            )
        };
        let (tj, tc) = (theirs("joint"), theirs("cggm"));
        let torch_params = (
            last["params"]["model"].as_i64().unwrap_or(-1),
            last["params"]["classifiers"].as_i64().unwrap_or(-1),
        );
        out["torch"] = json!({
            "version": last["torch"],
            "threads": last["threads"],
            "seconds_per_step": {"joint": tj, "cggm": tc},
            "seconds_per_step_rounds": rounds.torch.iter()
                .map(|r| r["seconds_per_step"].clone()).collect::<Vec<_>>(),
            "ratio_cggm_over_joint": tc / tj,
            "params": {"model": torch_params.0, "classifiers": torch_params.1},
            "peak_rss_bytes": last["peak_rss_bytes"],
            "peak_gpu_bytes": last["peak_gpu_bytes"],
            "peak_gpu_reserved_bytes": last["peak_gpu_reserved_bytes"],
        });
        if let Some(u) = crate::utilisation::train_report(
            last,
            (per_step[joint], per_step[cggm]),
            (tj, tc),
            device,
            (&args.precision, torch_precision(device, &args.precision)),
        ) {
            out["utilisation"] = u;
        }
        out["ratio_joint_over_torch"] = json!(per_step[joint] / tj);
        out["ratio_cggm_over_torch"] = json!(per_step[cggm] / tc);
        eprintln!(
            "{:<8} {:>12} {:>12} {:>8}",
            "method", "ours s/step", "torch s/step", "ratio"
        );
        for (name, ours, theirs) in [("joint", per_step[joint], tj), ("cggm", per_step[cggm], tc)] {
            eprintln!(
                "{name:<8} {ours:>12.4} {theirs:>12.4} {:>8.3}",
                ours / theirs
            );
        }
        eprintln!(
            "cggm/joint: ours {:.3}, torch {:.3}; torch parameters: model {}, classifiers {}; \
             torch peak RSS {:.0} MiB",
            per_step[cggm] / per_step[joint],
            tc / tj,
            torch_params.0,
            torch_params.1,
            last["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        println!("{}", serde_json::to_string_pretty(&out)?);
        anyhow::ensure!(
            torch_params == params,
            "the PyTorch reference has {} model and {} classifier parameters, ours {} and {}: \
             scripts/bench_torch.py no longer copies the project's model; update it",
            torch_params.0,
            torch_params.1,
            params.0,
            params.1
        );
        return Ok(());
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
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
    println!(
        "{}",
        json!({
            "peak_rss_bytes": peak_rss_bytes(),
            "gpu_memory_bytes": device.is_cuda().then(gpu_memory_bytes).flatten(),
        })
    );
    Ok(())
}

/// Runs this binary with `--memory-of method` and the same sizes: the method's peak memory in a
/// process of its own (the timing process holds every method's trainer at once).
fn measure_alone(args: &TrainBenchArgs, method: &str) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "train", "--preset", &args.preset])
        .args(["--methods", &args.methods, "--memory-of", method])
        .args(["--device", &args.device, "--precision", &args.precision]);
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
        let python = python_with_torch(args.python.as_ref());
        let script = match &args.torch_script {
            Some(p) => p.clone(),
            None => [
                PathBuf::from("scripts/bench_torch.py"),
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_torch.py"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--against-torch needs the PyTorch reference scripts/bench_torch.py: run from \
                     the checkout or pass --torch-script PATH"
                )
            })?,
        };
        let precision = torch_precision(device, &args.precision);
        let device = match device {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        };
        let mut extra = Vec::new();
        if let Some(spec) = spec {
            // Feature task: the modalities' shapes, the task and the output width.
            extra = vec![
                "--features".into(),
                spec.modalities
                    .iter()
                    .map(|m| format!("{}:{}x{}", m.name, m.steps(), m.dim))
                    .collect::<Vec<_>>()
                    .join(","),
                "--task".into(),
                spec.task.to_string(),
                "--outputs".into(),
                spec.outputs().to_string(),
            ];
        }
        Ok(Self {
            python,
            script,
            config: serde_json::to_string(cfg)?,
            args: extra
                .into_iter()
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
                .collect(),
        })
    }

    /// One round: seconds per step per method, peak memory.
    fn run(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        use std::io::Write;
        let mut child = std::process::Command::new(&self.python)
            .arg(&self.script)
            .args(&self.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} for --against-torch ({e}): pass --python with a Python \
                     that has torch, or set CGGM_PYTHON",
                    self.python.display()
                )
            })?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(self.config.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "the PyTorch reference {} failed (its error is above)",
            self.script.display()
        );
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        Ok(serde_json::from_str(&last)?)
    }
}

fn bench_infer(args: InferBenchArgs) -> Result<()> {
    use cggm_trainer::predict::{synthetic_study, PredictOptions};
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let size: Vec<usize> = args
        .size
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(size.len() == 3, "--size must be XxYxZ, got {}", args.size);
    let field = [size[0], size[1], size[2]];
    // A model without optimiser: inference allocates no training state.
    let model = match &args.run {
        Some(run) => Model::open_segmentation(run, Some(&args.device))?,
        None => {
            let cfg = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
            Model::segmentation(cfg, device)
        }
    };
    let study = match args.volume.as_str() {
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
    };
    let brain: Vec<bool> = {
        let images = study.images.view();
        let (_, nx, ny, nz) = images.dim();
        let mut mask = vec![false; nx * ny * nz];
        for ((_, x, y, z), &v) in images.indexed_iter() {
            mask[(x * ny + y) * nz + z] |= v != 0.0;
        }
        mask
    };
    let brain_voxels = brain.iter().filter(|&&b| b).count();
    let predictor = model.predictor();
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
    // Alternating in one process: the reference path (training modules in eval mode, autocast,
    // whole slices: what `predict` ran before), the folded network cropped to the brain
    // (opt-in), and the default (folded, whole slices, brain slices only).
    type Variant<'a> = (
        &'a str,
        Box<dyn Fn() -> cggm_trainer::predict::VolumePrediction + 'a>,
    );
    let mut variants: Vec<Variant> = Vec::new();
    if !args.no_reference {
        variants.push((
            "reference",
            Box::new(|| predictor.predict_reference(&study, false, |_| {})),
        ));
    }
    variants.push((
        "folded_cropped_to_brain",
        Box::new(|| predictor.predict_with(&study, false, cropped, |_| {})),
    ));
    variants.push((
        "default",
        Box::new(|| predictor.predict_with(&study, false, whole, |_| {})),
    ));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut labels: Vec<Option<ndarray::Array3<u8>>> = vec![None; variants.len()];
    for round in 0..=args.repeats {
        for (i, (_, run)) in variants.iter().enumerate() {
            sync(device);
            let (t0, c0) = (Instant::now(), process_cpu_seconds());
            let pred = run();
            sync(device);
            // Round 0 warms up.
            if round > 0 {
                times[i].push(t0.elapsed().as_secs_f64());
                cpu[i].push(process_cpu_seconds() - c0);
            }
            labels[i] = Some(pred.fused);
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    };
    let default_index = variants.len() - 1;
    // Agreement with the reference path (else with the default).
    let default_labels = labels[0].as_ref().expect("ran");
    let mut per_variant = serde_json::Map::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let pred = labels[i].as_ref().expect("ran");
        let same = pred
            .iter()
            .zip(default_labels.iter())
            .zip(&brain)
            .filter(|((a, b), &inside)| inside && a == b)
            .count();
        per_variant.insert(
            name.to_string(),
            json!({
                "seconds_median": median(&mut times[i]),
                "seconds_min": times[i][0],
                "cpu_seconds_median": median(&mut cpu[i]),
                "labelled_voxels": pred.iter().filter(|&&v| v != 0).count(),
                "brain_voxels_labelled_as_first_variant": same as f64 / brain_voxels.max(1) as f64,
            }),
        );
    }
    let default_median = times[default_index][times[default_index].len() / 2];
    let mut out = json!({
        "bench": "inference",
        "preset": model.cfg.preset,
        "weights": args.run.as_ref().map_or("fresh".to_string(), |r| r.display().to_string()),
        "size": size,
        "volume": args.volume,
        "brain_voxels": brain_voxels,
        "device": describe(device),
        "eval_batch": model.cfg.eval_batch,
        "precision": format!("{:?}", cggm_trainer::predict::inference_kind(device)),
        "crop_margin_of_cropped_variant": cropped.crop_margin,
        "threads": tch::get_num_threads(),
        "seconds_per_case_median": default_median,
        "seconds_per_case_min": times[default_index][0],
        "variants": per_variant,
    });
    if !args.no_reference {
        out["ratio_reference_over_default"] = json!(times[0][times[0].len() / 2] / default_median);
    }
    if args.flops {
        out["utilisation"] = infer_utilisation(&args, &model.cfg, &study, device, default_median)?;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The Python that runs the PyTorch reference: `--python`, else `$CGGM_PYTHON`, else python3.
fn python_with_torch(explicit: Option<&PathBuf>) -> PathBuf {
    explicit
        .cloned()
        .or_else(|| std::env::var_os("CGGM_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// `bench infer --flops`: the default path's FLOPs per case (one slice's forward, counted by the
/// PyTorch reference at the slice's in-plane size, times the slices that hold brain) and its MFU.
fn infer_utilisation(
    args: &InferBenchArgs,
    cfg: &TrainConfig,
    study: &Study,
    device: Device,
    seconds: f64,
) -> Result<serde_json::Value> {
    let (_, nx, ny, nz) = study.images.dim();
    anyhow::ensure!(
        nx == ny && nx % 16 == 0,
        "--flops counts square slices whose side is a multiple of 16 (the network's stride), \
         got {nx}x{ny}"
    );
    let images = study.images.view();
    let brain_slices = (0..nz)
        .filter(|&z| {
            images
                .slice(ndarray::s![.., .., .., z])
                .iter()
                .any(|&v| v != 0.0)
        })
        .count();
    let python = python_with_torch(args.python.as_ref());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_torch.py");
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .args([
            "--count-forward",
            "--batch-size",
            "1",
            "--crop",
            &nx.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("--flops: cannot start {} ({e})", python.display()))?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(serde_json::to_string(cfg)?.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "--flops: {} failed", script.display());
    let counted: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let per_slice = counted["forward_flops_per_sample"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("--flops: no count in {counted}"))?;
    let flops = per_slice * brain_slices as f64;
    let precision = match cggm_trainer::predict::inference_kind(device) {
        tch::Kind::BFloat16 => "bf16",
        tch::Kind::Half => "fp16",
        _ => "fp32",
    };
    let peak = crate::utilisation::peak(device, precision)
        .ok_or_else(|| anyhow::anyhow!("--flops: this machine's peak is unknown"))?;
    let gemm = crate::utilisation::gemm_rate(device, precision);
    let mfu = crate::utilisation::mfu(flops, seconds, &peak);
    eprintln!(
        "inference: {brain_slices} brain slices x {:.2} GFLOP = {:.1} GFLOP per case in {seconds:.3} \
         s: {:.1} GFLOP/s, MFU {:.1} % of {:.1} GFLOP/s {} ({}); a {precision} matrix product \
         measures {:.1} GFLOP/s",
        per_slice / 1e9,
        flops / 1e9,
        flops / seconds / 1e9,
        100.0 * mfu,
        peak.flops_per_second / 1e9,
        peak.precision,
        peak.derivation,
        gemm / 1e9
    );
    Ok(json!({
        "brain_slices": brain_slices,
        "forward_flops_per_slice": per_slice,
        "flops_per_case": flops,
        "achieved_flops_per_second": flops / seconds,
        "peak": peak,
        "mfu": mfu,
        "gemm_flops_per_second": gemm,
        "of_gemm_rate": flops / seconds / gemm,
    }))
}

/// CUDA (or any --device) against the CPU from the same weights and the same batch: the
/// deterministic eval-mode loss must agree within `--tolerance` (relative), and one training
/// iteration of the method runs on both (its losses differ a little: dropout draws differ
/// between devices).
fn bench_parity(args: ParityArgs) -> Result<()> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let mut cfg = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
    cfg.method = args.method.parse().map_err(anyhow::Error::msg)?;
    cfg.mixed_precision = false;
    if let Some(b) = args.batch_size {
        cfg.sampler.batch_size = b;
    }
    if let Some(c) = args.crop {
        cfg.sampler.crop = c;
    }
    let mut on_cpu = Trainer::segmentation(cfg.clone(), Device::Cpu, 1000);
    let mut on_device = Trainer::segmentation(cfg.clone(), device, 1000);
    on_device.model.vs.copy(&on_cpu.model.vs)?;
    let (images, labels) = random_batch(cfg.sampler.batch_size, cfg.sampler.crop, Device::Cpu);
    let eval_loss = |t: &Trainer| {
        let m = &t.model;
        let xs = m.select_modalities(&images.to_device(m.device));
        let out = tch::no_grad(|| m.network.forward_t(&xs, false));
        cggm_trainer::task::Task::loss(&cfg.loss, &out.logits, &labels.to_device(m.device))
            .double_value(&[])
    };
    let (cpu_eval, device_eval) = (eval_loss(&on_cpu), eval_loss(&on_device));
    let cpu_step = on_cpu.step(&images, &labels)?;
    let device_step = on_device.step(&images.to_device(device), &labels.to_device(device))?;
    let relative = (cpu_eval - device_eval).abs() / cpu_eval.abs().max(1e-12);
    let out = json!({
        "bench": "parity",
        "preset": args.preset,
        "method": cfg.method.to_string(),
        "device": describe(device),
        "eval_loss_cpu": cpu_eval,
        "eval_loss_device": device_eval,
        "eval_loss_relative_difference": relative,
        "first_step_loss_cpu": cpu_step.loss,
        "first_step_loss_device": device_step.loss,
        "first_step_gm_loss_cpu": cpu_step.gm_loss,
        "first_step_gm_loss_device": device_step.gm_loss,
        "pass": relative <= args.tolerance,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    anyhow::ensure!(
        relative <= args.tolerance,
        "the eval-mode loss differs by {relative:.2e} (relative) between the CPU and {}: above \
         --tolerance {}",
        describe(device),
        args.tolerance
    );
    Ok(())
}
