//! An inference-only copy of the segmentation network: every conv + batch-norm pair folded into
//! one convolution with a bias (batch norm with running statistics is an affine map), weights
//! detached and cast once to the inference dtype (bf16 where the device computes it natively, see
//! `amp::inference_dtype`), ReLUs and residual additions in place. It computes the same function
//! as `MultimodalSegmenter::forward_t(xs, false)` (the equality is tested in `eval.rs`) with
//! about half the memory traffic: no separate normalisation pass, no autocast casts per call.
//!
//! Build it from the trained model right before predicting (weights change while training).

use super::decoder::{interleave_groups, Decoder};
use super::resnet::{channels_last, Block, ConvBn, ConvGeometry, FoldedConv, ResNet};
use super::{ModalityClassifiers, MultimodalSegmenter};
use tch::{Kind, Tensor};

pub(crate) struct FoldedBlock {
    pub(crate) convs: Vec<FoldedConv>,
    pub(crate) downsample: Option<FoldedConv>,
}

pub(crate) struct FoldedEncoder {
    pub(crate) stem: FoldedConv,
    pub(crate) stages: Vec<Vec<FoldedBlock>>,
    pub(crate) aspp_branches: Vec<FoldedConv>,
    pub(crate) aspp_pooling: FoldedConv,
    pub(crate) aspp_project: FoldedConv,
}

pub(crate) struct FoldedDecoder {
    pub(crate) high_proj: FoldedConv,
    pub(crate) low_proj: FoldedConv,
    pub(crate) refine: Vec<FoldedConv>,
    pub(crate) last: FoldedConv,
    pub(crate) groups: i64,
}

/// The segmenter (and optionally its per-modality classifiers) ready for inference.
pub struct FoldedSegmenter {
    pub(crate) encoders: Vec<FoldedEncoder>,
    pub(crate) head: FoldedDecoder,
    classifiers: Option<(FoldedDecoder, i64)>,
    kind: Kind,
}

/// Output of one folded forward pass: the fused logits and, when the classifiers were folded,
/// every classifier's logits side by side ([B, M * classes, H, W]).
pub struct FoldedOutput {
    pub logits: Tensor,
    pub classifier_logits: Option<Tensor>,
    classes: i64,
}

impl FoldedOutput {
    /// Classifier i's logits [B, classes, H, W].
    pub fn classifier(&self, i: usize) -> Option<Tensor> {
        self.classifier_logits
            .as_ref()
            .map(|all| all.narrow(1, i as i64 * self.classes, self.classes))
    }
}

fn fold_all(convs: &[ConvBn], kind: Kind) -> Vec<FoldedConv> {
    convs.iter().map(|c| c.folded(kind)).collect()
}

fn fold_block(b: &Block, kind: Kind) -> FoldedBlock {
    FoldedBlock {
        convs: fold_all(&b.convs, kind),
        downsample: b.downsample.as_ref().map(|d| d.folded(kind)),
    }
}

fn fold_backbone(r: &ResNet, kind: Kind) -> (FoldedConv, Vec<Vec<FoldedBlock>>) {
    (
        r.stem.folded(kind),
        r.stages
            .iter()
            .map(|blocks| blocks.iter().map(|b| fold_block(b, kind)).collect())
            .collect(),
    )
}

fn fold_decoder(d: &Decoder, kind: Kind) -> FoldedDecoder {
    FoldedDecoder {
        high_proj: d.high_proj.folded(kind),
        low_proj: d.low_proj.folded(kind),
        refine: fold_all(&d.refine, kind),
        last: FoldedConv::plain(
            &d.last,
            ConvGeometry {
                stride: 1,
                padding: 0,
                dilation: 1,
                groups: d.groups,
            },
            kind,
        ),
        groups: d.groups,
    }
}

impl FoldedSegmenter {
    /// Folds `model` (and `classifiers`, if given) into `kind` (Float, BFloat16 or Half). The
    /// encoders stay separate even where training groups them (`grouped.rs`): one grouped
    /// bf16 channels-last encoder measured 1.2-1.4x slower per case on the CPU.
    pub fn new(
        model: &MultimodalSegmenter,
        classifiers: Option<&ModalityClassifiers>,
        kind: Kind,
    ) -> Self {
        let encoders = model
            .encoders
            .iter()
            .map(|e| {
                let (stem, stages) = fold_backbone(&e.backbone, kind);
                FoldedEncoder {
                    stem,
                    stages,
                    aspp_branches: fold_all(&e.aspp.branches, kind),
                    aspp_pooling: e.aspp.pooling.folded(kind),
                    aspp_project: e.aspp.project.folded(kind),
                }
            })
            .collect();
        Self {
            encoders,
            head: fold_decoder(&model.head, kind),
            classifiers: classifiers.map(|c| (fold_decoder(&c.decoder, kind), c.classes)),
            kind,
        }
    }

    /// The dtype the weights were folded into; inputs are cast to it.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// xs: [B, M, H, W] (any float dtype) -> logits [B, classes, H, W] in `kind`, laid out
    /// channels-last. Run it under `tch::no_grad` (the weights are detached; no graph is built
    /// either way).
    pub fn forward(&self, xs: &Tensor) -> FoldedOutput {
        let (h, w) = (xs.size()[2], xs.size()[3]);
        let xs = xs.to_kind(self.kind);
        let features: Vec<(Tensor, Tensor)> = self
            .encoders
            .iter()
            .enumerate()
            .map(|(i, enc)| enc.forward(&channels_last(&xs.narrow(1, i as i64, 1))))
            .collect();
        let high = Tensor::cat(&features.iter().map(|f| &f.0).collect::<Vec<_>>(), 1);
        let low = Tensor::cat(&features.iter().map(|f| &f.1).collect::<Vec<_>>(), 1);
        drop(features);
        let logits = self.head.forward(&high, &low, (h, w));
        let (classifier_logits, classes) = match &self.classifiers {
            Some((decoder, classes)) => (Some(decoder.forward(&high, &low, (h, w))), *classes),
            None => (None, 0),
        };
        FoldedOutput {
            logits,
            classifier_logits,
            classes,
        }
    }
}

impl FoldedBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut ys = self.convs[0].forward(xs);
        for conv in &self.convs[1..] {
            let _ = ys.relu_();
            ys = conv.forward(&ys);
        }
        // In place on this block's own fresh output; the block's input is never written.
        let shortcut = match &self.downsample {
            Some(down) => down.forward(xs),
            None => xs.shallow_clone(),
        };
        let _ = ys.g_add_(&shortcut);
        let _ = ys.relu_();
        ys
    }
}

impl FoldedEncoder {
    /// xs: [B, 1, H, W] -> (high [B, aspp, H/OS, W/OS], low [B, low_ch, H/4, W/4]).
    fn forward(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let mut ys = self.stem.forward(xs);
        let _ = ys.relu_();
        let mut ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut low = None;
        for (s, blocks) in self.stages.iter().enumerate() {
            for block in blocks {
                ys = block.forward(&ys);
            }
            if s == 0 {
                low = Some(ys.shallow_clone());
            }
        }
        let low = low.expect("ResNet has four stages");
        // ASPP (dropout is the identity at inference).
        let (h, w) = (ys.size()[2], ys.size()[3]);
        let mut outs: Vec<Tensor> = self
            .aspp_branches
            .iter()
            .map(|b| {
                let mut o = b.forward(&ys);
                let _ = o.relu_();
                o
            })
            .collect();
        let mut pooled = self.aspp_pooling.forward(&ys.adaptive_avg_pool2d([1, 1]));
        let _ = pooled.relu_();
        outs.push(pooled.upsample_bilinear2d([h, w], false, None, None));
        let mut high = self.aspp_project.forward(&Tensor::cat(&outs, 1));
        let _ = high.relu_();
        (high, low)
    }
}

impl FoldedDecoder {
    fn forward(&self, high: &Tensor, low: &Tensor, out_hw: (i64, i64)) -> Tensor {
        let (h, w) = (low.size()[2], low.size()[3]);
        let mut hp = self.high_proj.forward(high);
        let _ = hp.relu_();
        let high = hp.upsample_bilinear2d([h, w], false, None, None);
        let mut low = self.low_proj.forward(low);
        let _ = low.relu_();
        let mut ys = interleave_groups(&[high, low], self.groups);
        for conv in &self.refine {
            ys = conv.forward(&ys);
            let _ = ys.relu_();
        }
        self.last
            .forward(&ys)
            .upsample_bilinear2d([out_hw.0, out_hw.1], false, None, None)
    }
}
