//! Runs out: a training run's parameters, metrics and end logged to an MLflow tracking server
//! (`cggm train --mlflow URI`) and to TensorBoard event files (`--tensorboard DIR`). The tracker
//! is an observer of the run's events (`events::Observer`), so every task and every run loop gets
//! it without a line of its own; this module turns events into params and scalars, one module per
//! backend writes them.
//!
//! Names (the README's "Runs out: MLflow and TensorBoard" lists them): per step (at the global
//! step) `loss`, `task_loss`, `gm_loss`, `lr`, `step_seconds`, `balance/<modality>`,
//! `cosine/<modality>`, `modality_metric/<modality>`, `baseline_coefficient/<modality>`; per
//! validation (at the epochs done) `val/train_loss`, `val/<metric>`, `val/hd95_<region>`,
//! `val/<modality>/<metric>`; at the end (at the epochs done) `test/<metric>`,
//! `test/<modality>/dice_<region>`, `best_epoch`, `best_val/dice_<region>`. Params: the run
//! configuration flattened with dots (`method`, `preset`, `optimizer.lr`, ...) and the run's
//! `task`, `device`, `modalities` and split sizes.

pub mod mlflow;
pub mod tensorboard;

use crate::events::{Event, Observer, RegionScores};
use anyhow::{Context, Result};
use mlflow::{Metric, MlflowRun, RunRef, Status};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The run folder's record of where the run is logged: a resumed run continues the same MLflow
/// run, and the server's pages can say where to look.
pub const TRACKING_FILE: &str = "tracking.json";

/// The flags of `cggm train` that turn tracking on (each with its environment variable, so that a
/// server started with them hands them to every training it starts).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TrackingArgs {
    /// Log the run to this MLflow tracking server (http://HOST:PORT, as `mlflow server` prints):
    /// params, metrics per step and validation, the test report and how the run ended. The
    /// server must answer when the run starts; later failures only warn.
    #[arg(long, env = "CGGM_MLFLOW_URI", value_name = "URI")]
    pub mlflow: Option<String>,
    /// The MLflow experiment the run goes into (created when missing).
    #[arg(
        long,
        env = "CGGM_MLFLOW_EXPERIMENT",
        default_value = "cggm-studio",
        value_name = "NAME"
    )]
    pub mlflow_experiment: String,
    /// Write TensorBoard event files into DIR/<run folder name> (open with
    /// `tensorboard --logdir DIR`).
    #[arg(long, env = "CGGM_TENSORBOARD_DIR", value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
}

/// What `tracking.json` holds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TrackingRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<RunRef>,
    /// The folder of this run's TensorBoard event files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorboard: Option<PathBuf>,
}

struct State {
    mlflow: Option<MlflowRun>,
    tensorboard: Option<tensorboard::EventWriter>,
    /// Epochs done, as last seen: the x of validation and test scalars.
    epochs_done: i64,
    ended: bool,
    /// `tracking.json` and its content, written once the run holds its folder (`run_started`
    /// comes after the run loop's claim: a run refused for a folder another run holds must not
    /// overwrite that run's record).
    record: Option<(PathBuf, TrackingRecord)>,
}

/// The tracker of one run (see the module's doc).
pub struct Tracker {
    state: Mutex<State>,
}

impl Tracker {
    /// Starts the backends `args` asks for (None when it asks for none) for the run in `run_dir`.
    /// With `resume`, the MLflow run recorded in the folder's `tracking.json` goes on.
    pub fn start(args: &TrackingArgs, run_dir: &Path, resume: bool) -> Result<Option<Arc<Self>>> {
        if args.mlflow.is_none() && args.tensorboard.is_none() {
            return Ok(None);
        }
        let name = run_name(run_dir);
        let record_path = run_dir.join(TRACKING_FILE);
        let earlier: TrackingRecord = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut record = TrackingRecord::default();
        let mlflow = match &args.mlflow {
            Some(uri) => {
                let tags = vec![
                    ("mlflow.runName".to_string(), name.clone()),
                    ("mlflow.source.name".to_string(), "cggm-studio".to_string()),
                    (
                        "cggm.run_dir".to_string(),
                        std::path::absolute(run_dir)
                            .unwrap_or_else(|_| run_dir.to_path_buf())
                            .display()
                            .to_string(),
                    ),
                ];
                let reopen = earlier.mlflow.as_ref().filter(|_| resume);
                let run = MlflowRun::start(uri, &args.mlflow_experiment, &name, &tags, reopen)?;
                record.mlflow = Some(run.run.clone());
                Some(run)
            }
            None => None,
        };
        let tensorboard = match &args.tensorboard {
            Some(dir) => {
                let dir = dir.join(&name);
                let writer = tensorboard::EventWriter::create(&dir)?;
                record.tensorboard = Some(std::path::absolute(&dir).unwrap_or(dir));
                Some(writer)
            }
            None => None,
        };
        if let Some(run) = &record.mlflow {
            eprintln!(
                "logging to MLflow run {} (experiment {}) at {}",
                run.run_id, run.experiment_id, run.uri
            );
        }
        if let Some(dir) = &record.tensorboard {
            eprintln!("writing TensorBoard events to {}", dir.display());
        }
        Ok(Some(Arc::new(Self {
            state: Mutex::new(State {
                mlflow,
                tensorboard,
                epochs_done: 0,
                ended: false,
                record: Some((record_path, record)),
            }),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the run with `status` (the first call counts; later ones do nothing).
    pub fn end(&self, status: Status) {
        let mut state = self.state();
        if state.ended {
            return;
        }
        state.ended = true;
        if let Some(tb) = &mut state.tensorboard {
            tb.flush();
        }
        if let Some(run) = &state.mlflow {
            run.end(status);
        }
    }
}

impl Observer for Tracker {
    fn observe(&self, event: &Event) {
        let mut state = self.state();
        if state.ended {
            return;
        }
        if let Event::Validation { epoch, .. } | Event::BalanceDiagnostics { epoch, .. } = event {
            state.epochs_done = *epoch as i64 + 1;
        }
        let Some((time, step, scalars)) = scalars(event, state.epochs_done) else {
            if let Event::RunStarted { .. } = event {
                if let Some(run) = &state.mlflow {
                    run.params(params(event));
                }
                if let Some((path, record)) = state.record.take() {
                    if let Err(e) = crate::checkpoint::write_json_atomic(&path, &record) {
                        eprintln!("warning: {e:#}: a resume of this run starts a new MLflow run");
                    }
                }
            }
            if let (Event::CheckpointSaved { .. }, Some(tb)) = (event, &mut state.tensorboard) {
                // After each epoch: a TensorBoard watching the folder sees the run live.
                tb.flush();
            }
            return;
        };
        if let Some(tb) = &mut state.tensorboard {
            tb.scalars(time, step, &scalars);
        }
        if let Some(run) = &state.mlflow {
            let timestamp = mlflow::millis(time);
            run.metrics(
                scalars
                    .iter()
                    .map(|(key, value)| Metric {
                        key: mlflow::key(key),
                        value: *value,
                        timestamp,
                        step,
                    })
                    .collect(),
            );
        }
        drop(state);
        match event {
            Event::Finished { .. } => self.end(Status::Finished),
            Event::Failed { .. } => self.end(Status::Failed),
            _ => {}
        }
    }
}

/// Ends the tracked run when the process goes: a run that returned without `finished` or `failed`
/// (stopped early with --stop-after-epochs) ends KILLED; a panic, FAILED.
pub struct EndGuard(Arc<Tracker>);

impl Tracker {
    pub fn guard(self: &Arc<Self>) -> EndGuard {
        EndGuard(self.clone())
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.end(if std::thread::panicking() {
            Status::Failed
        } else {
            Status::Killed
        });
    }
}

/// SIGTERM (the server's Cancel, sent before its SIGKILL) and SIGINT (Ctrl-C) end the tracked run
/// as KILLED before the process goes, instead of leaving it RUNNING forever. Installed only for a
/// tracked run; without tracking a signal ends the trainer as it always did.
pub fn end_on_signal(tracker: Arc<Tracker>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal watcher")?;
    // Registered here, before training starts, not when the thread gets to it.
    let (mut term, mut int) = {
        let _inside = runtime.enter();
        (
            signal(SignalKind::terminate()).context("watching SIGTERM")?,
            signal(SignalKind::interrupt()).context("watching SIGINT")?,
        )
    };
    std::thread::Builder::new()
        .name("tracking-signals".into())
        .spawn(move || {
            let code = runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => 143,
                    _ = int.recv() => 130,
                }
            });
            eprintln!("stopped by a signal: the tracked run ends as KILLED");
            tracker.end(Status::Killed);
            exit_now(code);
        })
        .context("starting the signal watcher")?;
    Ok(())
}

/// Ends the process at once, as the signal would have: the training thread is still inside
/// libtorch, whose exit handlers must not run under it.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and does not return.
    unsafe { libc::_exit(code) }
}

/// The run's name in MLflow and its TensorBoard folder: the run folder's name.
fn run_name(run_dir: &Path) -> String {
    std::path::absolute(run_dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "run".into())
}

/// An event's time, step and (name, value) scalars.
type Moment = (f64, i64, Vec<(String, f64)>);

/// The scalars of an event (finite values only: JSON has no NaN), with its time and step; None for
/// events that carry none.
fn scalars(event: &Event, epochs_done: i64) -> Option<Moment> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let (time, step) = step_scalars(event, &mut out)
        .or_else(|| validation_scalars(event, &mut out))
        .or_else(|| finished_scalars(event, epochs_done, &mut out))?;
    out.retain(|(_, v)| v.is_finite());
    Some((time, step, out))
}

type Scalars = Vec<(String, f64)>;

/// `prefix/<modality>` of each value of a modality map.
fn per_modality(out: &mut Scalars, prefix: &str, map: &BTreeMap<String, f64>) {
    out.extend(map.iter().map(|(m, v)| (format!("{prefix}/{m}"), *v)));
}

/// `prefix_wt`, `_tc`, `_et` and `_mean` of region scores.
fn regions(out: &mut Scalars, prefix: &str, r: &RegionScores) {
    for (name, v) in [("wt", r.wt), ("tc", r.tc), ("et", r.et), ("mean", r.mean)] {
        out.push((format!("{prefix}_{name}"), v));
    }
}

/// A `step` event's scalars into `out`; its time and step (None for another event).
fn step_scalars(event: &Event, out: &mut Scalars) -> Option<(f64, i64)> {
    let Event::Step {
        time,
        step,
        loss,
        task_loss,
        gm_loss,
        lr,
        balance,
        cosine,
        modality_metric,
        step_seconds,
        baseline_coefficients,
        ..
    } = event
    else {
        return None;
    };
    out.extend([
        ("loss".to_string(), *loss),
        ("task_loss".into(), *task_loss),
        ("gm_loss".into(), *gm_loss),
        ("lr".into(), *lr),
        ("step_seconds".into(), *step_seconds),
    ]);
    per_modality(out, "balance", balance);
    per_modality(out, "cosine", cosine);
    per_modality(out, "modality_metric", modality_metric);
    per_modality(out, "baseline_coefficient", baseline_coefficients);
    Some((*time, *step as i64))
}

/// A `validation` event's scalars (`val/...`) into `out`; its time and the epochs done.
fn validation_scalars(event: &Event, out: &mut Scalars) -> Option<(f64, i64)> {
    let Event::Validation {
        time,
        epoch,
        train_loss,
        hd95,
        metrics,
        modality_metrics,
        ..
    } = event
    else {
        return None;
    };
    out.push(("val/train_loss".into(), *train_loss));
    out.extend(metrics.iter().map(|(k, v)| (format!("val/{k}"), *v)));
    if metrics.contains_key("dice_mean") {
        regions(out, "val/hd95", hd95);
    }
    for (modality, metrics) in modality_metrics {
        out.extend(
            metrics
                .iter()
                .map(|(k, v)| (format!("val/{modality}/{k}"), *v)),
        );
    }
    Some((*time, *epoch as i64 + 1))
}

/// A `finished` event's scalars (best and test) into `out`; its time and `epochs_done`.
fn finished_scalars(event: &Event, epochs_done: i64, out: &mut Scalars) -> Option<(f64, i64)> {
    let Event::Finished {
        time,
        best_epoch,
        best_val_dice,
        test_modality_dice,
        test_metrics,
        ..
    } = event
    else {
        return None;
    };
    out.push(("best_epoch".into(), *best_epoch as f64));
    if test_metrics.contains_key("dice_mean") || test_metrics.is_empty() {
        regions(out, "best_val/dice", best_val_dice);
    }
    out.extend(test_metrics.iter().map(|(k, v)| (format!("test/{k}"), *v)));
    for (modality, dice) in test_modality_dice {
        regions(out, &format!("test/{modality}/dice"), dice);
    }
    Some((*time, epochs_done))
}

/// The params of `run_started`: the configuration flattened (`optimizer.lr`), then the run's
/// task, device, modalities and split sizes.
fn params(event: &Event) -> Vec<(String, String)> {
    let Event::RunStarted {
        config,
        train_cases,
        val_cases,
        test_cases,
        steps_per_epoch,
        total_steps,
        device,
        task,
        modalities,
        ..
    } = event
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    flatten("", config, &mut out);
    out.retain(|(k, _)| k != "task");
    out.extend([
        ("task".to_string(), task.to_string()),
        ("device_used".into(), device.clone()),
        ("modalities".into(), modalities.join(",")),
        ("train_cases".into(), train_cases.to_string()),
        ("val_cases_used".into(), val_cases.to_string()),
        ("test_cases".into(), test_cases.to_string()),
        ("steps_per_epoch_used".into(), steps_per_epoch.to_string()),
        ("total_steps".into(), total_steps.to_string()),
    ]);
    // A key of the config may already be one of these (`val_cases`, `steps_per_epoch`): MLflow
    // refuses a param logged twice with two values, so the run's own numbers carry `_used`.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(k, _)| seen.insert(k.clone()));
    out.into_iter().map(|(k, v)| (mlflow::key(&k), v)).collect()
}

/// Objects become dotted keys; everything else its JSON text (strings without quotes); null is
/// left out (MLflow has no empty param).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_flattened_into_dotted_params() {
        let event = Event::RunStarted {
            time: 0.0,
            config: serde_json::json!({
                "method": "cggm", "preset": "tiny", "val_cases": 2, "init_from": null,
                "optimizer": {"lr": 0.001, "betas": [0.9, 0.99]}, "task": "segmentation"
            }),
            train_cases: 3,
            val_cases: 1,
            test_cases: 1,
            steps_per_epoch: 4,
            total_steps: 8,
            device: "cpu, fp32".into(),
            task: Default::default(),
            modalities: vec!["flair".into(), "t1".into()],
        };
        let params: BTreeMap<_, _> = params(&event).into_iter().collect();
        assert_eq!(params["method"], "cggm");
        assert_eq!(params["optimizer.lr"], "0.001");
        assert_eq!(params["optimizer.betas"], "[0.9,0.99]");
        assert_eq!(params["val_cases"], "2");
        assert_eq!(params["val_cases_used"], "1");
        assert_eq!(params["modalities"], "flair,t1");
        assert_eq!(params["task"], "segmentation");
        assert!(!params.contains_key("init_from"));
    }

    #[test]
    fn keys_keep_only_what_mlflow_allows() {
        assert_eq!(mlflow::key("val/flair/dice_wt"), "val/flair/dice_wt");
        assert_eq!(mlflow::key("cosine/t1+ce"), "cosine/t1_ce");
    }
}
