//! Progress events, written as JSON lines by `cggm train` / `cggm infer` and read by the server.
//!
//! One JSON object per line, tagged by `"event"`. Every event carries `time` (seconds since the Unix
//! epoch). The schema is documented in the README ("Progress events"); add fields, never rename.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Dice (or HD95) per BraTS region and their mean.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionScores {
    pub wt: f64,
    pub tc: f64,
    pub et: f64,
    pub mean: f64,
}

impl RegionScores {
    pub fn new(wt: f64, tc: f64, et: f64) -> Self {
        Self {
            wt,
            tc,
            et,
            mean: (wt + tc + et) / 3.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run started; `config` is the full run configuration (see `TrainConfig`).
    RunStarted {
        time: f64,
        config: serde_json::Value,
        train_cases: usize,
        val_cases: usize,
        test_cases: usize,
        steps_per_epoch: usize,
        total_steps: usize,
        device: String,
        /// segmentation, classification or regression (absent in older logs: segmentation).
        #[serde(default)]
        task: crate::task::TaskKind,
        /// The modalities the model trains, in its order (the dataset's order for feature runs):
        /// the order pages list per-modality scores in (absent in older logs).
        #[serde(default)]
        modalities: Vec<String>,
    },
    /// One optimisation step. Maps are keyed by modality name (flair, t1ce, t1, t2) and hold only
    /// the modalities the run trains.
    Step {
        time: f64,
        epoch: usize,
        step: usize,
        loss: f64,
        task_loss: f64,
        gm_loss: f64,
        lr: f64,
        /// Balance coefficients B_i (1.0 for every modality when the method does not modulate).
        balance: BTreeMap<String, f64>,
        /// cos(g_F, g_i) between the fusion head's gradient and classifier i's gradient.
        cosine: BTreeMap<String, f64>,
        /// Per-modality classifier metric on this batch: mean Dice of ET/TC/WT (segmentation),
        /// accuracy (classification), Acc-2 (regression).
        modality_metric: BTreeMap<String, f64>,
        step_seconds: f64,
        /// 1 when the balance guard set every B_i to the neutral rho(M-1)/M on this step (the
        /// modalities' improvements did not sum to a clearly positive number), else 0.
        #[serde(default)]
        balance_guarded: usize,
        /// How many B_i the guard pinned at 0 or rho on this step (a share outside [0, 1]).
        #[serde(default)]
        balance_clamped: usize,
        /// The baseline's coefficient per modality (OGM-GE, AGM: encoder gradient scale; PMR:
        /// weight of the prototypical loss); empty for other methods.
        #[serde(default)]
        baseline_coefficients: BTreeMap<String, f64>,
    },
    /// Per-epoch validation, 3-D per case, averaged over the validation cases.
    Validation {
        time: f64,
        epoch: usize,
        train_loss: f64,
        dice: RegionScores,
        hd95: RegionScores,
        /// Dice of each modality's own classifier (the paper's Table 5 view).
        modality_dice: BTreeMap<String, RegionScores>,
        best: bool,
        /// The task's metrics by name: `dice_wt`, `dice_tc`, `dice_et`, `dice_mean`
        /// (segmentation); `accuracy`, `f1_weighted`, `f1_macro` (classification); `mae`,
        /// `corr`, `acc2`, `f1`, `acc2_nonzero`, `f1_nonzero`, `acc7` (regression). Feature runs
        /// leave `dice`, `hd95` and `modality_dice` at zero / empty.
        #[serde(default)]
        metrics: BTreeMap<String, f64>,
        /// The same metrics of each modality's own classifier, keyed by modality.
        #[serde(default)]
        modality_metrics: BTreeMap<String, BTreeMap<String, f64>>,
    },
    /// B's signal-to-noise diagnostics of the run so far, after each epoch of a run with
    /// classifiers (the window is that epoch); `step` counts the steps done.
    BalanceDiagnostics {
        time: f64,
        epoch: usize,
        step: usize,
        diagnostics: crate::balance::BalanceDiagnostics,
    },
    CheckpointSaved {
        time: f64,
        epoch: usize,
        path: String,
        best: bool,
    },
    /// Inference progress (`cggm infer`): fraction in 0..=1.
    Progress {
        time: f64,
        stage: String,
        fraction: f64,
    },
    Finished {
        time: f64,
        best_epoch: usize,
        best_val_dice: RegionScores,
        test_dice: Option<RegionScores>,
        test_modality_dice: BTreeMap<String, RegionScores>,
        /// The task's test metrics by name (see `Validation::metrics`); empty without a test split.
        #[serde(default)]
        test_metrics: BTreeMap<String, f64>,
    },
    Failed {
        time: f64,
        reason: String,
    },
}

/// An event's tag (`"event"` in the JSON, `events.kind` in the server's database): the names the
/// server's SQL compares with, from one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    RunStarted,
    Step,
    Validation,
    BalanceDiagnostics,
    CheckpointSaved,
    Progress,
    Finished,
    Failed,
}

impl EventKind {
    /// The tag serde writes for the variant (`rename_all = "snake_case"` of [`Event`]).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunStarted => "run_started",
            EventKind::Step => "step",
            EventKind::Validation => "validation",
            EventKind::BalanceDiagnostics => "balance_diagnostics",
            EventKind::CheckpointSaved => "checkpoint_saved",
            EventKind::Progress => "progress",
            EventKind::Finished => "finished",
            EventKind::Failed => "failed",
        }
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::RunStarted { .. } => EventKind::RunStarted,
            Event::Step { .. } => EventKind::Step,
            Event::Validation { .. } => EventKind::Validation,
            Event::BalanceDiagnostics { .. } => EventKind::BalanceDiagnostics,
            Event::CheckpointSaved { .. } => EventKind::CheckpointSaved,
            Event::Progress { .. } => EventKind::Progress,
            Event::Finished { .. } => EventKind::Finished,
            Event::Failed { .. } => EventKind::Failed,
        }
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Something else that sees every event a sink emits, in order: the run trackers of
/// `cggm train --mlflow / --tensorboard` (the trainer's `tracking` module). It must return
/// quickly: it runs on the training thread.
pub trait Observer: Send + Sync {
    fn observe(&self, event: &Event);
}

/// Where events go: stdout, a file (appended, flushed per line), or nowhere; and to any observers
/// (for the CLI, a progress bar on stderr: `crate::progress::EventProgress`).
pub struct EventSink {
    out: Option<Mutex<Box<dyn Write + Send>>>,
    observers: Vec<Arc<dyn Observer>>,
}

impl EventSink {
    pub fn stdout() -> Self {
        Self {
            out: Some(Mutex::new(Box::new(std::io::stdout()))),
            observers: Vec::new(),
        }
    }

    pub fn none() -> Self {
        Self {
            out: None,
            observers: Vec::new(),
        }
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            out: Some(Mutex::new(Box::new(file))),
            observers: Vec::new(),
        })
    }

    /// `-` means stdout; `None` means no events.
    pub fn from_arg(arg: Option<&Path>) -> std::io::Result<Self> {
        match arg {
            None => Ok(Self::none()),
            Some(p) if p.as_os_str() == "-" => Ok(Self::stdout()),
            Some(p) => Self::file(p),
        }
    }

    /// Also hands every event to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Passes `result` on; an error is also reported as a `failed` event (the run's last word).
    pub fn report_failure<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(e) = &result {
            self.emit(&Event::Failed {
                time: now(),
                reason: format!("{e:#}"),
            });
        }
        result
    }

    pub fn emit(&self, event: &Event) {
        for observer in &self.observers {
            observer.observe(event);
        }
        let Some(out) = &self.out else { return };
        let Ok(line) = serde_json::to_string(event) else {
            return;
        };
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed pipe (the server went away) must not kill the run.
        let _ = writeln!(out, "{line}").and_then(|_| out.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Event::kind` names each variant as serde tags it, so SQL that compares `events.kind` with
    /// an `EventKind` finds what the server stored.
    #[test]
    fn every_event_kind_is_the_serde_tag() {
        let time = 1.0;
        let events = [
            Event::RunStarted {
                time,
                config: serde_json::Value::Null,
                train_cases: 0,
                val_cases: 0,
                test_cases: 0,
                steps_per_epoch: 0,
                total_steps: 0,
                device: "cpu".into(),
                task: Default::default(),
                modalities: Vec::new(),
            },
            Event::Step {
                time,
                epoch: 0,
                step: 0,
                loss: 0.0,
                task_loss: 0.0,
                gm_loss: 0.0,
                lr: 0.0,
                balance: BTreeMap::new(),
                cosine: BTreeMap::new(),
                modality_metric: BTreeMap::new(),
                step_seconds: 0.0,
                balance_guarded: 0,
                balance_clamped: 0,
                baseline_coefficients: BTreeMap::new(),
            },
            Event::Validation {
                time,
                epoch: 0,
                train_loss: 0.0,
                dice: RegionScores::default(),
                hd95: RegionScores::default(),
                modality_dice: BTreeMap::new(),
                best: false,
                metrics: BTreeMap::new(),
                modality_metrics: BTreeMap::new(),
            },
            Event::BalanceDiagnostics {
                time,
                epoch: 0,
                step: 0,
                diagnostics: Default::default(),
            },
            Event::CheckpointSaved {
                time,
                epoch: 0,
                path: String::new(),
                best: false,
            },
            Event::Progress {
                time,
                stage: String::new(),
                fraction: 0.0,
            },
            Event::Finished {
                time,
                best_epoch: 0,
                best_val_dice: RegionScores::default(),
                test_dice: None,
                test_modality_dice: BTreeMap::new(),
                test_metrics: BTreeMap::new(),
            },
            Event::Failed {
                time,
                reason: String::new(),
            },
        ];
        let mut kinds = std::collections::HashSet::new();
        for event in &events {
            let tag = serde_json::to_value(event).unwrap()["event"].clone();
            assert_eq!(tag, event.kind().as_str(), "{event:?}");
            kinds.insert(event.kind());
        }
        assert_eq!(kinds.len(), events.len(), "one event of each kind");
    }
}
