//! The one run loop of every task: claim the run directory -> prepare (the task's data and
//! trainer; restored from the last checkpoint on `--resume`) -> epochs (train, validate every
//! `val_every` epochs and at the last, save `last` and maybe `best`, the `--stop-after-epochs`
//! check) -> test with the best weights -> `metrics.json` and `finished`.
//!
//! A task (segmentation in `run`, classification and regression in `run_features`) brings only
//! what differs through [`TaskRun`]: its batches, its evaluation and selection score, and the
//! shape of its reports. Checkpointing, resuming, the stop check and the step events are written
//! once here, so the tasks cannot drift apart.

use crate::checkpoint::{self, CheckpointState};
use crate::config::TrainConfig;
use crate::device::describe;
use crate::events::{now, Event, EventSink};
use crate::model::network::MultimodalNetwork;
use crate::model::Model;
use crate::rundir::RunDir;
use crate::step::{StepReport, Trainer};
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from `checkpoints/last` with the same schedule (the saved config must match).
    pub resume: bool,
    /// Stop (as if interrupted) once this many epochs of the schedule are done.
    pub stop_after_epochs: Option<usize>,
}

/// How many examples each split of a run holds (for `run_started`).
pub struct SplitSizes {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// What a task brings to the run loop.
pub trait TaskRun: Sized {
    type Net: MultimodalNetwork;
    /// A validation or test report.
    type Report: Clone;
    /// What `metrics.json` holds.
    type Metrics: Serialize;

    /// The task's data and a fresh trainer for `cfg` (already validated, the run directory
    /// claimed).
    fn prepare(cfg: &TrainConfig, run_dir: &Path) -> Result<(Self, Trainer<Self::Net>)>;
    /// Called once the trainer holds its final step counter (after a resume), before the first
    /// step: a sampler whose stream depends on the step starts here.
    fn start(&mut self, _trainer: &Trainer<Self::Net>) -> Result<()> {
        Ok(())
    }
    fn split_sizes(&self) -> SplitSizes;
    /// The step of the `step`-th batch of `epoch`, on the task's next batch.
    fn train_step(
        &mut self,
        trainer: &mut Trainer<Self::Net>,
        epoch: usize,
        step: usize,
    ) -> Result<StepReport>;
    /// Scores `model` on the validation split.
    fn validate(&mut self, model: &Model<Self::Net>) -> Result<Self::Report>;
    /// Higher is better: the run keeps the weights with the highest.
    fn selection_score(report: &Self::Report) -> f64;
    /// The `validation` event of a report.
    fn validation_event(report: &Self::Report, epoch: usize, train_loss: f64, best: bool) -> Event;
    /// Scores the best weights on the test split (None without one); the sampler may be dropped.
    fn test(&mut self, model: &Model<Self::Net>, run_dir: &Path) -> Result<Option<Self::Report>>;
    /// Writes the best report into a checkpoint's record.
    fn store_best(best: Option<&Self::Report>, state: &mut CheckpointState);
    /// Reads the best report back from a checkpoint's record.
    fn restore_best(state: &CheckpointState) -> Option<Self::Report>;
    /// `metrics.json` and the `finished` event of the finished run.
    fn finish(&self, summary: RunSummary<Self::Report>) -> (Self::Metrics, Event);
}

/// Where a run stands: the start of a new run, or what the last checkpoint recorded.
struct Progress<R> {
    /// Epochs already done.
    start_epoch: usize,
    best_epoch: usize,
    best: Option<R>,
    /// Sum of each modality's B_i over the steps done (their mean is reported).
    balance_sum: Vec<f64>,
}

/// What the loop hands the task to report at the end.
pub struct RunSummary<R> {
    pub cfg: TrainConfig,
    pub best_epoch: usize,
    pub best: Option<R>,
    pub test: Option<R>,
    pub seconds: f64,
    /// Mean B_i over the run's steps, per modality (1.0 when the method does not modulate).
    pub mean_balance: BTreeMap<String, f64>,
    pub balance_stats: crate::cggm::BalanceStats,
    pub balance_diagnostics: Option<crate::cggm::BalanceDiagnostics>,
}

/// A modality vector as a map by name, without the non-finite entries (a modality without a
/// classifier reports NaN).
pub fn by_modality(names: &[String], values: &[f64]) -> BTreeMap<String, f64> {
    names
        .iter()
        .cloned()
        .zip(values.iter().copied())
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Trains `cfg` into `run_dir` as task `T`; a failure is also reported as a `failed` event.
/// Returns `None` when stopped early by `stop_after_epochs`.
pub fn run<T: TaskRun>(
    cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<T::Metrics>> {
    events.report_failure(run_inner::<T>(cfg, run_dir, events, opts))
}

/// Checks the configuration and claims the run directory: one process per run directory (the
/// returned lock is held for the whole run), `config.json` written or, on resume, matched.
fn claim(cfg: &TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<std::fs::File> {
    cfg.validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let lock = checkpoint::lock_run_dir(run_dir)?;
    checkpoint::claim_run_dir(run_dir, cfg, opts.resume)?;
    if !opts.resume {
        // A new run in a reused directory draws its split afresh.
        let _ = std::fs::remove_file(run_dir.join(crate::data::SPLIT_FILE_NAME));
    }
    Ok(lock)
}

fn run_inner<T: TaskRun>(
    cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<T::Metrics>> {
    let started = Instant::now();
    let _lock = claim(&cfg, run_dir, opts)?;
    let (mut task, mut trainer) = T::prepare(&cfg, run_dir)?;
    if let (Some(source), false) = (&cfg.init_from, opts.resume) {
        // A resumed run's weights come from its own checkpoint, not from the source again.
        init_from(source, &mut trainer)?;
    }
    let mut progress = resume_progress::<T>(&mut trainer, opts.resume, run_dir)?;
    task.start(&trainer)?;
    events.emit(&run_started(&cfg, &task, &trainer)?);
    for epoch in progress.start_epoch..cfg.epochs {
        let train_loss = train_epoch(&mut task, &mut trainer, &mut progress, epoch, events)?;
        if let Some(event) = trainer.balance_diagnostics_event(epoch) {
            events.emit(&event);
        }
        let is_best = validate(
            &mut task,
            &trainer,
            &mut progress,
            epoch,
            train_loss,
            events,
        )?;
        save_checkpoints::<T>(&trainer, &progress, run_dir, epoch, is_best, events)?;
        let done = epoch + 1;
        if opts.stop_after_epochs.is_some_and(|n| done >= n) && done < cfg.epochs {
            tracing::info!("stopping after epoch {done} as asked; continue with --resume");
            return Ok(None);
        }
    }
    let test = test_best(&mut task, &mut trainer, run_dir)?;
    let summary = summary(cfg, &mut trainer, progress, test, started);
    let (metrics, finished) = task.finish(summary);
    checkpoint::write_json_atomic(&RunDir::new(run_dir).metrics(), &metrics)?;
    events.emit(&finished);
    Ok(Some(metrics))
}

/// Initialises a new run's model from the run or checkpoint `source` (`init_from`).
fn init_from<N: MultimodalNetwork>(source: &Path, trainer: &mut Trainer<N>) -> Result<()> {
    let from = crate::fine_tune::init_from(source, &mut trainer.model)?;
    tracing::info!(
        "initialised from {} ({} checkpoint, epoch {}; classifiers {})",
        source.display(),
        from.checkpoint,
        from.epoch,
        if from.classifiers { "too" } else { "fresh" }
    );
    Ok(())
}

/// Where the run starts: what `checkpoints/last` recorded (`--resume`, the trainer restored
/// from it), else a new run's start.
fn resume_progress<T: TaskRun>(
    trainer: &mut Trainer<T::Net>,
    resume: bool,
    run_dir: &Path,
) -> Result<Progress<T::Report>> {
    let modalities = trainer.model.modality_names.len();
    Ok(match trainer.resume_if(resume, run_dir)? {
        Some(state) => Progress {
            start_epoch: state.epoch,
            best_epoch: state.best_epoch,
            best: T::restore_best(&state),
            balance_sum: if state.balance_sum.len() == modalities {
                state.balance_sum
            } else {
                vec![0.0; modalities]
            },
        },
        None => Progress {
            start_epoch: 0,
            best_epoch: 0,
            best: None,
            balance_sum: vec![0.0; modalities],
        },
    })
}

/// The `run_started` event: the configuration, the split sizes, the schedule and the device.
fn run_started<T: TaskRun>(
    cfg: &TrainConfig,
    task: &T,
    trainer: &Trainer<T::Net>,
) -> Result<Event> {
    let spe = trainer.steps_per_epoch;
    let sizes = task.split_sizes();
    Ok(Event::RunStarted {
        time: now(),
        config: serde_json::to_value(cfg)?,
        train_cases: sizes.train,
        val_cases: sizes.val,
        test_cases: sizes.test,
        steps_per_epoch: spe,
        total_steps: spe * cfg.epochs,
        device: format!(
            "{}, {}",
            describe(trainer.model.device),
            match trainer.amp() {
                None => "fp32",
                Some(crate::amp::AmpDtype::Bf16) => "bf16 autocast",
                Some(crate::amp::AmpDtype::Fp16) => "fp16 autocast + loss scaling",
            }
        ),
        task: cfg.task,
        modalities: trainer.model.modality_names.clone(),
    })
}

/// What the finished run reports: the best and test reports, the time, and B over the run.
fn summary<N: MultimodalNetwork, R>(
    cfg: TrainConfig,
    trainer: &mut Trainer<N>,
    progress: Progress<R>,
    test: Option<R>,
    started: Instant,
) -> RunSummary<R> {
    let steps = (trainer.steps_per_epoch * cfg.epochs).max(1) as f64;
    let mean: Vec<f64> = progress.balance_sum.iter().map(|s| s / steps).collect();
    RunSummary {
        best_epoch: progress.best_epoch,
        best: progress.best,
        test,
        seconds: started.elapsed().as_secs_f64(),
        mean_balance: by_modality(&trainer.model.modality_names, &mean),
        balance_stats: trainer.tracker.stats.clone(),
        balance_diagnostics: trainer.balance_diagnostics(false),
        cfg,
    }
}

/// One epoch of the task's batches; returns the mean loss and adds each step's B to the sum.
fn train_epoch<T: TaskRun>(
    task: &mut T,
    trainer: &mut Trainer<T::Net>,
    progress: &mut Progress<T::Report>,
    epoch: usize,
    events: &EventSink,
) -> Result<f64> {
    let spe = trainer.steps_per_epoch;
    let mut loss_sum = 0.0;
    for step in 0..spe {
        let t0 = Instant::now();
        let report = task.train_step(trainer, epoch, step)?;
        loss_sum += report.loss;
        for (s, b) in progress.balance_sum.iter_mut().zip(&report.balance) {
            *s += b;
        }
        let names = &trainer.model.modality_names;
        events.emit(&Event::Step {
            time: now(),
            epoch,
            step: trainer.global_step - 1,
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

/// Validates after epoch `epoch` when the schedule says so (every `val_every` epochs and the
/// last); returns whether these weights are the best so far.
fn validate<T: TaskRun>(
    task: &mut T,
    trainer: &Trainer<T::Net>,
    progress: &mut Progress<T::Report>,
    epoch: usize,
    train_loss: f64,
    events: &EventSink,
) -> Result<bool> {
    let done = epoch + 1;
    let cfg = &trainer.model.cfg;
    if !done.is_multiple_of(cfg.val_every) && done != cfg.epochs {
        return Ok(false);
    }
    let report = task.validate(&trainer.model)?;
    let score = T::selection_score(&report);
    let is_best = progress
        .best
        .as_ref()
        .is_none_or(|b| score > T::selection_score(b));
    events.emit(&T::validation_event(&report, epoch, train_loss, is_best));
    if is_best {
        progress.best = Some(report);
        progress.best_epoch = done;
    }
    Ok(is_best)
}

/// Saves `last` after every epoch (a resume continues from any epoch), and `best` when these
/// weights are the best so far.
fn save_checkpoints<T: TaskRun>(
    trainer: &Trainer<T::Net>,
    progress: &Progress<T::Report>,
    run_dir: &Path,
    epoch: usize,
    is_best: bool,
    events: &EventSink,
) -> Result<()> {
    let mut state = CheckpointState {
        balance_sum: progress.balance_sum.clone(),
        ..trainer.checkpoint_state(epoch + 1, progress.best_epoch)
    };
    T::store_best(progress.best.as_ref(), &mut state);
    checkpoint::save_epoch(run_dir, trainer, &state, epoch, is_best, events)
}

/// Loads the best weights and tests them on the task's test split.
fn test_best<T: TaskRun>(
    task: &mut T,
    trainer: &mut Trainer<T::Net>,
    run_dir: &Path,
) -> Result<Option<T::Report>> {
    let state = checkpoint::load_weights(run_dir, "best", &mut trainer.model)
        .context("loading the best checkpoint for the test split")?;
    tracing::info!("testing the best checkpoint (epoch {})", state.best_epoch);
    task.test(&trainer.model, run_dir)
}
