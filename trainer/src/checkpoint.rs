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
//! Every file is written to a temporary name and renamed, so a crash mid-save leaves the previous
//! checkpoint intact.

use crate::cggm::BalanceTracker;
use crate::config::TrainConfig;
use crate::events::RegionScores;
use crate::rundir::RunDir;
use crate::step::Trainer;
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
}

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    RunDir::new(run_dir).checkpoints()
}

fn tmp_path(final_path: &Path) -> PathBuf {
    // tch picks the format from the extension, so the temporary name keeps it.
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    final_path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving {} into place", path.display()))?;
    Ok(())
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_vec_pretty(value)?)?)
    })
}

/// Saves `name` ("best" or "last"); `with_optimizer` also stores the optimiser state.
pub fn save(
    run_dir: &Path,
    name: &str,
    trainer: &Trainer,
    state: &CheckpointState,
    with_optimizer: bool,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run_dir);
    std::fs::create_dir_all(&dir)?;
    let weights = dir.join(format!("{name}.safetensors"));
    write_atomic(&weights, |tmp| Ok(trainer.vs.save(tmp)?))?;
    if with_optimizer {
        let mut tensors = prefixed("model/", trainer.model_opt.state_tensors());
        if let Some(opt) = &trainer.classifier_opt {
            tensors.extend(prefixed("classifiers/", opt.state_tensors()));
        }
        let path = dir.join(format!("{name}.optim.safetensors"));
        write_atomic(&path, |tmp| Ok(Tensor::write_safetensors(&tensors, tmp)?))?;
    }
    // The JSON goes last: it names the step the other files belong to.
    write_json_atomic(&dir.join(format!("{name}.json")), state)?;
    Ok(weights)
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

/// Loads weights `name` into the trainer's VarStore after checking that the checkpoint was made
/// with this configuration.
pub fn load_weights(run_dir: &Path, name: &str, trainer: &mut Trainer) -> Result<CheckpointState> {
    let state = read_state(run_dir, name)?;
    if !same_model(&state.config, &trainer.cfg) {
        bail!(
            "checkpoint {name} in {} was trained with a different configuration (model {:?}, method {}) than this run (model {:?}, method {}): use the run's own config.json",
            run_dir.display(),
            state.config.model,
            state.config.method,
            trainer.cfg.model,
            trainer.cfg.method
        );
    }
    let weights = checkpoint_dir(run_dir).join(format!("{name}.safetensors"));
    trainer.vs.load(&weights).with_context(|| {
        format!(
            "loading {} (missing or mismatched tensors)",
            weights.display()
        )
    })?;
    Ok(state)
}

/// Loads the optimiser state saved with `name`.
pub fn load_optimizer(run_dir: &Path, name: &str, trainer: &mut Trainer) -> Result<()> {
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

/// The parts of a configuration that decide the weights' shapes and meaning.
fn same_model(a: &TrainConfig, b: &TrainConfig) -> bool {
    a.model == b.model
        && a.modalities() == b.modalities()
        && a.trains_classifiers() == b.trains_classifiers()
}
