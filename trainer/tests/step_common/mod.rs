//! What the tests of one training step share: the lock around libtorch's global random
//! generator, the `tiny` configuration of a method on the CPU, a small batch with a tumour per
//! sample, and which encoder a parameter belongs to by its name (independent of the optimiser
//! groups the trainer reads from the VarStore).
#![allow(dead_code)]

use cggm_trainer::config::{Method, TrainConfig};
use cggm_trainer::step::Trainer;
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is global: tests that seed it must not interleave.
static TORCH_RNG: Mutex<()> = Mutex::new(());

pub fn exclusive() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// A synthetic BraTS-style dataset of `cases` cases of `size` voxels in `dir`.
pub fn synthetic_dataset(
    dir: &std::path::Path,
    cases: usize,
    size: [usize; 3],
    seed: u64,
    imbalance: f64,
) {
    use cggm_trainer::data::synth::{write_synthetic_dataset, SynthConfig};
    write_synthetic_dataset(
        dir,
        &SynthConfig {
            cases,
            seed,
            size,
            imbalance,
        },
    )
    .unwrap();
}

/// A whole `train` of `cfg` into `dir/run` with its events in `dir/events.jsonl`; returns the
/// run's metrics and the events file.
pub fn train_run(
    cfg: TrainConfig,
    dir: &std::path::Path,
) -> (cggm_trainer::run::RunMetrics, std::path::PathBuf) {
    use cggm_trainer::events::EventSink;
    use cggm_trainer::run::{train, TrainOptions};
    let events_path = dir.join("events.jsonl");
    let events = EventSink::file(&events_path).unwrap();
    let metrics = train(cfg, &dir.join("run"), &events, &TrainOptions::default())
        .unwrap()
        .unwrap();
    (metrics, events_path)
}

pub fn config(method: Method) -> TrainConfig {
    let mut cfg = TrainConfig::preset("tiny").unwrap();
    cfg.method = method;
    cfg.device = "cpu".into();
    cfg
}

/// Four 32x32 samples with a nested tumour each (every class present); FLAIR shows it brightly,
/// the other modalities not at all, so the modalities differ.
pub fn batch() -> (Tensor, Tensor) {
    tch::manual_seed(11);
    let images = Tensor::randn([4, 4, 32, 32], (Kind::Float, Device::Cpu));
    let mut labels = vec![0i64; 4 * 32 * 32];
    for s in 0..4 {
        for x in 0..32 {
            for y in 0..32 {
                let r =
                    ((x as f64 - 12.0 - s as f64 * 2.0).powi(2) + (y as f64 - 16.0).powi(2)).sqrt();
                labels[(s * 32 + x) * 32 + y] = match r {
                    r if r < 2.0 => 1,
                    r if r < 4.0 => 3,
                    r if r < 8.0 => 2,
                    _ => 0,
                };
            }
        }
    }
    let labels = Tensor::from_slice(&labels).view([4, 32, 32]);
    let _ = images
        .narrow(1, 0, 1)
        .g_add_(&(labels.gt(0).to_kind(Kind::Float).unsqueeze(1) * 3.0));
    (images, labels)
}

/// The encoder (index into the model's modalities) a parameter belongs to by its name, None for
/// the fusion head.
pub fn encoder_of(trainer: &Trainer, name: &str) -> Option<usize> {
    trainer
        .model
        .modality_names
        .iter()
        .position(|m| name.starts_with(&format!("encoders.{m}.")))
}
