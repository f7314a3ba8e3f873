//! Classification and regression on a feature dataset as a task of the one run loop
//! (`run_loop`): the dataset's three splits, shuffled batches, whole-split evaluation
//! (`eval_features`) and `metrics.json` with the task's metrics.

use crate::checkpoint::CheckpointState;
use crate::config::TrainConfig;
use crate::data::features::DatasetSpec;
use crate::device::parse_device;
pub use crate::eval_features::{evaluate_features, input_of, FeatureEvalReport};
use crate::events::{now, Event, EventSink, RegionScores};
use crate::features_data::FeatureSplit;
use crate::model::features::FeatureNet;
use crate::model::Model;
use crate::run_loop::{self, RunSummary, SplitSizes, TaskRun, TrainOptions};
use crate::step::{StepReport, Trainer};
use crate::task::TaskKind;
use anyhow::{anyhow, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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

/// Trains `cfg` (a feature dataset in `cfg.data`) into `run_dir`; a failure is also reported as
/// a `failed` event. The run's task is the dataset's. Returns `None` when stopped early by
/// `stop_after_epochs`.
pub fn train_features(
    mut cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<FeatureRunMetrics>> {
    let configured = DatasetSpec::read(&cfg.data)
        .map_err(anyhow::Error::from)
        .and_then(|spec| cfg.train_task(spec.task).map_err(|e| anyhow!("{e}")));
    if let Err(e) = configured {
        return events.report_failure(Err(e));
    }
    run_loop::run::<FeatureRun>(cfg, run_dir, events, opts)
}

/// A feature run's data: the dataset's description and its three splits, loaded with the
/// modalities the configuration chooses.
pub struct FeatureRun {
    spec: DatasetSpec,
    train: FeatureSplit,
    valid: FeatureSplit,
    test: FeatureSplit,
    /// This epoch's shuffled order of the training samples (drawn at its first step).
    order: Vec<i64>,
}

impl FeatureRun {
    /// The order of `epoch`'s samples: it depends only on the seed and the epoch, so a resumed
    /// run sees the same batches.
    fn shuffle(&mut self, seed: u64, epoch: usize) {
        self.order = (0..self.train.n as i64).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9).wrapping_add(epoch as u64),
        );
        self.order.shuffle(&mut rng);
    }
}

impl TaskRun for FeatureRun {
    type Net = FeatureNet;
    type Report = FeatureEvalReport;
    type Metrics = FeatureRunMetrics;

    fn prepare(cfg: &TrainConfig, _run_dir: &Path) -> Result<(Self, Trainer<FeatureNet>)> {
        let spec = DatasetSpec::read(&cfg.data)?;
        let chosen = cfg
            .feature_modalities(&spec.names())
            .map_err(anyhow::Error::msg)?;
        let load = |split: &str| FeatureSplit::load(&cfg.data, &spec, split, &chosen);
        let (train, valid, test) = (load("train")?, load("valid")?, load("test")?);
        if train.n == 0 {
            anyhow::bail!(
                "the train split of {} has no sample: a run needs training samples",
                cfg.data.display()
            );
        }
        let steps_per_epoch = cfg
            .steps_per_epoch
            .unwrap_or_else(|| cfg.default_steps_per_epoch(train.n))
            .max(1);
        let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
        let model = Model::features(cfg.clone(), &spec, device)?;
        let run = Self {
            spec,
            train,
            valid,
            test,
            order: Vec::new(),
        };
        Ok((run, Trainer::new(model, steps_per_epoch)))
    }

    fn split_sizes(&self) -> SplitSizes {
        SplitSizes {
            train: self.train.n,
            val: self.valid.n,
            test: self.test.n,
        }
    }

    fn train_step(
        &mut self,
        trainer: &mut Trainer<FeatureNet>,
        epoch: usize,
        step: usize,
    ) -> Result<StepReport> {
        if step == 0 {
            self.shuffle(trainer.model.cfg.seed, epoch);
        }
        let order = &self.order;
        let bs = trainer.model.cfg.sampler.batch_size;
        let start = (step * bs) % order.len();
        let idx: Vec<i64> = (0..bs.min(order.len()))
            .map(|k| order[(start + k) % order.len()])
            .collect();
        let batch = self.train.batch(&idx, trainer.model.device);
        Ok(trainer.step(&input_of(&batch), &batch.labels)?)
    }

    fn validate(&mut self, model: &Model<FeatureNet>) -> Result<FeatureEvalReport> {
        let report = evaluate_features(model, &self.valid, &self.spec);
        tracing::info!("validation {:?}", report.metrics);
        Ok(report)
    }

    fn selection_score(report: &FeatureEvalReport) -> f64 {
        report.selection_score()
    }

    fn validation_event(
        report: &FeatureEvalReport,
        epoch: usize,
        train_loss: f64,
        best: bool,
    ) -> Event {
        Event::Validation {
            time: now(),
            epoch,
            train_loss,
            dice: RegionScores::default(),
            hd95: RegionScores::default(),
            modality_dice: BTreeMap::new(),
            best,
            metrics: report.metrics.clone(),
            modality_metrics: report.modality_metrics.clone(),
        }
    }

    fn test(
        &mut self,
        model: &Model<FeatureNet>,
        _run_dir: &Path,
    ) -> Result<Option<FeatureEvalReport>> {
        Ok(Some(evaluate_features(model, &self.test, &self.spec)))
    }

    fn store_best(best: Option<&FeatureEvalReport>, state: &mut CheckpointState) {
        state.best_val_report = best.cloned();
    }

    fn restore_best(state: &CheckpointState) -> Option<FeatureEvalReport> {
        state.best_val_report.clone()
    }

    fn finish(&self, summary: RunSummary<FeatureEvalReport>) -> (FeatureRunMetrics, Event) {
        let cfg = &summary.cfg;
        let test_metrics = summary
            .test
            .as_ref()
            .map(|t| t.metrics.clone())
            .unwrap_or_default();
        let finished = Event::Finished {
            time: now(),
            best_epoch: summary.best_epoch,
            best_val_dice: RegionScores::default(),
            test_dice: None,
            test_modality_dice: BTreeMap::new(),
            test_metrics,
        };
        let metrics = FeatureRunMetrics {
            task: cfg.task,
            method: cfg.method.to_string(),
            preset: cfg.preset.clone(),
            best_epoch: summary.best_epoch,
            best_val: summary.best,
            test: summary.test,
            epochs_completed: cfg.epochs,
            seconds: summary.seconds,
            mean_balance: summary.mean_balance,
            balance_stats: summary.balance_stats,
            balance_diagnostics: summary.balance_diagnostics,
        };
        (metrics, finished)
    }
}
