//! A built network with its classifiers and weights, and nothing of training: what evaluation,
//! inference and export open. A `Trainer` is a `Model` plus the optimisers and CGGM's state, so
//! eval and infer, which open a `Model`, allocate no optimiser state (no flat gradient buffer the
//! size of the model, no moments).
//!
//! Both model families are built here, in one way: seed, per-device settings, then the network
//! and (when the method trains them) the per-modality classifiers in one VarStore.

use super::features::{FeatureClassifiers, FeatureNet};
use super::network::MultimodalNetwork;
use super::{ModalityClassifiers, MultimodalSegmenter};
use crate::config::TrainConfig;
use crate::data::features::DatasetSpec;
use crate::task::TaskKind;
use anyhow::{anyhow, bail, Result};
use tch::{nn, Device};

/// A network, its classifiers and the run's configuration, on one device.
pub struct Model<N: MultimodalNetwork = MultimodalSegmenter> {
    pub cfg: TrainConfig,
    pub device: Device,
    pub vs: nn::VarStore,
    pub network: N,
    pub classifiers: Option<N::Classifiers>,
    /// Indices into the data's modality order (segmentation: flair, t1ce, t1, t2; features: the
    /// loaded split's) of the network's inputs.
    pub modality_channels: Vec<i64>,
    /// The network's modality names, in its order.
    pub modality_names: Vec<String>,
}

/// Seeds the weights and applies the device's settings: the first thing every build does, so
/// that the two families cannot drift (the feature family once skipped the device settings).
fn start_build(cfg: &TrainConfig, device: Device) -> nn::VarStore {
    tch::manual_seed(cfg.seed as i64);
    crate::device::prepare(device);
    nn::VarStore::new(device)
}

impl Model {
    /// A segmentation model (the modalities and architecture come from `cfg`), freshly
    /// initialised.
    pub fn segmentation(cfg: TrainConfig, device: Device) -> Self {
        let vs = start_build(&cfg, device);
        let modalities = cfg.modalities();
        let names: Vec<&str> = modalities.iter().map(|m| m.name()).collect();
        let network = MultimodalSegmenter::new(&vs.root(), &cfg.model, &names);
        let classifiers = cfg
            .trains_classifiers()
            .then(|| ModalityClassifiers::new(&vs.root(), &cfg.model, &names));
        let modality_channels = modalities.iter().map(|m| m.index() as i64).collect();
        Self::assemble(cfg, device, vs, network, classifiers, modality_channels)
    }

    /// Picks the network's modalities out of a [B, 4, H, W] batch.
    pub fn select_modalities(&self, images: &tch::Tensor) -> tch::Tensor {
        use super::network::ModalityInput;
        images.pick_modalities(&self.modality_channels)
    }
}

impl Model<FeatureNet> {
    /// A classification or regression model for a feature dataset described by `spec`, freshly
    /// initialised. Its inputs are the modalities `cfg` chooses, in the order
    /// `FeatureSplit::load` loads them.
    pub fn features(cfg: TrainConfig, spec: &DatasetSpec, device: Device) -> Result<Self> {
        if spec.task == TaskKind::Segmentation {
            bail!("a feature dataset cannot be a segmentation task");
        }
        let chosen = cfg
            .feature_modalities(&spec.names())
            .map_err(|e| anyhow!(e))?;
        let modalities: Vec<(String, i64)> = chosen
            .iter()
            .map(|&i| {
                let m = &spec.modalities[i];
                (m.name.clone(), m.dim as i64)
            })
            .collect();
        let names: Vec<String> = modalities.iter().map(|m| m.0.clone()).collect();
        let vs = start_build(&cfg, device);
        let outputs = spec.outputs();
        let network = FeatureNet::new(&vs.root(), &cfg.features, &modalities, outputs);
        let classifiers = cfg
            .trains_classifiers()
            .then(|| FeatureClassifiers::new(&vs.root(), &cfg.features, &names, outputs));
        let channels = (0..chosen.len() as i64).collect();
        Ok(Self::assemble(
            cfg,
            device,
            vs,
            network,
            classifiers,
            channels,
        ))
    }
}

impl<N: MultimodalNetwork> Model<N> {
    /// A model from parts built elsewhere (tests build small networks with it). Seeds nothing.
    pub fn assemble(
        cfg: TrainConfig,
        device: Device,
        vs: nn::VarStore,
        network: N,
        classifiers: Option<N::Classifiers>,
        modality_channels: Vec<i64>,
    ) -> Self {
        let modality_names = network.modality_names().to_vec();
        Self {
            cfg,
            device,
            vs,
            network,
            classifiers,
            modality_channels,
            modality_names,
        }
    }
}
