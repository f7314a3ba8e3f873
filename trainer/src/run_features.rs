//! A training run on a feature dataset (classification or regression): prepare (configuration,
//! dataset, trainer) -> epochs (train, validate, checkpoint) -> test with the best weights. The
//! step is the same `Trainer::step` as segmentation's; only the data and the report differ.

use crate::checkpoint::{checkpoint_dir, write_json_atomic};
use crate::config::TrainConfig;
use crate::data::features::{DatasetSpec, FeatureBatch, FeatureSplit};
use crate::device::{describe, parse_device};
use crate::events::{now, Event, EventSink, RegionScores};
use crate::model::features::{FeatureInput, FeatureNet};
use crate::model::network::{ModalityClassifierSet, MultimodalNetwork};
use crate::run::TrainOptions;
use crate::step::Trainer;
use crate::task::metrics::{
    classification_report, regression_report, ClassificationReport, RegressionReport,
};
use crate::task::TaskKind;
use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Fused and per-modality scores of one split.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeatureEvalReport {
    pub samples: usize,
    /// The task's metrics by name (the `metrics` of the events).
    pub metrics: BTreeMap<String, f64>,
    /// Each modality's own classifier, same metric names.
    pub modality_metrics: BTreeMap<String, BTreeMap<String, f64>>,
    /// Classification: per-class scores and the confusion matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassificationReport>,
    /// Regression: every metric and the (predicted, true) pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionReport>,
}

impl FeatureEvalReport {
    /// Higher is better: accuracy (classification), minus MAE (regression).
    pub fn selection_score(&self) -> f64 {
        match (&self.classification, &self.regression) {
            (Some(c), _) => c.accuracy,
            (_, Some(r)) => -r.mae,
            _ => f64::NEG_INFINITY,
        }
    }
}

/// `metrics.json` of a feature run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureRunMetrics {
    pub task: TaskKind,
    pub method: String,
    pub preset: String,
    pub best_epoch: usize,
    pub best_val: Option<FeatureEvalReport>,
    pub test: Option<FeatureEvalReport>,
    pub epochs_completed: usize,
    pub seconds: f64,
    /// Mean B_i over all training steps, per modality (1.0 when the method does not modulate).
    pub mean_balance: BTreeMap<String, f64>,
}

fn input_of(batch: &FeatureBatch) -> FeatureInput {
    FeatureInput {
        features: batch.features.iter().map(|t| t.shallow_clone()).collect(),
        padding: batch
            .padding
            .iter()
            .map(|p| p.as_ref().map(|p| p.shallow_clone()))
            .collect(),
    }
}

fn scores(
    task: TaskKind,
    logits: &Tensor,
    labels: &Tensor,
    classes: &[String],
) -> (
    BTreeMap<String, f64>,
    Option<ClassificationReport>,
    Option<RegressionReport>,
) {
    match task {
        TaskKind::Classification => {
            let pred: Vec<usize> = Vec::<i64>::try_from(&logits.argmax(1, false))
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as usize)
                .collect();
            let truth: Vec<usize> = Vec::<i64>::try_from(&labels.to_kind(Kind::Int64))
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as usize)
                .collect();
            let report = classification_report(&truth, &pred, classes);
            (report.metrics(), Some(report), None)
        }
        _ => {
            let pred = Vec::<f64>::try_from(&logits.flatten(0, -1).to_kind(Kind::Double))
                .unwrap_or_default();
            let truth = Vec::<f64>::try_from(&labels.to_kind(Kind::Double)).unwrap_or_default();
            let report = regression_report(&pred, &truth);
            (report.metrics(), None, Some(report))
        }
    }
}

/// Scores the model and every classifier on a whole split (no gradients, eval mode).
pub fn evaluate_features(
    trainer: &Trainer<FeatureNet>,
    split: &FeatureSplit,
    spec: &DatasetSpec,
) -> FeatureEvalReport {
    let _guard = tch::no_grad_guard();
    let mut fused = Vec::new();
    let mut per_modality: Vec<Vec<Tensor>> = (0..trainer.modality_names.len())
        .map(|_| Vec::new())
        .collect();
    let bs = trainer.cfg.eval_batch.max(1);
    let idx: Vec<i64> = (0..split.n as i64).collect();
    for chunk in idx.chunks(bs) {
        let batch = split.batch(chunk, trainer.device);
        let out = trainer.model.forward_t(&input_of(&batch), false);
        if let Some(cls) = &trainer.classifiers {
            for (acc, l) in per_modality.iter_mut().zip(cls.logits_t(&out, false)) {
                acc.push(l.to_device(tch::Device::Cpu));
            }
        }
        fused.push(out.logits.to_device(tch::Device::Cpu));
    }
    let labels = &split.labels;
    let (metrics, classification, regression) =
        scores(spec.task, &Tensor::cat(&fused, 0), labels, &spec.classes);
    let modality_metrics = trainer
        .modality_names
        .iter()
        .zip(&per_modality)
        .filter(|(_, l)| !l.is_empty())
        .map(|(name, l)| {
            (
                name.clone(),
                scores(spec.task, &Tensor::cat(l, 0), labels, &spec.classes).0,
            )
        })
        .collect();
    FeatureEvalReport {
        samples: split.n,
        metrics,
        modality_metrics,
        classification,
        regression,
    }
}

/// Saves the weights as `checkpoints/<name>.safetensors` (written aside, then renamed) and a
/// small JSON beside them.
fn save_checkpoint(
    run_dir: &Path,
    name: &str,
    trainer: &Trainer<FeatureNet>,
    state: &serde_json::Value,
) -> Result<std::path::PathBuf> {
    let dir = checkpoint_dir(run_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.safetensors"));
    let tmp = dir.join(format!(".tmp-{}-{name}.safetensors", std::process::id()));
    trainer
        .vs
        .save(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    write_json_atomic(&dir.join(format!("{name}.json")), state)?;
    Ok(path)
}

/// Everything a feature run needs before its first step.
struct Prepared {
    spec: DatasetSpec,
    train: FeatureSplit,
    valid: FeatureSplit,
    test: FeatureSplit,
    trainer: Trainer<FeatureNet>,
    steps_per_epoch: usize,
}

fn prepare(cfg: &mut TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<Prepared> {
    if opts.resume {
        bail!("--resume is not supported for feature-dataset runs yet: start a new run with another --out (they train in minutes)");
    }
    let spec = DatasetSpec::read(&cfg.data)?;
    cfg.task = spec.task;
    cfg.validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    if checkpoint_dir(run_dir).join("last.json").exists() {
        bail!(
            "{} already holds a run: choose a new --out",
            run_dir.display()
        );
    }
    write_json_atomic(&run_dir.join("config.json"), &*cfg)?;
    let chosen = cfg
        .feature_modalities(&spec.names())
        .map_err(anyhow::Error::msg)?;
    let load = |split: &str| FeatureSplit::load(&cfg.data, &spec, split, &chosen);
    let (train, valid, test) = (load("train")?, load("valid")?, load("test")?);
    let steps_per_epoch = cfg
        .steps_per_epoch
        .unwrap_or_else(|| train.n.div_ceil(cfg.sampler.batch_size))
        .max(1);
    let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
    let mut trainer = Trainer::for_features(cfg.clone(), &spec, device, steps_per_epoch)
        .map_err(anyhow::Error::msg)?;
    // Only the chosen modalities were loaded: the batch holds exactly the model's inputs.
    trainer.modality_channels = (0..chosen.len() as i64).collect();
    Ok(Prepared {
        spec,
        train,
        valid,
        test,
        trainer,
        steps_per_epoch,
    })
}

fn by_name(names: &[String], values: &[f64]) -> BTreeMap<String, f64> {
    names
        .iter()
        .cloned()
        .zip(values.iter().copied())
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// One epoch of shuffled batches; returns the mean loss and adds each step's B to `balance_sum`.
fn train_epoch(
    p: &mut Prepared,
    epoch: usize,
    events: &EventSink,
    balance_sum: &mut [f64],
) -> Result<f64> {
    let t = &mut p.trainer;
    let mut order: Vec<i64> = (0..p.train.n as i64).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        t.cfg
            .seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(epoch as u64),
    );
    order.shuffle(&mut rng);
    let bs = t.cfg.sampler.batch_size;
    let mut loss_sum = 0.0;
    for step in 0..p.steps_per_epoch {
        let start = (step * bs) % order.len();
        let idx: Vec<i64> = (0..bs.min(order.len()))
            .map(|k| order[(start + k) % order.len()])
            .collect();
        let batch = p.train.batch(&idx, t.device);
        let t0 = Instant::now();
        let report = t.step(&input_of(&batch), &batch.labels)?;
        loss_sum += report.loss;
        for (s, b) in balance_sum.iter_mut().zip(&report.balance) {
            *s += b;
        }
        events.emit(&Event::Step {
            time: now(),
            epoch,
            step: t.global_step - 1,
            loss: report.loss,
            task_loss: report.task_loss,
            gm_loss: report.gm_loss,
            lr: report.lr,
            balance: by_name(&t.modality_names, &report.balance),
            cosine: by_name(&t.modality_names, &report.cosine),
            modality_metric: by_name(&t.modality_names, &report.modality_metric),
            step_seconds: t0.elapsed().as_secs_f64(),
            balance_guarded: report.balance_guarded as usize,
            balance_clamped: report.balance_clamped,
            baseline_coefficients: by_name(&t.modality_names, &report.baseline_coefficients),
        });
    }
    Ok(loss_sum / p.steps_per_epoch as f64)
}

/// Trains `cfg` (a feature dataset in `cfg.data`) into `run_dir`; a failure is also reported as
/// a `failed` event.
pub fn train_features(
    cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<FeatureRunMetrics>> {
    events.report_failure(train_features_inner(cfg, run_dir, events, opts))
}

fn train_features_inner(
    mut cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<FeatureRunMetrics>> {
    let started = Instant::now();
    let mut p = prepare(&mut cfg, run_dir, opts)?;
    let spe = p.steps_per_epoch;
    events.emit(&Event::RunStarted {
        time: now(),
        config: serde_json::to_value(&cfg)?,
        train_cases: p.train.n,
        val_cases: p.valid.n,
        test_cases: p.test.n,
        steps_per_epoch: spe,
        total_steps: spe * cfg.epochs,
        device: describe(p.trainer.device),
        task: cfg.task,
    });
    let mut best: Option<FeatureEvalReport> = None;
    let mut best_epoch = 0;
    let mut balance_sum = vec![0.0; p.trainer.modality_names.len()];
    for epoch in 0..cfg.epochs {
        let train_loss = train_epoch(&mut p, epoch, events, &mut balance_sum)?;
        let done = epoch + 1;
        if done % cfg.val_every != 0 && done != cfg.epochs {
            continue;
        }
        let report = evaluate_features(&p.trainer, &p.valid, &p.spec);
        let is_best = best
            .as_ref()
            .is_none_or(|b| report.selection_score() > b.selection_score());
        events.emit(&Event::Validation {
            time: now(),
            epoch,
            train_loss,
            dice: RegionScores::default(),
            hd95: RegionScores::default(),
            modality_dice: BTreeMap::new(),
            best: is_best,
            metrics: report.metrics.clone(),
            modality_metrics: report.modality_metrics.clone(),
        });
        tracing::info!("epoch {epoch}: validation {:?}", report.metrics);
        let state = serde_json::json!({ "epoch": done, "global_step": p.trainer.global_step, "validation": &report });
        if is_best {
            best = Some(report);
            best_epoch = done;
            let path = save_checkpoint(run_dir, "best", &p.trainer, &state)?;
            events.emit(&Event::CheckpointSaved {
                time: now(),
                epoch,
                path: path.display().to_string(),
                best: true,
            });
        }
        let path = save_checkpoint(run_dir, "last", &p.trainer, &state)?;
        events.emit(&Event::CheckpointSaved {
            time: now(),
            epoch,
            path: path.display().to_string(),
            best: false,
        });
        if opts.stop_after_epochs.is_some_and(|n| done >= n) && done < cfg.epochs {
            return Ok(None);
        }
    }
    p.trainer
        .vs
        .load(checkpoint_dir(run_dir).join("best.safetensors"))
        .context("loading the best checkpoint for the test split")?;
    let test = evaluate_features(&p.trainer, &p.test, &p.spec);
    let steps = (spe * cfg.epochs).max(1) as f64;
    let metrics = FeatureRunMetrics {
        task: cfg.task,
        method: cfg.method.to_string(),
        preset: cfg.preset.clone(),
        best_epoch,
        best_val: best,
        test: Some(test.clone()),
        epochs_completed: cfg.epochs,
        seconds: started.elapsed().as_secs_f64(),
        mean_balance: by_name(
            &p.trainer.modality_names,
            &balance_sum.iter().map(|s| s / steps).collect::<Vec<_>>(),
        ),
    };
    write_json_atomic(&run_dir.join("metrics.json"), &metrics)?;
    events.emit(&Event::Finished {
        time: now(),
        best_epoch,
        best_val_dice: RegionScores::default(),
        test_dice: None,
        test_modality_dice: BTreeMap::new(),
        test_metrics: test.metrics.clone(),
    });
    Ok(Some(metrics))
}
