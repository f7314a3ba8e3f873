//! The model of the CGGM authors for feature tasks (zrguo/CGGM `models/msamodel.py`, after MulT):
//! per modality a 1-D projection (Conv1d, kernel 1) to `proj_dim` and a Transformer encoder;
//! a Transformer fusion over the concatenated tokens of all modalities, read at the first token;
//! a residual output block (Linear-ReLU-Dropout-Linear + skip) and a linear output layer. The
//! per-modality classifiers are a small Transformer + Linear-ReLU + a linear output layer of the
//! fusion output layer's shape (so cos(g_F, g_i) is defined).
//!
//! Deliberate differences from the authors' code: the classifier applies its hidden projection
//! once (theirs applies `proj1` twice, which looks accidental); the 1-D projection belongs to its
//! modality's encoder, so magnitude modulation scales it too (theirs scales `encoders.i` only);
//! padding (`<modality>.lengths`) is masked out of attention.

use super::network::{
    ModalityClassifierSet, ModalityInput, MultimodalNetwork, NetworkOutput, CLASSIFIER_GROUP,
};
use super::transformer::TransformerEncoder;
pub use cggm_core::model_config::FeatureModelConfig;
use tch::{nn, Tensor};

/// Feature input of one batch: per modality [B, T_i, D_i] and an optional padding mask [B, T_i].
pub struct FeatureInput {
    pub features: Vec<Tensor>,
    pub padding: Vec<Option<Tensor>>,
}

impl ModalityInput for FeatureInput {
    fn pick_modalities(&self, indices: &[i64]) -> Self {
        Self {
            features: indices
                .iter()
                .map(|&i| self.features[i as usize].shallow_clone())
                .collect(),
            padding: indices
                .iter()
                .map(|&i| self.padding[i as usize].as_ref().map(|p| p.shallow_clone()))
                .collect(),
        }
    }

    fn mask_modalities(&self, keep: &Tensor) -> Self {
        Self {
            features: self
                .features
                .iter()
                .enumerate()
                .map(|(i, f)| f * keep.select(1, i as i64).view([-1, 1, 1]))
                .collect(),
            padding: self
                .padding
                .iter()
                .map(|p| p.as_ref().map(|p| p.shallow_clone()))
                .collect(),
        }
    }

    fn batch_size(&self) -> i64 {
        self.features[0].size()[0]
    }
}

pub struct FeatureOutput {
    /// [B, outputs]
    pub logits: Tensor,
    /// Each modality's encoded tokens [B, T_i, proj_dim] (with their graph).
    pub hidden: Vec<Tensor>,
    pub padding: Vec<Option<Tensor>>,
}

impl NetworkOutput for FeatureOutput {
    fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Each sample's encoded tokens averaged over time; regression labels become their sign
    /// classes (0: y < 0, 1: y >= 0).
    fn prototype_rows(&self, i: usize, labels: &Tensor) -> Option<(Tensor, Tensor)> {
        let rows = self.hidden[i].mean_dim(&[1i64][..], false, tch::Kind::Float);
        let classes = if labels.kind() == tch::Kind::Int64 {
            labels.shallow_clone()
        } else {
            labels.ge(0.0).to_kind(tch::Kind::Int64)
        };
        Some((rows, classes))
    }
}

#[derive(Debug)]
pub(crate) struct ModalityEncoder {
    pub(crate) proj: nn::Conv1D,
    pub(crate) transformer: TransformerEncoder,
}

/// Encoders, Transformer fusion and residual output head.
#[derive(Debug)]
pub struct FeatureNet {
    pub(crate) encoders: Vec<ModalityEncoder>,
    pub(crate) fusion: TransformerEncoder,
    pub(crate) proj1: nn::Linear,
    pub(crate) proj2: nn::Linear,
    pub(crate) out_layer: nn::Linear,
    out_dropout: f64,
    modality_names: Vec<String>,
}

impl FeatureNet {
    /// `modalities`: (name, feature dim) in the model's order; `outputs`: classes or 1.
    pub fn new(
        p: &nn::Path,
        cfg: &FeatureModelConfig,
        modalities: &[(String, i64)],
        outputs: i64,
    ) -> Self {
        let d = cfg.proj_dim;
        let mut encoders = Vec::new();
        for (i, (name, dim)) in modalities.iter().enumerate() {
            // Optimiser group i + 1: the modality's encoder (group 0 is the fusion head).
            let ep = (p / "encoders" / name.as_str()).set_group(i + 1);
            encoders.push(ModalityEncoder {
                proj: nn::conv1d(&ep / "proj", *dim, d, 1, Default::default()),
                transformer: TransformerEncoder::new(
                    &(&ep / "transformer"),
                    &cfg.transformer(cfg.layers),
                ),
            });
        }
        let fp = p / "fusion";
        Self {
            encoders,
            fusion: TransformerEncoder::new(
                &(&fp / "transformer"),
                &cfg.transformer(cfg.layers.saturating_sub(2).max(1)),
            ),
            proj1: nn::linear(&fp / "proj1", d, d, Default::default()),
            proj2: nn::linear(&fp / "proj2", d, d, Default::default()),
            out_layer: nn::linear(&fp / "out_layer", d, outputs, Default::default()),
            out_dropout: cfg.out_dropout,
            modality_names: modalities.iter().map(|m| m.0.clone()).collect(),
        }
    }

    pub fn modalities(&self) -> usize {
        self.encoders.len()
    }
}

impl MultimodalNetwork for FeatureNet {
    type Input = FeatureInput;
    type Output = FeatureOutput;
    type Classifiers = FeatureClassifiers;

    /// xs: per modality [B, T_i, D_i] -> logits [B, outputs]
    fn forward_t(&self, xs: &FeatureInput, train: bool) -> FeatureOutput {
        let hidden: Vec<Tensor> = self
            .encoders
            .iter()
            .zip(xs.features.iter().zip(&xs.padding))
            .map(|(enc, (x, pad))| {
                let h = x.transpose(1, 2).apply(&enc.proj).transpose(1, 2);
                enc.transformer.forward_t(&h, pad.as_ref(), train)
            })
            .collect();
        let tokens = Tensor::cat(&hidden, 1);
        let padding = if xs.padding.iter().any(Option::is_some) {
            let parts: Vec<Tensor> = xs
                .padding
                .iter()
                .zip(&hidden)
                .map(|(p, h)| match p {
                    Some(p) => p.shallow_clone(),
                    None => {
                        Tensor::zeros([h.size()[0], h.size()[1]], (tch::Kind::Bool, h.device()))
                    }
                })
                .collect();
            Some(Tensor::cat(&parts, 1))
        } else {
            None
        };
        let fused = self
            .fusion
            .forward_t(&tokens, padding.as_ref(), train)
            .select(1, 0);
        let residual = fused
            .apply(&self.proj1)
            .relu()
            .dropout(self.out_dropout, train)
            .apply(&self.proj2)
            + &fused;
        FeatureOutput {
            logits: residual.apply(&self.out_layer),
            hidden,
            padding: xs
                .padding
                .iter()
                .map(|p| p.as_ref().map(|p| p.shallow_clone()))
                .collect(),
        }
    }

    fn last_layer_weight(&self) -> &Tensor {
        &self.out_layer.ws
    }

    fn modality_names(&self) -> &[String] {
        &self.modality_names
    }
}

#[derive(Debug)]
struct Classifier {
    transformer: TransformerEncoder,
    proj1: nn::Linear,
    out_layer: nn::Linear,
}

/// The per-modality classifiers f_i of the feature model.
#[derive(Debug)]
pub struct FeatureClassifiers {
    classifiers: Vec<Classifier>,
}

impl FeatureClassifiers {
    pub fn new(
        p: &nn::Path,
        cfg: &FeatureModelConfig,
        modality_names: &[String],
        outputs: i64,
    ) -> Self {
        let d = cfg.proj_dim;
        let classifiers = modality_names
            .iter()
            .map(|name| {
                let cp = (p / "classifiers" / name.as_str()).set_group(CLASSIFIER_GROUP);
                Classifier {
                    transformer: TransformerEncoder::new(
                        &(&cp / "transformer"),
                        &cfg.transformer(cfg.classifier_layers),
                    ),
                    proj1: nn::linear(&cp / "proj1", d, d, Default::default()),
                    out_layer: nn::linear(&cp / "out_layer", d, outputs, Default::default()),
                }
            })
            .collect();
        Self { classifiers }
    }
}

impl ModalityClassifierSet<FeatureOutput> for FeatureClassifiers {
    /// Per modality: detached hidden [B, T_i, proj_dim] -> logits [B, outputs]
    fn logits_t(&self, out: &FeatureOutput, train: bool) -> Vec<Tensor> {
        self.classifiers
            .iter()
            .zip(out.hidden.iter().zip(&out.padding))
            .map(|(c, (h, pad))| {
                c.transformer
                    .forward_t(&h.detach(), pad.as_ref(), train)
                    .select(1, 0)
                    .apply(&c.proj1)
                    .relu()
                    .apply(&c.out_layer)
            })
            .collect()
    }

    fn last_layer_weight(&self, i: usize) -> Tensor {
        self.classifiers[i].out_layer.ws.shallow_clone()
    }

    fn last_layer_grad(&self, i: usize) -> Tensor {
        self.classifiers[i].out_layer.ws.grad()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn feature_model_and_classifiers_have_matching_output_layers() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = FeatureModelConfig::cpu();
        let mods = [("text".to_string(), 16), ("audio".to_string(), 5)];
        let names: Vec<String> = mods.iter().map(|m| m.0.clone()).collect();
        let net = FeatureNet::new(&vs.root(), &cfg, &mods, 4);
        let cls = FeatureClassifiers::new(&vs.root(), &cfg, &names, 4);
        let xs = FeatureInput {
            features: vec![
                Tensor::randn([3, 6, 16], (Kind::Float, Device::Cpu)),
                Tensor::randn([3, 1, 5], (Kind::Float, Device::Cpu)),
            ],
            padding: vec![None, None],
        };
        let out = net.forward_t(&xs, true);
        assert_eq!(out.logits.size(), [3, 4]);
        assert_eq!(out.hidden[0].size(), [3, 6, 32]);
        let logits = cls.logits_t(&out, true);
        assert_eq!(logits.len(), 2);
        assert_eq!(logits[1].size(), [3, 4]);
        assert_eq!(
            net.last_layer_weight().size(),
            cls.last_layer_weight(1).size()
        );
        assert_eq!(net.modality_names(), ["text", "audio"]);
        assert!(vs.variables().contains_key("encoders.audio.proj.weight"));
    }

    #[test]
    fn paper_configs_are_valid() {
        for cfg in [
            FeatureModelConfig::mosi(),
            FeatureModelConfig::iemocap(),
            FeatureModelConfig::food101(),
            FeatureModelConfig::cpu(),
        ] {
            cfg.validate().unwrap();
        }
    }
}
