//! Segmentation as a task of the one run loop (`run_loop`): its split of NIfTI cases, the
//! sampled slice batches, 3-D evaluation of whole cases, and `metrics.json` with region Dice.

use crate::checkpoint::CheckpointState;
use crate::config::{EpsSource, TrainConfig};
use crate::data::{
    discover, read_saved_split, resolve_saved_split, split_cases, split_from_file,
    write_saved_split, Augmentation, CaseSource, SamplerConfig, SliceBatch, SliceLoader, Split,
};
use crate::device::parse_device;
use crate::eval::{evaluate, evaluate_saving_predictions, EvalReport};
use crate::events::{now, Event, EventSink, RegionScores};
use crate::model::Model;
pub use crate::run_loop::TrainOptions;
use crate::run_loop::{self, RunSummary, SplitSizes, TaskRun};
use crate::rundir::RunDir;
use crate::step::Trainer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
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
    /// Mean B_i over all training steps, per modality (1.0 when the method does not modulate).
    #[serde(default)]
    pub mean_balance: BTreeMap<String, f64>,
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
        .unwrap_or_else(|| cfg.default_steps_per_epoch(train_cases))
        .max(1)
}

/// Host batch -> (images [B,4,H,W] float, labels [B,H,W] int64) on the device.
/// `cggm.eps_source = probe`: one batch of tumour slices of the validation cases, drawn once
/// with the run's seed and without augmentation, on which every step measures eps_i.
fn probe_batch(
    cfg: &TrainConfig,
    val_cases: &[CaseSource],
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let sampler = SamplerConfig {
        batch_size: cfg.cggm.probe_size,
        tumour_fraction: 1.0,
        rotate90: false,
        flip: false,
        noise_std: 0.0,
        augmentation: Augmentation::Project,
        case_sweep: false,
        workers: 0,
        ..cfg.sampler.clone()
    };
    // A stream of its own: the training batches stay those of the same run without a probe.
    let mut loader = SliceLoader::new(val_cases, sampler, cfg.seed ^ 0x05ee_d0f9_e0be, 0)
        .context("preparing the probe batch (cggm.eps_source = probe) from the validation cases")?;
    let batch = loader.next_batch()?;
    Ok(batch_tensors(&batch, device))
}

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

/// Segmentation's task metrics by name, for the events' `metrics` maps.
pub fn dice_metrics(d: &RegionScores) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("dice_wt".to_string(), d.wt),
        ("dice_tc".to_string(), d.tc),
        ("dice_et".to_string(), d.et),
        ("dice_mean".to_string(), d.mean),
    ])
}

/// Trains `cfg` (a NIfTI dataset in `cfg.data`) into `run_dir`. Returns `None` when stopped
/// early by `stop_after_epochs`.
pub fn train(
    cfg: TrainConfig,
    run_dir: &Path,
    events: &EventSink,
    opts: &TrainOptions,
) -> Result<Option<RunMetrics>> {
    run_loop::run::<SegmentationRun>(cfg, run_dir, events, opts)
}

/// A segmentation run's data: its split, the validation cases and the slice sampler.
pub struct SegmentationRun {
    split: Split,
    /// The validation cases used (`val_cases` may cap the split's).
    val_cases: Vec<CaseSource>,
    /// Started once the trainer's step is known ([`TaskRun::start`]); dropped before the test.
    loader: Option<SliceLoader>,
    cfg: TrainConfig,
}

impl TaskRun for SegmentationRun {
    type Net = crate::model::MultimodalSegmenter;
    type Report = EvalReport;
    type Metrics = RunMetrics;

    fn prepare(cfg: &TrainConfig, run_dir: &Path) -> Result<(Self, Trainer)> {
        let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
        let split = run_split(cfg, run_dir, true)?;
        if split.train.is_empty() {
            bail!(
                "the split left no training case: add cases or lower the validation/test fractions"
            );
        }
        let val_cases: Vec<_> = match cfg.val_cases {
            Some(n) => split.val.iter().take(n).cloned().collect(),
            None => split.val.clone(),
        };
        // Without a validation case no checkpoint can be chosen and every score is NaN: refuse
        // rather than "succeed" with a model nobody can judge.
        if val_cases.is_empty() {
            bail!(
                "the split left no validation case ({} usable case(s), val_cases {:?}): a run \
                 needs at least one case to validate on, so at least 2 usable cases; add cases \
                 (see `cggm validate`), give a split file with a \"val\" case, or set val_cases \
                 to 1 or more",
                split.train.len() + split.val.len() + split.test.len(),
                cfg.val_cases
            );
        }
        let spe = steps_per_epoch(cfg, split.train.len());
        let mut trainer = Trainer::new(Model::segmentation(cfg.clone(), device), spe);
        if cfg.cggm.eps_source == EpsSource::Probe && trainer.model.classifiers.is_some() {
            trainer.probe = Some(probe_batch(cfg, &val_cases, device)?);
        }
        let run = Self {
            split,
            val_cases,
            loader: None,
            cfg: cfg.clone(),
        };
        Ok((run, trainer))
    }

    fn start(&mut self, trainer: &Trainer) -> Result<()> {
        // The sampler's stream continues where the restored step left it.
        let loader = SliceLoader::new(
            &self.split.train,
            self.cfg.sampler.clone(),
            self.cfg.seed,
            trainer.global_step as u64,
        )
        .context("preparing the training slices")?;
        self.loader = Some(loader);
        Ok(())
    }

    fn split_sizes(&self) -> SplitSizes {
        SplitSizes {
            train: self.split.train.len(),
            val: self.split.val.len(),
            test: self.split.test.len(),
        }
    }

    fn train_step(
        &mut self,
        trainer: &mut Trainer,
        _epoch: usize,
        _step: usize,
    ) -> Result<crate::step::StepReport> {
        let loader = self
            .loader
            .as_mut()
            .context("the sampler was not started")?;
        let batch = loader.next_batch()?;
        let (images, labels) = batch_tensors(&batch, trainer.model.device);
        Ok(trainer.step(&images, &labels)?)
    }

    fn validate(&mut self, model: &Model) -> Result<EvalReport> {
        let report = evaluate(
            &model.predictor(),
            &self.val_cases,
            model.classifiers.is_some(),
        )?;
        let d = &report.dice;
        tracing::info!(
            "validation Dice WT {:.4} TC {:.4} ET {:.4} mean {:.4}",
            d.wt,
            d.tc,
            d.et,
            d.mean
        );
        Ok(report)
    }

    fn selection_score(report: &EvalReport) -> f64 {
        report.dice.mean
    }

    fn validation_event(report: &EvalReport, epoch: usize, train_loss: f64, best: bool) -> Event {
        Event::Validation {
            time: now(),
            epoch,
            train_loss,
            dice: report.dice.clone(),
            hd95: report.hd95.clone(),
            modality_dice: report.modality_dice.clone(),
            best,
            metrics: dice_metrics(&report.dice),
            modality_metrics: report
                .modality_dice
                .iter()
                .map(|(m, d)| (m.clone(), dice_metrics(d)))
                .collect(),
        }
    }

    fn test(&mut self, model: &Model, run_dir: &Path) -> Result<Option<EvalReport>> {
        // The sampler's worker and buffers are not needed for the test.
        self.loader = None;
        if self.split.test.is_empty() {
            return Ok(None);
        }
        tracing::info!("testing on {} cases", self.split.test.len());
        Ok(Some(evaluate_saving_predictions(
            &model.predictor(),
            &self.split.test,
            model.classifiers.is_some(),
            &RunDir::new(run_dir).test_predictions(),
        )?))
    }

    fn store_best(best: Option<&EvalReport>, state: &mut CheckpointState) {
        if let Some(best) = best {
            state.best_val_dice = Some(best.dice.clone());
            state.best_val_modality_dice = best.modality_dice.clone();
        }
    }

    fn restore_best(state: &CheckpointState) -> Option<EvalReport> {
        state.best_val_dice.as_ref().map(|dice| EvalReport {
            dice: dice.clone(),
            modality_dice: state.best_val_modality_dice.clone(),
            ..EvalReport::default()
        })
    }

    fn finish(&self, summary: RunSummary<EvalReport>) -> (RunMetrics, Event) {
        let cfg = &summary.cfg;
        let best = summary.best.as_ref();
        let test = summary.test;
        let finished = Event::Finished {
            time: now(),
            best_epoch: summary.best_epoch,
            best_val_dice: best.map(|b| b.dice.clone()).unwrap_or_default(),
            test_dice: test.as_ref().map(|t| t.dice.clone()),
            test_metrics: test
                .as_ref()
                .map(|t| dice_metrics(&t.dice))
                .unwrap_or_default(),
            test_modality_dice: test
                .as_ref()
                .map(|t| t.modality_dice.clone())
                .unwrap_or_default(),
        };
        let metrics = RunMetrics {
            method: cfg.method.to_string(),
            preset: cfg.preset.clone(),
            best_epoch: summary.best_epoch,
            best_val_dice: best.map(|b| b.dice.clone()),
            best_val_modality_dice: best.map(|b| b.modality_dice.clone()).unwrap_or_default(),
            test,
            epochs_completed: cfg.epochs,
            seconds: summary.seconds,
            balance_stats: summary.balance_stats,
            balance_diagnostics: summary.balance_diagnostics,
            mean_balance: summary.mean_balance,
        };
        (metrics, finished)
    }
}
