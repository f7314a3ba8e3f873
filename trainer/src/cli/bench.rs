//! `cggm bench`: measured numbers for the README. Timings are ratios against a baseline run in the
//! same process, interleaved, because the machines are shared and noisy.

use super::data_commands::{bench_loader, LoaderBenchArgs};
use crate::config::{Method, TrainConfig};
use crate::data::Study;
use crate::device::{describe, parse_device};
use crate::step::Trainer;
use anyhow::Result;
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use serde_json::json;
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
    /// Rounds; methods alternate within each round so drift hits all of them alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Debug, clap::Args)]
pub struct InferBenchArgs {
    #[arg(long, default_value = "cpu-small")]
    pub preset: String,
    /// Volume size XxYxZ.
    #[arg(long, default_value = "240x240x155")]
    pub size: String,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Loader(args) => bench_loader(args),
        BenchCommand::Train(args) => bench_train(args),
        BenchCommand::Infer(args) => bench_infer(args),
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

fn bench_train(args: TrainBenchArgs) -> Result<()> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let mut base = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
    if let Some(b) = args.batch_size {
        base.sampler.batch_size = b;
    }
    if let Some(c) = args.crop {
        base.sampler.crop = c;
    }
    let variants: Vec<(&str, TrainConfig)> = vec![
        (
            "joint",
            TrainConfig {
                method: Method::Joint,
                probes: false,
                ..base.clone()
            },
        ),
        (
            "joint+probes",
            TrainConfig {
                method: Method::Joint,
                probes: true,
                ..base.clone()
            },
        ),
        (
            "cggm-magnitude",
            TrainConfig {
                method: Method::CggmMagnitude,
                ..base.clone()
            },
        ),
        (
            "cggm",
            TrainConfig {
                method: Method::Cggm,
                ..base.clone()
            },
        ),
    ];
    let mut trainers: Vec<Trainer> = variants
        .iter()
        .map(|(_, c)| Trainer::new(c.clone(), device, 1000))
        .collect();
    let (images, labels) = random_batch(base.sampler.batch_size, base.sampler.crop, device);
    // Warm-up: allocator, kernels, autograd graph caches.
    for t in &mut trainers {
        for _ in 0..2 {
            t.step(&images, &labels)?;
        }
    }
    let mut seconds = vec![0.0; trainers.len()];
    let mut cpu = vec![0.0; trainers.len()];
    for _ in 0..args.rounds {
        for (i, t) in trainers.iter_mut().enumerate() {
            sync(device);
            let (t0, c0) = (Instant::now(), process_cpu_seconds());
            for _ in 0..args.steps {
                t.step(&images, &labels)?;
            }
            sync(device);
            seconds[i] += t0.elapsed().as_secs_f64();
            cpu[i] += process_cpu_seconds() - c0;
        }
    }
    let n = (args.rounds * args.steps) as f64;
    let per_step: Vec<f64> = seconds.iter().map(|s| s / n).collect();
    let cpu_per_step: Vec<f64> = cpu.iter().map(|s| s / n).collect();
    let out = json!({
        "bench": "train-step",
        "preset": args.preset,
        "batch_size": base.sampler.batch_size,
        "crop": base.sampler.crop,
        "device": describe(device),
        "steps_timed_per_method": n,
        "seconds_per_step": variants.iter().zip(&per_step).map(|((name, _), s)| (name.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "cpu_seconds_per_step": variants.iter().zip(&cpu_per_step).map(|((name, _), s)| (name.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "cpu_ratio_cggm_over_joint": cpu_per_step[3] / cpu_per_step[0],
        "ratio_cggm_over_joint": per_step[3] / per_step[0],
        "ratio_cggm_magnitude_over_joint": per_step[2] / per_step[0],
        "ratio_joint_probes_over_joint": per_step[1] / per_step[0],
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn bench_infer(args: InferBenchArgs) -> Result<()> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let size: Vec<usize> = args
        .size
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(size.len() == 3, "--size must be XxYxZ, got {}", args.size);
    let cfg = TrainConfig::preset(&args.preset).map_err(anyhow::Error::msg)?;
    let trainer = Trainer::new(cfg, device, 1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let images = Array4::from_shape_fn((4, size[0], size[1], size[2]), |_| {
        rng.gen_range(-1.0f32..1.0)
    });
    let study = Study {
        id: "bench".into(),
        images,
        label: None,
        header: crate::data::synth::synthetic_header([size[0], size[1], size[2]]),
        voxel_volume_ml: 0.001,
    };
    let predictor = trainer.predictor();
    predictor.predict(&study, false, |_| {});
    let mut times = Vec::new();
    for _ in 0..args.repeats {
        sync(device);
        let t0 = Instant::now();
        predictor.predict(&study, false, |_| {});
        sync(device);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let out = json!({
        "bench": "inference",
        "preset": args.preset,
        "size": size,
        "device": describe(device),
        "eval_batch": trainer.cfg.eval_batch,
        "seconds_per_case_median": times[times.len() / 2],
        "seconds_per_case_min": times[0],
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
