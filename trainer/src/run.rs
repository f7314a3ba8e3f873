//! A segmentation training run: prepare (configuration, split, trainer; restored from the last
//! checkpoint on `--resume`) -> epochs (train, validate, checkpoint) -> test with the best
//! weights, each a short function, with progress events. Feature runs (`run_features`) have the
//! same shape around the same `Trainer::step`.

use crate::checkpoint::{self, CheckpointState};
use crate::config::TrainConfig;
use crate::data::{
    discover, read_saved_split, resolve_saved_split, split_cases, split_from_file,
    write_saved_split, SliceBatch, SliceLoader, Split,
};
use crate::device::{describe, parse_device};
use crate::eval::{evaluate, evaluate_saving_predictions, EvalReport, Predictor};
use crate::events::{now, Event, EventSink, RegionScores};
use crate::rundir::RunDir;
use crate::step::{StepReport, Trainer};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunMetrics {
    pub method: String,
    pub preset: String,
    pub best_epoch: usize,
    pub best_val_dice: Option<RegionScores>,
    pub best_val_modality_dice: BTreeMap<String, RegionScores>,
    pub test: Option<EvalReport>,
    pub epochs_completed: usize,
    pub seconds: f64,
    /// numbers (issue 8): how often the balance guard decided B over the run.
    #[serde(default)]
    pub balance_stats: crate::cggm::BalanceStats,
    /// B's signal-to-noise diagnostics over the run (None without classifiers), with a plain
    /// sentence in `summary`.
    #[serde(default)]
    pub balance_diagnostics: Option<crate::cggm::BalanceDiagnostics>,
}

/// Splits the dataset as the configuration says (same seed, same split).
pub fn dataset_split(cfg: &TrainConfig) -> Result<Split> {
    let report = discover(&cfg.data);
    for p in &report.problems {
        tracing::warn!("skipping a bad case: {p}");
    }
    if report.cases.is_empty() {
        bail!(
            "no usable case found in {}: run `cggm validate {}` to see why",
            cfg.data.display(),
            cfg.data.display()
        );
    }
    Ok(match &cfg.split.file {
        Some(file) => split_from_file(&report.cases, file)?,
        None => split_cases(
            &report.cases,
            cfg.seed,
            cfg.split.val_fraction,
            cfg.split.test_fraction,
        ),
    })
}

// numbers (issue 8): the split is data of the run. Written as RUN_DIR/split.json when a run
// starts; resume, validation, the final test and `cggm eval` read it back.
/// The run's split: the saved one when `run_dir` has it (resume, eval), else a new one from the
/// configuration, saved when `save` is set. Cases added to the folder later never join the run.
pub fn run_split(cfg: &TrainConfig, run_dir: &Path, save: bool) -> Result<Split> {
    if let Some(saved) = read_saved_split(run_dir)? {
        let report = discover(&cfg.data);
        return Ok(resolve_saved_split(
            &report.cases,
            &saved,
            run_dir,
            &cfg.data,
        )?);
    }
    let split = dataset_split(cfg)?;
    if save {
        write_saved_split(run_dir, &split)?;
    }
    Ok(split)
}

pub fn steps_per_epoch(cfg: &TrainConfig, train_cases: usize) -> usize {
    cfg.steps_per_epoch
        .unwrap_or_else(|| (train_cases * cfg.slices_per_case).div_ceil(cfg.sampler.batch_size))
        .max(1)
}

/// Host batch -> (images [B,4,H,W] float, labels [B,H,W] int64) on the device.
pub fn batch_tensors(batch: &SliceBatch, device: Device) -> (Tensor, Tensor) {
    let (b, c, h, w) = batch.images.dim();
    let images = Tensor::from_slice(batch.images.as_slice().expect("standard layout"))
        .view([b as i64, c as i64, h as i64, w as i64])
        .to_device(device);
    let labels = Tensor::from_slice(batch.labels.as_slice().expect("standard layout"))
        .view([b as i64, h as i64, w as i64])
        .to_kind(Kind::Int64)
        .to_device(device);
    (images, labels)
}

impl Trainer {
    pub fn predictor(&self) -> Predictor<'_> {
        Predictor {
            model: &self.model,
            classifiers: self.classifiers.as_ref(),
            modality_channels: &self.modality_channels,
            modality_names: self
                .cfg
                .modalities()
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            device: self.device,
            batch: self.cfg.eval_batch,
        }
    }
}

/// Opens a finished (or running) run for evaluation or inference with its best weights (last if
/// no best exists yet).
pub fn open_run(run_dir: &Path, device: Option<&str>) -> Result<Trainer> {
    let cfg = checkpoint::read_config(run_dir)?;
    let device = parse_device(device.unwrap_or(&cfg.device)).map_err(anyhow::Error::msg)?;
    let mut trainer = Trainer::new(cfg, device, 1);
    checkpoint::load_best_or_last(run_dir, &mut trainer)?;
    Ok(trainer)
}

fn names(cfg: &TrainConfig) -> Vec<String> {
    cfg.modalities()
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}

fn by_modality(names: &[String], values: &[f64]) -> BTreeMap<String, f64> {
    names
        .iter()
        .cloned()
        .zip(values.iter().copied())
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Segmentation's task metrics by name, for the events' `metrics` maps.
pub fn dice_metrics(d: &RegionScores) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("dice_wt".to_string(), d.wt),
        ("dice_tc".to_string(), d.tc),
        ("dice_et".to_string(), d.et),
        ("dice_mean".to_string(), d.mean),
    ])
}

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from `checkpoints/last` with the same schedule (the saved config must match).
    pub resume: bool,
    /// Stop (as if interrupted) once this many epochs of the schedule are done.
    pub stop_after_epochs: Option<usize>,
}

/// Trains `cfg` into `run_dir`. Returns `None` when stopped early by `stop_after_epochs`.
pub fn train(
    mut cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<RunMetrics>> {
    events.report_failure(train_inner(&mut cfg, run_dir, events, opts))
}

/// Where the run stands: the start of a new run, or what the last checkpoint recorded.
#[derive(Default)]
struct Progress {
    /// Epochs already done.
    start_epoch: usize,
    best_epoch: usize,
    best: Option<RegionScores>,
    best_modality: BTreeMap<String, RegionScores>,
}

/// Everything a segmentation run needs before its next step.
struct Prepared {
    split: Split,
    trainer: Trainer,
    loader: SliceLoader,
    /// The validation cases used (`val_cases` may cap the split's).
    val_cases: Vec<crate::data::CaseSource>,
    steps_per_epoch: usize,
    names: Vec<String>,
    progress: Progress,
    /// Held for the whole run: one process per run directory.
    _lock: std::fs::File,
}

/// Checks the configuration, claims the run directory, splits the data (the saved split on
/// resume), builds the trainer and, on `--resume`, restores it from the last checkpoint.
fn prepare(cfg: &TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<Prepared> {
    cfg.validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let lock = checkpoint::lock_run_dir(run_dir)?;
    checkpoint::claim_run_dir(run_dir, cfg, opts.resume)?;

    let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
    if !opts.resume {
        // A new run in a reused directory draws its split afresh.
        let _ = std::fs::remove_file(run_dir.join(crate::data::SPLIT_FILE_NAME));
    }
    let split = run_split(cfg, run_dir, true)?;
    if split.train.is_empty() {
        bail!("the split left no training case: add cases or lower the validation/test fractions");
    }
    let val_cases: Vec<_> = match cfg.val_cases {
        Some(n) => split.val.iter().take(n).cloned().collect(),
        None => split.val.clone(),
    };
    // Without a validation case no checkpoint can be chosen and every score is NaN: refuse
    // rather than "succeed" with a model nobody can judge.
    if val_cases.is_empty() {
        bail!(
            "the split left no validation case ({} usable case(s), val_cases {:?}): a run needs at \
             least one case to validate on, so at least 2 usable cases; add cases (see `cggm \
             validate`), give a split file with a \"val\" case, or set val_cases to 1 or more",
            split.train.len() + split.val.len() + split.test.len(),
            cfg.val_cases
        );
    }
    let spe = steps_per_epoch(cfg, split.train.len());
    let mut trainer = Trainer::new(cfg.clone(), device, spe);
    let progress = match trainer.resume_if(opts.resume, run_dir)? {
        Some(state) => Progress {
            start_epoch: state.epoch,
            best_epoch: state.best_epoch,
            best: state.best_val_dice,
            best_modality: state.best_val_modality_dice,
        },
        None => Progress::default(),
    };
    // The sampler's stream continues where the restored step left it.
    let loader = SliceLoader::new(
        &split.train,
        cfg.sampler.clone(),
        cfg.seed,
        trainer.global_step as u64,
    )
    .context("preparing the training slices")?;
    Ok(Prepared {
        split,
        trainer,
        loader,
        val_cases,
        steps_per_epoch: spe,
        names: names(cfg),
        progress,
        _lock: lock,
    })
}

/// One epoch of sampled slice batches; returns the mean loss.
fn train_epoch(p: &mut Prepared, epoch: usize, events: &EventSink) -> Result<f64> {
    let spe = p.steps_per_epoch;
    let device = p.trainer.device;
    let mut loss_sum = 0.0;
    for step in 0..spe {
        let t0 = Instant::now();
        let batch = p.loader.next_batch()?;
        let (images, labels) = batch_tensors(&batch, device);
        let report: StepReport = p.trainer.step(&images, &labels)?;
        loss_sum += report.loss;
        let names = &p.names;
        events.emit(&Event::Step {
            time: now(),
            epoch,
            step: p.trainer.global_step - 1,
            loss: report.loss,
            task_loss: report.task_loss,
            gm_loss: report.gm_loss,
            lr: report.lr,
            balance: by_modality(names, &report.balance),
            cosine: by_modality(names, &report.cosine),
            modality_metric: by_modality(names, &report.modality_metric),
            step_seconds: t0.elapsed().as_secs_f64(),
            balance_guarded: report.balance_guarded as usize,
            balance_clamped: report.balance_clamped,
            baseline_coefficients: by_modality(names, &report.baseline_coefficients),
        });
        if step % 10 == 0 {
            tracing::info!(
                "epoch {epoch} step {step}/{spe} loss {:.4} lr {:.2e}",
                report.loss,
                report.lr
            );
        }
    }
    Ok(loss_sum / spe as f64)
}

/// Validates after epoch `epoch` when the schedule says so; returns whether these weights are
/// the best so far (always, when there are no validation cases).
fn validate(p: &mut Prepared, epoch: usize, train_loss: f64, events: &EventSink) -> Result<bool> {
    let done = epoch + 1;
    let epochs = p.trainer.cfg.epochs;
    if p.val_cases.is_empty() {
        // Without validation cases the latest weights are the best we know.
        p.progress.best_epoch = done;
        return Ok(true);
    }
    if !done.is_multiple_of(p.trainer.cfg.val_every) && done != epochs {
        return Ok(false);
    }
    let report = evaluate(
        &p.trainer.predictor(),
        &p.val_cases,
        p.trainer.classifiers.is_some(),
    )?;
    let is_best = p
        .progress
        .best
        .as_ref()
        .is_none_or(|b| report.dice.mean > b.mean);
    if is_best {
        p.progress.best = Some(report.dice.clone());
        p.progress.best_modality = report.modality_dice.clone();
        p.progress.best_epoch = done;
    }
    events.emit(&Event::Validation {
        time: now(),
        epoch,
        train_loss,
        dice: report.dice.clone(),
        hd95: report.hd95.clone(),
        modality_dice: report.modality_dice.clone(),
        best: is_best,
        metrics: dice_metrics(&report.dice),
        modality_metrics: report
            .modality_dice
            .iter()
            .map(|(m, d)| (m.clone(), dice_metrics(d)))
            .collect(),
    });
    tracing::info!(
        "epoch {epoch}: validation Dice WT {:.4} TC {:.4} ET {:.4} mean {:.4}",
        report.dice.wt,
        report.dice.tc,
        report.dice.et,
        report.dice.mean
    );
    Ok(is_best)
}

/// Saves `last` after every epoch, and `best` when these weights are the best so far.
fn save_checkpoints(
    p: &Prepared,
    run_dir: &Path,
    epoch: usize,
    is_best: bool,
    events: &EventSink,
) -> Result<()> {
    let state = CheckpointState {
        best_val_dice: p.progress.best.clone(),
        best_val_modality_dice: p.progress.best_modality.clone(),
        ..p.trainer.checkpoint_state(epoch + 1, p.progress.best_epoch)
    };
    checkpoint::save_epoch(run_dir, &p.trainer, &state, epoch, is_best, events)
}

/// Tests the best weights on the test split (saving each case's prediction for review), writes
/// `metrics.json` and emits `finished`.
fn test_and_finish(
    mut p: Prepared,
    run_dir: &Path,
    started: Instant,
    events: &EventSink,
) -> Result<RunMetrics> {
    let cfg = p.trainer.cfg.clone();
    // The sampler's worker and buffers are not needed for the test.
    drop(p.loader);
    let test = if p.split.test.is_empty() {
        None
    } else {
        let state = checkpoint::load_weights(run_dir, "best", &mut p.trainer)?;
        tracing::info!(
            "testing the best checkpoint (epoch {}) on {} cases",
            state.best_epoch,
            p.split.test.len()
        );
        Some(evaluate_saving_predictions(
            &p.trainer.predictor(),
            &p.split.test,
            p.trainer.classifiers.is_some(),
            &RunDir::new(run_dir).test_predictions(),
        )?)
    };
    let progress = p.progress;
    let metrics = RunMetrics {
        method: cfg.method.to_string(),
        preset: cfg.preset.clone(),
        best_epoch: progress.best_epoch,
        best_val_dice: progress.best.clone(),
        best_val_modality_dice: progress.best_modality,
        test: test.clone(),
        epochs_completed: cfg.epochs,
        seconds: started.elapsed().as_secs_f64(),
        balance_stats: p.trainer.tracker.stats.clone(),
        balance_diagnostics: p.trainer.balance_diagnostics(false),
    };
    checkpoint::write_json_atomic(&RunDir::new(run_dir).metrics(), &metrics)?;
    events.emit(&Event::Finished {
        time: now(),
        best_epoch: progress.best_epoch,
        best_val_dice: progress.best.unwrap_or_default(),
        test_dice: test.as_ref().map(|t| t.dice.clone()),
        test_metrics: test
            .as_ref()
            .map(|t| dice_metrics(&t.dice))
            .unwrap_or_default(),
        test_modality_dice: test.map(|t| t.modality_dice).unwrap_or_default(),
    });
    Ok(metrics)
}

/// prepare -> epochs (train, validate, checkpoint) -> test.
fn train_inner(
    cfg: &mut TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<RunMetrics>> {
    let started = Instant::now();
    let mut p = prepare(cfg, run_dir, opts)?;
    let spe = p.steps_per_epoch;
    events.emit(&Event::RunStarted {
        time: now(),
        config: serde_json::to_value(&*cfg)?,
        train_cases: p.split.train.len(),
        val_cases: p.split.val.len(),
        test_cases: p.split.test.len(),
        steps_per_epoch: spe,
        total_steps: spe * cfg.epochs,
        device: describe(p.trainer.device),
        task: cfg.task,
        modalities: p.names.clone(),
    });
    for epoch in p.progress.start_epoch..cfg.epochs {
        let train_loss = train_epoch(&mut p, epoch, events)?;
        if let Some(event) = p.trainer.balance_diagnostics_event(epoch) {
            events.emit(&event);
        }
        let is_best = validate(&mut p, epoch, train_loss, events)?;
        save_checkpoints(&p, run_dir, epoch, is_best, events)?;
        let done = epoch + 1;
        if opts.stop_after_epochs.is_some_and(|n| done >= n) && done < cfg.epochs {
            tracing::info!("stopping after epoch {done} as asked; continue with --resume");
            return Ok(None);
        }
    }
    test_and_finish(p, run_dir, started, events).map(Some)
}
