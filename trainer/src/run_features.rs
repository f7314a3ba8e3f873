//! A training run on a feature dataset (classification or regression): prepare (configuration,
//! dataset, trainer; restored from the last checkpoint on `--resume`) -> epochs (train, validate,
//! checkpoint) -> test with the best weights. The step is the same `Trainer::step` as
//! segmentation's; only the data and the report differ. Scoring lives in `eval_features`.

use crate::checkpoint::{self, write_json_atomic, CheckpointState};
use crate::config::TrainConfig;
use crate::data::features::DatasetSpec;
use crate::device::{describe, parse_device};
pub use crate::eval_features::{evaluate_features, input_of, FeatureEvalReport};
use crate::events::{now, Event, EventSink, RegionScores};
use crate::features_data::FeatureSplit;
use crate::model::features::FeatureNet;
use crate::run::TrainOptions;
use crate::rundir::RunDir;
use crate::step::Trainer;
use crate::task::TaskKind;
use anyhow::{anyhow, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

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
    /// How often the balance guard decided B over the run.
    #[serde(default)]
    pub balance_stats: crate::cggm::BalanceStats,
    /// B's signal-to-noise diagnostics over the run (None without classifiers), with a plain
    /// sentence in `summary`.
    #[serde(default)]
    pub balance_diagnostics: Option<crate::cggm::BalanceDiagnostics>,
}

/// Where the run stands: the start of a new run, or what the last checkpoint recorded.
#[derive(Default)]
struct Progress {
    /// Epochs already done.
    start_epoch: usize,
    best: Option<FeatureEvalReport>,
    best_epoch: usize,
    /// Sum of each modality's B_i over the steps done (for `mean_balance`).
    balance_sum: Vec<f64>,
}

/// Everything a feature run needs before its next step.
struct Prepared {
    spec: DatasetSpec,
    train: FeatureSplit,
    valid: FeatureSplit,
    test: FeatureSplit,
    trainer: Trainer<FeatureNet>,
    steps_per_epoch: usize,
    progress: Progress,
    /// Held for the whole run: one process per run directory.
    _lock: std::fs::File,
}

fn prepare(cfg: &mut TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<Prepared> {
    let spec = DatasetSpec::read(&cfg.data)?;
    cfg.train_task(spec.task).map_err(|e| anyhow!("{e}"))?;
    cfg.validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let lock = checkpoint::lock_run_dir(run_dir)?;
    checkpoint::claim_run_dir(run_dir, cfg, opts.resume)?;
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
    let modalities = chosen.len();
    let progress = match trainer.resume_if(opts.resume, run_dir)? {
        Some(state) => Progress {
            start_epoch: state.epoch,
            best: state.best_val_report,
            best_epoch: state.best_epoch,
            balance_sum: if state.balance_sum.len() == modalities {
                state.balance_sum
            } else {
                vec![0.0; modalities]
            },
        },
        None => Progress {
            balance_sum: vec![0.0; modalities],
            ..Progress::default()
        },
    };
    Ok(Prepared {
        spec,
        train,
        valid,
        test,
        trainer,
        steps_per_epoch,
        progress,
        _lock: lock,
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

/// One epoch of shuffled batches (the order depends only on the seed and the epoch, so a resumed
/// run sees the same batches); returns the mean loss and adds each step's B to the sum.
fn train_epoch(p: &mut Prepared, epoch: usize, events: &EventSink) -> Result<f64> {
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
        for (s, b) in p.progress.balance_sum.iter_mut().zip(&report.balance) {
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

/// Validates after epoch `epoch` when the schedule says so (every `val_every` epochs and the
/// last); returns whether these weights are the best so far.
fn validate(p: &mut Prepared, epoch: usize, train_loss: f64, events: &EventSink) -> bool {
    let done = epoch + 1;
    let cfg = &p.trainer.cfg;
    if !done.is_multiple_of(cfg.val_every) && done != cfg.epochs {
        return false;
    }
    let report = evaluate_features(&p.trainer, &p.valid, &p.spec);
    let is_best = p
        .progress
        .best
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
    if is_best {
        p.progress.best = Some(report);
        p.progress.best_epoch = epoch + 1;
    }
    is_best
}

/// Saves the checkpoints after epoch `epoch`: `last` always (a resume continues from any epoch),
/// `best` when it is.
fn save_checkpoints(
    p: &Prepared,
    run_dir: &Path,
    epoch: usize,
    is_best: bool,
    events: &EventSink,
) -> Result<()> {
    let state = CheckpointState {
        best_val_report: p.progress.best.clone(),
        balance_sum: p.progress.balance_sum.clone(),
        ..p.trainer.checkpoint_state(epoch + 1, p.progress.best_epoch)
    };
    checkpoint::save_epoch(run_dir, &p.trainer, &state, epoch, is_best, events)
}

/// Trains `cfg` (a feature dataset in `cfg.data`) into `run_dir`; a failure is also reported as
/// a `failed` event. Returns `None` when stopped early by `stop_after_epochs`.
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
        modalities: p.trainer.modality_names.clone(),
    });
    for epoch in p.progress.start_epoch..cfg.epochs {
        let train_loss = train_epoch(&mut p, epoch, events)?;
        if let Some(event) = p.trainer.balance_diagnostics_event(epoch) {
            events.emit(&event);
        }
        let is_best = validate(&mut p, epoch, train_loss, events);
        save_checkpoints(&p, run_dir, epoch, is_best, events)?;
        let done = epoch + 1;
        if opts.stop_after_epochs.is_some_and(|n| done >= n) && done < cfg.epochs {
            tracing::info!("stopping after epoch {done} as asked; continue with --resume");
            return Ok(None);
        }
    }
    checkpoint::load_weights(run_dir, "best", &mut p.trainer)
        .context("loading the best checkpoint for the test split")?;
    let test = evaluate_features(&p.trainer, &p.test, &p.spec);
    let steps = (spe * cfg.epochs).max(1) as f64;
    let metrics = FeatureRunMetrics {
        task: cfg.task,
        method: cfg.method.to_string(),
        preset: cfg.preset.clone(),
        best_epoch: p.progress.best_epoch,
        best_val: p.progress.best.clone(),
        test: Some(test.clone()),
        epochs_completed: cfg.epochs,
        seconds: started.elapsed().as_secs_f64(),
        mean_balance: by_name(
            &p.trainer.modality_names,
            &p.progress
                .balance_sum
                .iter()
                .map(|s| s / steps)
                .collect::<Vec<_>>(),
        ),
        balance_stats: p.trainer.tracker.stats.clone(),
        balance_diagnostics: p.trainer.balance_diagnostics(false),
    };
    write_json_atomic(&RunDir::new(run_dir).metrics(), &metrics)?;
    events.emit(&Event::Finished {
        time: now(),
        best_epoch: p.progress.best_epoch,
        best_val_dice: RegionScores::default(),
        test_dice: None,
        test_modality_dice: BTreeMap::new(),
        test_metrics: test.metrics.clone(),
    });
    Ok(Some(metrics))
}
