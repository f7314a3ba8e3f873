//! `cggm bench parity`: the CPU against --device from the same weights and the same batch.
use super::inputs::random_batch;
use anyhow::Result;
use cggm_core::preset::Preset;
use cggm_trainer::config::TrainConfig;
use cggm_trainer::device::{describe, parse_device};
use cggm_trainer::step::Trainer;
use serde::Serialize;
use tch::Device;

#[derive(Debug, clap::Args)]
pub struct ParityArgs {
    #[arg(long, default_value = Preset::Tiny.name())]
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

/// CUDA (or any --device) against the CPU from the same weights and the same batch: the
/// deterministic eval-mode loss must agree within `--tolerance` (relative), and one training
/// iteration of the method runs on both (its losses differ a little: dropout draws differ
/// between devices).
/// The JSON report of `bench parity`.
#[derive(Serialize)]
struct ParityReport {
    bench: &'static str,
    preset: String,
    method: String,
    device: String,
    eval_loss_cpu: f64,
    eval_loss_device: f64,
    eval_loss_relative_difference: f64,
    first_step_loss_cpu: f64,
    first_step_loss_device: f64,
    first_step_gm_loss_cpu: f64,
    first_step_gm_loss_device: f64,
    pass: bool,
}

pub fn bench_parity(args: ParityArgs) -> Result<()> {
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
    super::report::print(&ParityReport {
        bench: "parity",
        preset: args.preset.clone(),
        method: cfg.method.to_string(),
        device: describe(device),
        eval_loss_cpu: cpu_eval,
        eval_loss_device: device_eval,
        eval_loss_relative_difference: relative,
        first_step_loss_cpu: cpu_step.loss,
        first_step_loss_device: device_step.loss,
        first_step_gm_loss_cpu: cpu_step.gm_loss,
        first_step_gm_loss_device: device_step.gm_loss,
        pass: relative <= args.tolerance,
    })?;
    anyhow::ensure!(
        relative <= args.tolerance,
        "the eval-mode loss differs by {relative:.2e} (relative) between the CPU and {}: above \
         --tolerance {}",
        describe(device),
        args.tolerance
    );
    Ok(())
}
