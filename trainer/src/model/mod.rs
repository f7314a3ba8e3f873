//! Multimodal DeepLabv3+ for brain-tumour segmentation: one encoder per MRI modality, a fusion
//! head over the concatenated features of all modalities, and one lightweight classifier per
//! modality (trained on detached features; CGGM reads their gradients).

pub mod aspp;
pub mod built;
mod conv;
pub mod decoder;
pub mod encoder;
pub mod features;
pub mod folded;
mod grouped;
pub mod network;
pub mod resnet;
pub mod transformer;

pub use built::Model;
pub use cggm_core::model_config::ClassifierDesign;
pub use cggm_core::model_config::ModelConfig;
use decoder::{Decoder, DecoderSpec};
use encoder::{Encoder, EncoderFeatures};
use network::{ModalityClassifierSet, ModalityInput, MultimodalNetwork, NetworkOutput};
use tch::{nn, Tensor};

/// Everything one forward pass of the multimodal model yields.
pub struct ModelOutput {
    /// [B, classes, H, W]
    pub logits: Tensor,
    /// One entry per modality, in the model's modality order.
    pub features: Vec<EncoderFeatures>,
    /// All modalities' high-level features side by side: [B, M * aspp_channels, H/OS, W/OS].
    pub high: Tensor,
    /// All modalities' low-level features side by side: [B, M * low_level_channels, H/4, W/4].
    pub low: Tensor,
}

/// Encoders phi_i, fusion module Omega and prediction head F.
#[derive(Debug)]
pub struct MultimodalSegmenter {
    pub encoders: Vec<Encoder>,
    pub head: Decoder,
    /// The modality of each encoder, in order (encoder i is optimiser group i + 1).
    pub modality_names: Vec<String>,
    /// Run the encoders as one grouped network (`grouped.rs`): same function, fewer calls.
    pub grouped_encoders: bool,
}

impl MultimodalSegmenter {
    /// `modality_names` fixes both the number of encoders and their parameter names.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, modality_names: &[&str]) -> Self {
        let enc_root = p / "encoders";
        let mut encoders = Vec::new();
        for (i, name) in modality_names.iter().enumerate() {
            // One optimiser group per encoder (group 0 is the fusion head): B_i scales it, and
            // MSLR gives each modality its own learning rate.
            let ep = (&enc_root / *name).set_group(i + 1);
            encoders.push(Encoder::new(&ep, &cfg.backbone, cfg.aspp_channels));
        }
        let head = Decoder::new(&(p / "fusion"), &fusion_spec(cfg, modality_names.len()));
        let on_cpu = p.device() == tch::Device::Cpu;
        Self {
            encoders,
            head,
            modality_names: modality_names.iter().map(|m| m.to_string()).collect(),
            grouped_encoders: cfg.encoders.grouped(&cfg.backbone, on_cpu),
        }
    }

    /// xs: [B, M, H, W] (channel i is modality i) -> logits [B, classes, H, W]
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        let (h, w) = (xs.size()[2], xs.size()[3]);
        let (features, high, low) = if self.grouped_encoders {
            self.encode_grouped(xs, train)
        } else {
            self.encode_separately(xs, train)
        };
        let logits = self.head.forward_t(&high, &low, (h, w), train);
        ModelOutput {
            logits,
            features,
            high,
            low,
        }
    }

    fn encode_separately(
        &self,
        xs: &Tensor,
        train: bool,
    ) -> (Vec<EncoderFeatures>, Tensor, Tensor) {
        let features: Vec<EncoderFeatures> = self
            .encoders
            .iter()
            .enumerate()
            .map(|(i, enc)| enc.forward_t(&xs.narrow(1, i as i64, 1), train))
            .collect();
        let side_by_side = |part: fn(&EncoderFeatures) -> &Tensor| {
            Tensor::cat(&features.iter().map(part).collect::<Vec<_>>(), 1)
        };
        let high = side_by_side(|f| &f.high);
        let low = side_by_side(|f| &f.low);
        (features, high, low)
    }

    /// The same features from one grouped network; each encoder's are views of the whole.
    fn encode_grouped(&self, xs: &Tensor, train: bool) -> (Vec<EncoderFeatures>, Tensor, Tensor) {
        let (high, low) = grouped::forward(&self.encoders, xs, train);
        let m = self.encoders.len() as i64;
        let (ch, cl) = (high.size()[1] / m, low.size()[1] / m);
        let features = (0..m)
            .map(|i| EncoderFeatures {
                high: high.narrow(1, i * ch, ch),
                low: low.narrow(1, i * cl, cl),
            })
            .collect();
        (features, high, low)
    }

    /// Weight of the head's last layer (the 1x1 conv to class logits): where g_F is taken.
    pub fn last_layer_weight(&self) -> &Tensor {
        &self.head.last.ws
    }
}

/// The per-modality classifiers f_i: lightweight DeepLabv3+ decoders, one per modality, held as
/// one grouped decoder (group i = classifier i) so that all of them run in a few ops.
#[derive(Debug)]
pub struct ModalityClassifiers {
    pub(crate) decoder: Decoder,
    pub(crate) classes: i64,
}

impl ModalityClassifiers {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, modality_names: &[&str]) -> Self {
        let spec = classifier_spec(cfg, modality_names.len());
        Self {
            decoder: Decoder::new(
                &(p / "classifiers").set_group(network::CLASSIFIER_GROUP),
                &spec,
            ),
            classes: cfg.classes,
        }
    }

    /// Logits of every classifier on the model's features, cut from the graph (CGGM step 2):
    /// [B, M * classes, H, W]; `logits_of` picks classifier i's.
    pub fn forward_t(&self, out: &ModelOutput, out_hw: (i64, i64), train: bool) -> Tensor {
        self.decoder
            .forward_t(&out.high.detach(), &out.low.detach(), out_hw, train)
    }

    /// Classifier i's logits [B, classes, H, W] out of `forward_t`'s result.
    pub fn logits_of(&self, all: &Tensor, i: usize) -> Tensor {
        all.narrow(1, i as i64 * self.classes, self.classes)
    }

    /// Classifier i's last-layer weight (a view): the fusion head's last-layer shape.
    pub fn last_layer_weight(&self, i: usize) -> Tensor {
        self.decoder
            .last
            .ws
            .narrow(0, i as i64 * self.classes, self.classes)
    }

    /// Gradient of classifier i's last-layer weight after a backward pass (undefined before).
    pub fn last_layer_grad(&self, i: usize) -> Tensor {
        let g = self.decoder.last.ws.grad();
        if g.defined() {
            g.narrow(0, i as i64 * self.classes, self.classes)
        } else {
            g
        }
    }
}

/// Segmentation input: [B, M, H, W], channel i = modality i.
impl ModalityInput for Tensor {
    fn pick_modalities(&self, indices: &[i64]) -> Self {
        let all = indices.len() as i64 == self.size()[1]
            && indices.iter().enumerate().all(|(i, &c)| c == i as i64);
        if all {
            self.shallow_clone()
        } else {
            let idx = Tensor::from_slice(indices).to_device(self.device());
            self.index_select(1, &idx)
        }
    }

    fn mask_modalities(&self, keep: &Tensor) -> Self {
        let (b, m) = (self.size()[0], self.size()[1]);
        self * keep.view([b, m, 1, 1]).to_device(self.device())
    }

    fn batch_size(&self) -> i64 {
        self.size()[0]
    }
}

impl NetworkOutput for ModelOutput {
    fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Pixels of the high-level feature as the decoder sees it: upsampled to the low-level map's
    /// stride (4), where small tumour classes still have pixels.
    fn prototype_rows(&self, i: usize, labels: &Tensor) -> Option<(Tensor, Tensor)> {
        let f = &self.features[i];
        let (lh, lw) = (f.low.size()[2], f.low.size()[3]);
        let high = f
            .high
            .upsample_bilinear2d([lh, lw], false, None::<f64>, None::<f64>);
        Some(crate::baselines::pixel_rows(&high, labels))
    }
}

impl MultimodalNetwork for MultimodalSegmenter {
    type Input = Tensor;
    type Output = ModelOutput;
    type Classifiers = ModalityClassifiers;

    fn forward_t(&self, xs: &Tensor, train: bool) -> ModelOutput {
        MultimodalSegmenter::forward_t(self, xs, train)
    }

    fn last_layer_weight(&self) -> &Tensor {
        MultimodalSegmenter::last_layer_weight(self)
    }

    fn modality_names(&self) -> &[String] {
        &self.modality_names
    }
}

impl ModalityClassifierSet<ModelOutput> for ModalityClassifiers {
    fn logits_t(&self, out: &ModelOutput, train: bool) -> Vec<Tensor> {
        let hw = (out.logits.size()[2], out.logits.size()[3]);
        let all = self.forward_t(out, hw, train);
        let m = all.size()[1] / self.classes;
        (0..m as usize).map(|i| self.logits_of(&all, i)).collect()
    }

    fn last_layer_weight(&self, i: usize) -> Tensor {
        ModalityClassifiers::last_layer_weight(self, i)
    }

    fn last_layer_grad(&self, i: usize) -> Tensor {
        ModalityClassifiers::last_layer_grad(self, i)
    }
}

/// The fusion head's decoder for `modalities` encoders.
fn fusion_spec(cfg: &ModelConfig, modalities: usize) -> DecoderSpec {
    let m = modalities as i64;
    DecoderSpec {
        high_in: cfg.aspp_channels * m,
        low_in: cfg.backbone.low_level_channels() * m,
        high_proj: cfg.decoder_channels,
        low_proj: cfg.low_level_proj,
        mid: cfg.decoder_channels,
        refine_convs: 2,
        refine_kernel: 3,
        groups: 1,
        classes: cfg.classes,
    }
}

/// The per-modality classifiers' grouped decoder.
fn classifier_spec(cfg: &ModelConfig, modalities: usize) -> DecoderSpec {
    DecoderSpec {
        high_in: cfg.aspp_channels,
        low_in: cfg.backbone.low_level_channels(),
        high_proj: cfg.classifier_channels,
        low_proj: (cfg.low_level_proj / 2).max(1),
        // Same input width as the fusion head's last layer, so the two last layers have
        // the same shape and their gradients can be compared by cosine.
        mid: cfg.decoder_channels,
        // Light: a 1x1 refinement keeps the classifiers' cost small next to the encoders' (they
        // are the method's overhead). Full: the fusion head's two 3x3 refinements.
        refine_convs: match cfg.classifier_design {
            ClassifierDesign::Light => 1,
            ClassifierDesign::Full => 2,
        },
        refine_kernel: match cfg.classifier_design {
            ClassifierDesign::Light => 1,
            ClassifierDesign::Full => 3,
        },
        classes: cfg.classes,
        groups: modalities as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn shapes(cfg: &ModelConfig, hw: i64) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let names = ["flair", "t1ce", "t1", "t2"];
        let model = MultimodalSegmenter::new(&vs.root(), cfg, &names);
        let cls = ModalityClassifiers::new(&vs.root(), cfg, &names);
        let xs = Tensor::randn([2, 4, hw, hw], (Kind::Float, Device::Cpu));
        let out = model.forward_t(&xs, true);
        assert_eq!(out.logits.size(), [2, 4, hw, hw]);
        let os = cfg.backbone.output_stride as i64;
        assert_eq!(
            out.features[0].high.size(),
            [2, cfg.aspp_channels, hw / os, hw / os]
        );
        assert_eq!(
            out.features[3].low.size(),
            [2, cfg.backbone.low_level_channels(), hw / 4, hw / 4]
        );
        let all = cls.forward_t(&out, (hw, hw), true);
        assert_eq!(all.size(), [2, 16, hw, hw]);
        assert_eq!(cls.logits_of(&all, 2).size(), [2, 4, hw, hw]);
        assert_eq!(
            model.last_layer_weight().size(),
            cls.last_layer_weight(3).size()
        );
    }

    #[test]
    fn tiny_model_keeps_input_resolution() {
        shapes(&ModelConfig::tiny(), 32);
    }

    #[test]
    fn cpu_small_model_keeps_input_resolution() {
        shapes(&ModelConfig::cpu_small(), 64);
    }

    #[test]
    fn output_stride_8_and_bottleneck_backbones_build() {
        let mut cfg = ModelConfig::tiny();
        cfg.backbone.output_stride = 8;
        shapes(&cfg, 32);
        cfg.backbone.depth = 50;
        cfg.backbone.output_stride = 16;
        shapes(&cfg, 32);
    }

    #[test]
    fn resnet101_builds_with_paper_layer_counts() {
        let mut cfg = ModelConfig::paper();
        cfg.backbone.width = 0.0625;
        cfg.aspp_channels = 8;
        cfg.decoder_channels = 8;
        shapes(&cfg, 32);
    }

    #[test]
    fn grouped_classifiers_are_independent() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig::tiny();
        let names = ["flair", "t1ce", "t1", "t2"];
        let model = MultimodalSegmenter::new(&vs.root(), &cfg, &names);
        let cls = ModalityClassifiers::new(&vs.root(), &cfg, &names);
        let xs = Tensor::randn([2, 4, 32, 32], (Kind::Float, Device::Cpu));
        let out = model.forward_t(&xs, false);
        let before = cls.logits_of(&cls.forward_t(&out, (32, 32), false), 0);
        // Changing modality 2's input changes classifier 2's logits, never classifier 0's.
        let xs2 = xs.copy();
        let _ = xs2.narrow(1, 2, 1).fill_(5.0);
        let out2 = model.forward_t(&xs2, false);
        let all2 = cls.forward_t(&out2, (32, 32), false);
        assert!(cls.logits_of(&all2, 0).allclose(&before, 1e-6, 1e-6, false));
        let before2 = cls.logits_of(&cls.forward_t(&out, (32, 32), false), 2);
        assert!(!cls
            .logits_of(&all2, 2)
            .allclose(&before2, 1e-6, 1e-6, false));
    }

    #[test]
    fn encoders_are_named_by_modality() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = MultimodalSegmenter::new(&vs.root(), &ModelConfig::tiny(), &["flair", "t2"]);
        assert_eq!(model.modality_names, ["flair", "t2"]);
        let vars = vs.variables();
        assert!(vars
            .keys()
            .any(|k| k.starts_with("encoders.t2.backbone.layer4.")));
        assert!(vars.contains_key("fusion.last.weight"));
    }
}
