//! DeepLabv3+ decoder (Chen et al., 2018): project the low-level feature, upsample the high-level
//! one onto it, refine with 3x3 convolutions, and end in a 1x1 convolution to class logits. The
//! fusion head and the per-modality classifiers are both instances; CGGM reads the gradient of
//! `last`, so both instances end in a layer of the same shape.
//!
//! With `groups = M` one instance holds M independent decoders (grouped convolutions), one per
//! modality: the M classifiers then run as a handful of ops instead of M times as many.

use super::resnet::{grouped_conv_bn, ConvBn};
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
    /// Independent decoders held side by side; every width above is per group.
    pub groups: i64,
}

#[derive(Debug)]
pub struct Decoder {
    pub(crate) high_proj: ConvBn,
    pub(crate) low_proj: ConvBn,
    pub(crate) refine: Vec<ConvBn>,
    /// The 1x1 convolution to class logits (the "last layer" of CGGM); group i's rows are
    /// `i * classes .. (i + 1) * classes`.
    pub last: nn::Conv2D,
    pub(crate) groups: i64,
}

impl Decoder {
    pub fn new(p: &nn::Path, spec: &DecoderSpec) -> Self {
        let g = spec.groups;
        let high_proj = grouped_conv_bn(
            &(p / "high_proj"),
            spec.high_in * g,
            spec.high_proj * g,
            1,
            g,
        );
        let low_proj = grouped_conv_bn(&(p / "low_proj"), spec.low_in * g, spec.low_proj * g, 1, g);
        let mut refine = Vec::new();
        let mut cin = spec.high_proj + spec.low_proj;
        for i in 0..spec.refine_convs {
            let conv = grouped_conv_bn(
                &(p / format!("refine{i}")),
                cin * g,
                spec.mid * g,
                spec.refine_kernel,
                g,
            );
            refine.push(conv);
            cin = spec.mid;
        }
        let last_cfg = nn::ConvConfig {
            groups: g,
            ..Default::default()
        };
        let last = nn::conv2d(p / "last", cin * g, spec.classes * g, 1, last_cfg);
        Self {
            high_proj,
            low_proj,
            refine,
            last,
            groups: g,
        }
    }

    /// The refined feature just before `last`: [B, groups * mid, H/4, W/4].
    /// high: [B, groups * high_in, H/OS, W/OS], low: [B, groups * low_in, H/4, W/4] (group i's
    /// channels contiguous).
    pub fn penultimate(&self, high: &Tensor, low: &Tensor, train: bool) -> Tensor {
        let (h, w) = (low.size()[2], low.size()[3]);
        let high = self
            .high_proj
            .forward_t(high, train)
            .relu()
            .upsample_bilinear2d([h, w], false, None, None);
        let low = self.low_proj.forward_t(low, train).relu();
        // Each group's refinement sees its own [high_i, low_i]: interleave per group.
        let mut ys = interleave_groups(&[high, low], self.groups);
        for conv in &self.refine {
            ys = conv.forward_t(&ys, train).relu();
        }
        ys
    }

    /// Logits at the input resolution: [B, groups * classes, out_h, out_w].
    pub fn forward_t(
        &self,
        high: &Tensor,
        low: &Tensor,
        out_hw: (i64, i64),
        train: bool,
    ) -> Tensor {
        self.penultimate(high, low, train)
            .apply(&self.last)
            .upsample_bilinear2d([out_hw.0, out_hw.1], false, None, None)
    }
}

/// Tensors [B, n * c_k, h, w] that each hold n groups -> [B, n * sum(c_k), h, w] with group i's
/// parts of every tensor side by side (what concatenating group by group gives); n = 1 is a
/// plain concatenation. `reshape`, not `view`: channels-last inputs (inference) are accepted.
pub(crate) fn interleave_groups(parts: &[Tensor], n: i64) -> Tensor {
    if n == 1 {
        return Tensor::cat(parts, 1);
    }
    let size = parts[0].size();
    let (b, h, w) = (size[0], size[2], size[3]);
    let grouped: Vec<Tensor> = parts.iter().map(|t| t.reshape([b, n, -1, h, w])).collect();
    Tensor::cat(&grouped, 2).view([b, -1, h, w])
}
