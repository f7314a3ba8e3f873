//! Fine-tuning (`cggm train --init-from RUN`): a new run starts from another run's weights
//! instead of a fresh initialisation — e.g. a finished model trained further on a dataset of
//! corrected cases. Only the weights come over: the optimiser, the schedule, the step counter and
//! CGGM's state start afresh, as in a new run.

use crate::checkpoint::{best_or_last, checkpoint_dir, read_config, read_state};
pub use crate::config::incompatibility;
use crate::model::network::MultimodalNetwork;
use crate::model::Model;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// What a run was initialised from, for its log.
#[derive(Clone, Debug, PartialEq)]
pub struct InitSource {
    /// `best`, or `last` when the source has no best checkpoint yet.
    pub checkpoint: &'static str,
    /// Epochs the source had done when that checkpoint was saved.
    pub epoch: usize,
    /// Whether the per-modality classifiers came over too (both runs train them).
    pub classifiers: bool,
}

/// Loads the weights of the run in `source` (best, else last) into `model`, after checking that
/// the two networks are the same. The classifiers come over when both runs have them; when only
/// this run trains them they start fresh.
pub fn init_from<N: MultimodalNetwork>(source: &Path, model: &mut Model<N>) -> Result<InitSource> {
    let source_cfg = read_config(source).with_context(|| {
        format!(
            "--init-from {}: not a run directory of this application",
            source.display()
        )
    })?;
    if let Some(why) = incompatibility(&source_cfg, &model.cfg) {
        bail!(
            "--init-from {}: cannot start from that run: {why}",
            source.display()
        );
    }
    let Some(checkpoint) = best_or_last(source) else {
        bail!(
            "--init-from {}: that run has no checkpoint yet (it saves one after its first epoch)",
            source.display()
        );
    };
    let state = read_state(source, checkpoint)?;
    let weights = checkpoint_dir(source).join(format!("{checkpoint}.safetensors"));
    let missing = model.vs.load_partial(&weights).with_context(|| {
        format!(
            "--init-from: reading {} (missing or damaged)",
            weights.display()
        )
    })?;
    let (classifiers_missing, network_missing): (Vec<_>, Vec<_>) = missing
        .into_iter()
        .partition(|name| name.starts_with("classifiers."));
    if !network_missing.is_empty() {
        bail!(
            "--init-from {}: {} holds no weights for {} tensors of this network (first: {}): it \
             was not saved by this version's network",
            source.display(),
            weights.display(),
            network_missing.len(),
            network_missing[0]
        );
    }
    Ok(InitSource {
        checkpoint,
        epoch: state.epoch,
        classifiers: model.classifiers.is_some() && classifiers_missing.is_empty(),
    })
}
