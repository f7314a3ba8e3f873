//! Checkpoints: safetensors weights (model and classifiers, one VarStore), the run's full config
//! beside them, and for `last` the optimiser state and counters needed to resume exactly.
//!
//! Layout of a run directory:
//! - `config.json`: the run's `TrainConfig`;
//! - `checkpoints/{best,last}.safetensors`: weights; `checkpoints/{best,last}.json`: config, epoch,
//!   step and metrics at save time (checked against `config.json` on load);
//! - `checkpoints/last.optim.safetensors`: optimiser state;
//! - `metrics.json`: best validation and test scores; `events.jsonl` when the run logged there.
//!
//! A checkpoint is written as one unit: every file first to a `.pending-` name and flushed to disk,
//! the JSON (which names the step) last; then each is renamed into place, the JSON last. A crash
//! before the pending JSON exists leaves the previous checkpoint whole (the strays are removed on
//! the next start); a crash after it is rolled forward on the next start ([`complete_pending`]), so
//! weights of one step never sit beside optimiser state of another. One process at a time works in
//! a run directory ([`lock_run_dir`]).

use crate::cggm::BalanceTracker;
use crate::config::TrainConfig;
use crate::device::parse_device;
use crate::events::RegionScores;
use crate::model::network::MultimodalNetwork;
use crate::model::Model;
use crate::rundir::{CheckpointName, RunDir};
use crate::step::Trainer;
use crate::task::metrics::FeatureEvalReport;
use crate::task::TaskKind;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    pub config: TrainConfig,
    /// Epochs completed when saved.
    pub epoch: usize,
    pub global_step: usize,
    pub best_epoch: usize,
    pub best_val_dice: Option<RegionScores>,
    pub best_val_modality_dice: BTreeMap<String, RegionScores>,
    pub tracker: BalanceTracker,
    pub previous_balance: Vec<f64>,
    /// Feature runs: the best validation report so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_report: Option<FeatureEvalReport>,
    /// Feature runs: each modality's B_i summed over the steps done (their mean is reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balance_sum: Vec<f64>,
}

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    RunDir::new(run_dir).checkpoints()
}

/// Where a checkpoint file waits until its whole checkpoint is on disk (a fixed name, so that the
/// process that resumes after a crash finds it).
fn pending_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    final_path.with_file_name(format!(".pending-{name}"))
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing {} to disk", path.display()))
}

fn sync_dir(dir: &Path) {
    // Makes the renames durable; not every file system supports it, and nothing depends on it
    // beyond durability.
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
}

pub use cggm_core::atomic::{write_bytes_atomic, write_json_atomic};

/// The files of checkpoint `name`: weights, optimiser state, and the JSON that names their step.
fn checkpoint_files(dir: &Path, name: &str) -> [PathBuf; 3] {
    [
        dir.join(format!("{name}.safetensors")),
        dir.join(format!("{name}.optim.safetensors")),
        dir.join(format!("{name}.json")),
    ]
}

/// Finishes or discards a save that a crash interrupted: when the pending JSON exists, every
/// pending file was complete and flushed, so they are renamed into place (JSON last); otherwise
/// the pending files are incomplete leftovers and the previous checkpoint is still whole. Called by
/// the run directory's owner only ([`lock_run_dir`], [`save`]).
pub fn complete_pending(run_dir: &Path, name: &str) -> Result<()> {
    let dir = checkpoint_dir(run_dir);
    let [weights, optim, json] = checkpoint_files(&dir, name);
    let pending_json = pending_path(&json);
    if pending_json.is_file() {
        for file in [&weights, &optim] {
            let pending = pending_path(file);
            if pending.exists() {
                std::fs::rename(&pending, file)
                    .with_context(|| format!("moving {} into place", file.display()))?;
            }
        }
        std::fs::rename(&pending_json, &json)
            .with_context(|| format!("moving {} into place", json.display()))?;
        sync_dir(&dir);
    } else {
        for file in [&weights, &optim] {
            let _ = std::fs::remove_file(pending_path(file));
        }
    }
    Ok(())
}

/// Loads the `best` weights into `model`, or `last` when no best exists yet (a run still in
/// its first epoch), for evaluation and inference.
pub fn load_best_or_last<N: MultimodalNetwork>(
    run_dir: &Path,
    model: &mut Model<N>,
) -> Result<CheckpointState> {
    load_weights(run_dir, best_or_last(run_dir).unwrap_or("last"), model)
}

/// The checkpoint evaluation and fine-tuning read: core's rule, [`RunDir::best_or_last`] (the
/// server's provenance of a prediction applies the same one).
pub fn best_or_last(run_dir: &Path) -> Option<&'static str> {
    RunDir::new(run_dir)
        .best_or_last()
        .map(CheckpointName::as_str)
}

/// Saves an epoch's checkpoints: `best` (weights only) when these are the best weights so far,
/// then `last` (with the optimiser state), each reported as a `checkpoint_saved` event.
pub fn save_epoch<N: MultimodalNetwork>(
    run_dir: &Path,
    trainer: &Trainer<N>,
    state: &CheckpointState,
    epoch: usize,
    is_best: bool,
    events: &crate::events::EventSink,
) -> Result<()> {
    let saves: &[(&str, bool)] = if is_best {
        &[("best", true), ("last", false)]
    } else {
        &[("last", false)]
    };
    for &(name, best) in saves {
        let path = save(run_dir, name, trainer, state, name == "last")?;
        events.emit(&crate::events::Event::CheckpointSaved {
            time: crate::events::now(),
            epoch,
            path: path.display().to_string(),
            best,
        });
    }
    Ok(())
}

/// Saves `name` ("best" or "last") as one unit (see the module documentation); `with_optimizer`
/// also stores the optimiser state.
pub fn save<N: MultimodalNetwork>(
    run_dir: &Path,
    name: &str,
    trainer: &Trainer<N>,
    state: &CheckpointState,
    with_optimizer: bool,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run_dir);
    std::fs::create_dir_all(&dir)?;
    // A save interrupted earlier is settled first, so that its pending files are not mixed in.
    complete_pending(run_dir, name)?;
    let [weights, optim, json] = checkpoint_files(&dir, name);
    let pending = pending_path(&weights);
    trainer
        .model
        .vs
        .save(&pending)
        .with_context(|| format!("writing {}", pending.display()))?;
    sync_file(&pending)?;
    pause_for_crash_test(name, "weights");
    if with_optimizer {
        let mut tensors = prefixed("model/", trainer.model_opt.state_tensors());
        if let Some(opt) = &trainer.classifier_opt {
            tensors.extend(prefixed("classifiers/", opt.state_tensors()));
        }
        let pending = pending_path(&optim);
        Tensor::write_safetensors(&tensors, &pending)
            .with_context(|| format!("writing {}", pending.display()))?;
        sync_file(&pending)?;
    }
    // The JSON goes last: it names the step the other files belong to, and its pending copy
    // existing means the whole checkpoint is on disk.
    let pending = pending_path(&json);
    std::fs::write(&pending, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", pending.display()))?;
    sync_file(&pending)?;
    sync_dir(&dir);
    pause_for_crash_test(name, "json");
    complete_pending(run_dir, name)?;
    Ok(weights)
}

pub use cggm_core::rundir::PAUSE_IN_CHECKPOINT_ENV;

fn pause_for_crash_test(name: &str, stage: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SAVES: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var(PAUSE_IN_CHECKPOINT_ENV) else {
        return;
    };
    let mut parts = spec.splitn(4, ':');
    let (Some(want_name), Some(count), Some(want_stage), Some(marker)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if want_name != name || want_stage != stage {
        return;
    }
    let seen = SAVES.fetch_add(1, Ordering::SeqCst) + 1;
    if count.parse::<usize>().ok() != Some(seen) {
        return;
    }
    let _ = std::fs::write(
        marker,
        format!("paused in save {seen} of {name} at {stage}\n"),
    );
    loop {
        std::thread::park();
    }
}

/// Takes the run directory for this process (a kernel lock on `<run>/.lock`, released when the
/// process ends however it ends): a second trainer in the same directory stops with a clear error
/// instead of interleaving checkpoints with the first.
pub fn lock_run_dir(run_dir: &Path) -> Result<std::fs::File> {
    use std::io::Write;
    let path = run_dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another process (pid {}) is training in {}: wait for it or stop it, or choose \
                 another --out",
                holder.trim(),
                run_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    // Only the directory's owner settles what a crashed save left (a reader never renames).
    for name in ["last", "best"] {
        complete_pending(run_dir, name)?;
    }
    Ok(file)
}

fn prefixed(prefix: &str, tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t.to_device(tch::Device::Cpu)))
        .collect()
}

pub fn read_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = RunDir::new(run_dir).config();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a run directory: {} is missing",
            run_dir.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid run configuration", path.display()))
}

pub fn read_state(run_dir: &Path, name: &str) -> Result<CheckpointState> {
    let path = checkpoint_dir(run_dir).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no {name} checkpoint in {}", run_dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
}

/// Loads weights `name` into the model's VarStore after checking that the checkpoint was made
/// with this configuration.
pub fn load_weights<N: MultimodalNetwork>(
    run_dir: &Path,
    name: &str,
    model: &mut Model<N>,
) -> Result<CheckpointState> {
    let state = read_state(run_dir, name)?;
    if !same_model(&state.config, &model.cfg) {
        bail!(
            "checkpoint {name} in {} was trained with a different configuration (model {:?}, method {}) than this run (model {:?}, method {}): use the run's own config.json",
            run_dir.display(),
            state.config.model,
            state.config.method,
            model.cfg.model,
            model.cfg.method
        );
    }
    let weights = checkpoint_dir(run_dir).join(format!("{name}.safetensors"));
    model.vs.load(&weights).with_context(|| {
        format!(
            "loading {} (missing or mismatched tensors)",
            weights.display()
        )
    })?;
    Ok(state)
}

/// Loads the optimiser state saved with `name`.
pub fn load_optimizer<N: MultimodalNetwork>(
    run_dir: &Path,
    name: &str,
    trainer: &mut Trainer<N>,
) -> Result<()> {
    let path = checkpoint_dir(run_dir).join(format!("{name}.optim.safetensors"));
    let tensors =
        Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut model, mut classifiers) = (Vec::new(), Vec::new());
    for (k, t) in tensors {
        if let Some(rest) = k.strip_prefix("model/") {
            model.push((rest.to_string(), t));
        } else if let Some(rest) = k.strip_prefix("classifiers/") {
            classifiers.push((rest.to_string(), t));
        }
    }
    trainer
        .model_opt
        .load_state(model)
        .map_err(anyhow::Error::msg)?;
    if let Some(opt) = &mut trainer.classifier_opt {
        opt.load_state(classifiers).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Checks that `run_dir` may take this run: on resume the saved `config.json` must equal `cfg`;
/// otherwise the folder must not hold a run yet. Then writes `cfg` as the run's `config.json`.
/// Call with the directory locked ([`lock_run_dir`]).
pub fn claim_run_dir(run_dir: &Path, cfg: &TrainConfig, resume: bool) -> Result<()> {
    if resume {
        let saved = read_config(run_dir)?;
        if saved != *cfg {
            bail!("cannot resume: the configuration differs from the run's saved config.json; resume with the same options (or edit nothing and pass only --resume --out {})", run_dir.display());
        }
    } else if checkpoint_dir(run_dir).join("last.json").exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose a new --out",
            run_dir.display()
        );
    }
    write_json_atomic(&RunDir::new(run_dir).config(), cfg)
}

impl<N: MultimodalNetwork> Trainer<N> {
    /// Puts the trainer where checkpoint `name` left it: weights, both optimisers' state, the step
    /// counter and CGGM's state (the metrics of the previous step, the guard's counts, the B of
    /// the previous step). Returns the checkpoint's record (epoch, best scores) for the run loop.
    pub fn restore(&mut self, run_dir: &Path, name: &str) -> Result<CheckpointState> {
        let state = load_weights(run_dir, name, &mut self.model)?;
        load_optimizer(run_dir, name, self)?;
        self.global_step = state.global_step;
        self.tracker = state.tracker.clone();
        self.previous_balance = state.previous_balance.clone();
        Ok(state)
    }

    /// What a checkpoint records of this trainer after `epochs_done` epochs; the run loop adds
    /// its best scores so far (segmentation: Dice; feature tasks: the report and B sums).
    pub fn checkpoint_state(&self, epochs_done: usize, best_epoch: usize) -> CheckpointState {
        CheckpointState {
            config: self.model.cfg.clone(),
            epoch: epochs_done,
            global_step: self.global_step,
            best_epoch,
            best_val_dice: None,
            best_val_modality_dice: BTreeMap::new(),
            tracker: self.tracker.clone(),
            previous_balance: self.previous_balance.clone(),
            best_val_report: None,
            balance_sum: Vec::new(),
        }
    }

    /// `--resume`: [`restore`](Self::restore) from the run's last checkpoint and say so; a new
    /// run keeps the trainer as built (None).
    pub fn resume_if(&mut self, resume: bool, run_dir: &Path) -> Result<Option<CheckpointState>> {
        if !resume {
            return Ok(None);
        }
        let state = self.restore(run_dir, "last")?;
        tracing::info!(
            "resuming {} at epoch {}, step {}",
            run_dir.display(),
            state.epoch,
            self.global_step
        );
        Ok(Some(state))
    }
}

impl Model {
    /// Opens a segmentation run for evaluation or inference with its best weights (last if no
    /// best exists yet), on `device` or the run's own.
    pub fn open_segmentation(run_dir: &Path, device: Option<&str>) -> Result<Self> {
        let cfg = read_config(run_dir)?;
        if cfg.task != TaskKind::Segmentation {
            bail!(
                "{} is a {} run, not a segmentation run",
                run_dir.display(),
                cfg.task
            );
        }
        let device = parse_device(device.unwrap_or(&cfg.device)).map_err(anyhow::Error::msg)?;
        let mut model = Self::segmentation(cfg, device);
        load_best_or_last(run_dir, &mut model)?;
        Ok(model)
    }
}

/// The parts of a configuration that decide the weights' shapes and meaning.
fn same_model(a: &TrainConfig, b: &TrainConfig) -> bool {
    a.model == b.model
        && a.features == b.features
        && a.task == b.task
        && a.modalities() == b.modalities()
        && a.trains_classifiers() == b.trains_classifiers()
}
