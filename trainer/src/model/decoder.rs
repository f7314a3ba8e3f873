//! DeepLabv3+ decoder (Chen et al., 2018): project the low-level feature, upsample the high-level
//! one onto it, refine with 3x3 convolutions, and end in a 1x1 convolution to class logits. The
//! fusion head and the per-modality classifiers are both instances; CGGM reads the gradient of
//! `last`, so both instances end in a layer of the same shape.

use super::resnet::{conv_bn, ConvBn};
use tch::{nn, nn::ModuleT, Tensor};

#[derive(Clone, Debug)]
pub struct DecoderSpec {
    pub high_in: i64,
    pub low_in: i64,
    pub high_proj: i64,
    pub low_proj: i64,
    pub mid: i64,
    pub refine_convs: usize,
    /// Kernel of the refinement convolutions: 3 in the fusion head, 1 in the light classifiers.
    pub refine_kernel: i64,
    pub classes: i64,
}

#[derive(Debug)]
pub struct Decoder {
    high_proj: ConvBn,
    low_proj: ConvBn,
    refine: Vec<ConvBn>,
    /// The 1x1 convolution to class logits (the "last layer" of CGGM).
    pub last: nn::Conv2D,
}

impl Decoder {
    pub fn new(p: &nn::Path, spec: &DecoderSpec) -> Self {
        let high_proj = conv_bn(&(p / "high_proj"), spec.high_in, spec.high_proj, 1, 1, 1);
        let low_proj = conv_bn(&(p / "low_proj"), spec.low_in, spec.low_proj, 1, 1, 1);
        let mut refine = Vec::new();
        let mut cin = spec.high_proj + spec.low_proj;
        for i in 0..spec.refine_convs {
            refine.push(conv_bn(&(p / format!("refine{i}")), cin, spec.mid, spec.refine_kernel, 1, 1));
            cin = spec.mid;
        }
        let last = nn::conv2d(p / "last", cin, spec.classes, 1, Default::default());
        Self { high_proj, low_proj, refine, last }
    }

    /// The refined feature just before `last`: [B, mid, H/4, W/4].
    /// high: [B, high_in, H/OS, W/OS], low: [B, low_in, H/4, W/4]
    pub fn penultimate(&self, high: &Tensor, low: &Tensor, train: bool) -> Tensor {
        let (h, w) = (low.size()[2], low.size()[3]);
        let high = self.high_proj.forward_t(high, train).relu().upsample_bilinear2d([h, w], false, None, None);
        let low = self.low_proj.forward_t(low, train).relu();
        let mut ys = Tensor::cat(&[high, low], 1);
        for conv in &self.refine {
            ys = conv.forward_t(&ys, train).relu();
        }
        ys
    }

    /// Logits at the input resolution: [B, classes, out_h, out_w].
    pub fn forward_t(&self, high: &Tensor, low: &Tensor, out_hw: (i64, i64), train: bool) -> Tensor {
        self.penultimate(high, low, train)
            .apply(&self.last)
            .upsample_bilinear2d([out_hw.0, out_hw.1], false, None, None)
    }
}
