//! ResNet backbone (He et al., 2016) for one MRI modality, with the dilated last stages DeepLabv3+
//! uses (Chen et al., 2018) to reach output stride 16 or 8.

use super::conv::conv2d;
pub use cggm_core::model_config::ResNetConfig;
use tch::{nn, nn::ModuleT, Kind, Tensor};

pub(crate) fn conv_bn(
    p: &nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    dilation: i64,
) -> ConvBn {
    ConvBn::new(p, cin, cout, k, stride, dilation, 1)
}

/// `groups` independent convolutions in one op (channels split evenly into the groups).
pub(crate) fn grouped_conv_bn(p: &nn::Path, cin: i64, cout: i64, k: i64, groups: i64) -> ConvBn {
    ConvBn::new(p, cin, cout, k, 1, 1, groups)
}

/// conv (no bias) + batch norm; the ReLU is left to the caller.
#[derive(Debug)]
pub(crate) struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    /// The convolution's geometry (tch keeps its own config private): what `folded` needs.
    geometry: ConvGeometry,
}

/// Stride, padding, dilation and groups of a square 2-D convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeometry {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
}

impl ConvBn {
    fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        dilation: i64,
        groups: i64,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            groups,
            padding: dilation * (k - 1) / 2,
            dilation,
            bias: false,
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(p / "conv", cin, cout, k, cfg),
            bn: nn::batch_norm2d(p / "bn", cout, Default::default()),
            geometry: ConvGeometry {
                stride,
                padding: cfg.padding,
                dilation,
                groups,
            },
        }
    }

    /// This conv + eval-mode batch norm as one convolution with a bias, in `kind`: batch norm
    /// with running statistics is the affine map y = (x - mean) * gamma / sqrt(var + eps) + beta,
    /// so it folds into the weights (scaled per output channel) and a bias. Computed in f64.
    pub(crate) fn folded(&self, kind: Kind) -> FoldedConv {
        let eps = nn::BatchNormConfig::default().eps;
        let bn = &self.bn;
        let f64_of = |t: &Tensor| t.detach().to_kind(Kind::Double);
        let mean = f64_of(&bn.running_mean);
        let scale = (f64_of(&bn.running_var) + eps).rsqrt();
        let scale = match &bn.ws {
            Some(gamma) => scale * f64_of(gamma),
            None => scale,
        };
        let shift = match &bn.bs {
            Some(beta) => f64_of(beta) - &mean * &scale,
            None => -(&mean * &scale),
        };
        FoldedConv {
            ws: channels_last(&(f64_of(&self.conv.ws) * scale.view([-1, 1, 1, 1])).to_kind(kind)),
            bs: Some(shift.to_kind(kind)),
            geometry: self.geometry,
        }
    }
}

/// The same [N, C, H, W] tensor laid out channels-last (NHWC strides). Convolutions (oneDNN)
/// keep that layout for their outputs, and on the CPU max pooling and the final argmax over
/// classes are several times faster on it than on NCHW (bf16 max pooling 4x, argmax 12x).
pub(crate) fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// An inference-only convolution (weights detached, already in the inference dtype).
#[derive(Debug)]
pub(crate) struct FoldedConv {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
    pub geometry: ConvGeometry,
}

impl FoldedConv {
    /// A plain convolution (the decoders' last layer) copied into `kind`.
    pub(crate) fn plain(conv: &nn::Conv2D, geometry: ConvGeometry, kind: Kind) -> Self {
        Self {
            ws: channels_last(&conv.ws.detach().to_kind(kind)),
            bs: conv.bs.as_ref().map(|b| b.detach().to_kind(kind)),
            geometry,
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Tensor {
        conv2d(xs, &self.ws, self.bs.as_ref(), self.geometry)
    }
}

impl ConvBn {
    /// `set` (one ConvBn per encoder, equal shapes) as one convolution with `set.len()` groups
    /// and one batch norm over the concatenated channels: xs [B, n * cin, h, w] -> [B, n * cout,
    /// h', w'], group i being `set[i]` applied to input group i. The weights are concatenated
    /// in the graph, so each layer's gradient reaches its own parameters; in training the
    /// updated running statistics are copied back to each layer.
    pub(crate) fn forward_grouped(set: &[&ConvBn], xs: &Tensor, train: bool) -> Tensor {
        let g = set[0].geometry;
        let groups = set.len() as i64 * g.groups;
        let ws = Tensor::cat(&set.iter().map(|c| &c.conv.ws).collect::<Vec<_>>(), 0);
        let ys = conv2d(xs, &ws, None, ConvGeometry { groups, ..g });
        let cat_of = |part: fn(&nn::BatchNorm) -> Option<&Tensor>| -> Option<Tensor> {
            let parts: Option<Vec<&Tensor>> = set.iter().map(|c| part(&c.bn)).collect();
            parts.map(|parts| Tensor::cat(&parts, 0))
        };
        let gamma = cat_of(|bn| bn.ws.as_ref());
        let beta = cat_of(|bn| bn.bs.as_ref());
        let running = |part: fn(&nn::BatchNorm) -> &Tensor| {
            Tensor::cat(&set.iter().map(|c| part(&c.bn)).collect::<Vec<_>>(), 0)
        };
        let mean = running(|bn| &bn.running_mean);
        let var = running(|bn| &bn.running_var);
        let config = nn::BatchNormConfig::default();
        let out = ys.batch_norm(
            gamma.as_ref(),
            beta.as_ref(),
            Some(&mean),
            Some(&var),
            train,
            config.momentum,
            config.eps,
            config.cudnn_enabled,
        );
        if train {
            copy_back_running_stats(set, &mean, &var);
        }
        out
    }
}

/// batch_norm updated the concatenated running statistics in place: give each layer its part.
fn copy_back_running_stats(set: &[&ConvBn], mean: &Tensor, var: &Tensor) {
    tch::no_grad(|| {
        let mut start = 0;
        for c in set {
            let n = c.bn.running_mean.size()[0];
            c.bn.running_mean
                .shallow_clone()
                .copy_(&mean.narrow(0, start, n));
            c.bn.running_var
                .shallow_clone()
                .copy_(&var.narrow(0, start, n));
            start += n;
        }
    });
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        conv2d(xs, &self.conv.ws, self.conv.bs.as_ref(), self.geometry).apply_t(&self.bn, train)
    }
}

#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) convs: Vec<ConvBn>,
    pub(crate) downsample: Option<ConvBn>,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        cfg: &ResNetConfig,
        cin: i64,
        width: i64,
        stride: i64,
        dilation: i64,
    ) -> Self {
        let cout = width * cfg.expansion();
        let convs = if cfg.bottleneck() {
            vec![
                conv_bn(&(p / "c1"), cin, width, 1, 1, 1),
                conv_bn(&(p / "c2"), width, width, 3, stride, dilation),
                conv_bn(&(p / "c3"), width, cout, 1, 1, 1),
            ]
        } else {
            vec![
                conv_bn(&(p / "c1"), cin, width, 3, stride, dilation),
                conv_bn(&(p / "c2"), width, cout, 3, 1, dilation),
            ]
        };
        let downsample =
            (stride != 1 || cin != cout).then(|| conv_bn(&(p / "down"), cin, cout, 1, stride, 1));
        Self { convs, downsample }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut ys = xs.shallow_clone();
        for (i, conv) in self.convs.iter().enumerate() {
            ys = conv.forward_t(&ys, train);
            if i != last {
                ys = ys.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some(down) => down.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

#[derive(Debug)]
pub struct ResNet {
    pub(crate) stem: ConvBn,
    pub(crate) stages: Vec<Vec<Block>>,
}

/// The two features DeepLabv3+ needs from a backbone.
pub struct BackboneFeatures {
    /// [B, low_level_channels, H/4, W/4]
    pub low: Tensor,
    /// [B, high_level_channels, H/OS, W/OS]
    pub high: Tensor,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: &ResNetConfig) -> Self {
        let stem = conv_bn(&(p / "stem"), cfg.in_channels, cfg.stage_width(0), 7, 2, 1);
        // (stride, dilation) per stage; dilation replaces the stride of the last stages.
        let plan: [(i64, i64); 4] = if cfg.output_stride == 8 {
            [(1, 1), (2, 1), (1, 2), (1, 4)]
        } else {
            [(1, 1), (2, 1), (2, 1), (1, 2)]
        };
        let mut cin = cfg.stage_width(0);
        let mut stages = Vec::new();
        for (s, (&n, &(stride, dilation))) in cfg.blocks().iter().zip(plan.iter()).enumerate() {
            let sp = p / format!("layer{}", s + 1);
            let width = cfg.stage_width(s);
            let mut blocks = Vec::new();
            for b in 0..n {
                let stride = if b == 0 { stride } else { 1 };
                blocks.push(Block::new(&(&sp / b), cfg, cin, width, stride, dilation));
                cin = width * cfg.expansion();
            }
            stages.push(blocks);
        }
        Self { stem, stages }
    }

    /// xs: [B, in_channels, H, W]
    pub fn features(&self, xs: &Tensor, train: bool) -> BackboneFeatures {
        let mut ys =
            self.stem
                .forward_t(xs, train)
                .relu()
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut low = None;
        for (s, blocks) in self.stages.iter().enumerate() {
            for block in blocks {
                ys = block.forward_t(&ys, train);
            }
            if s == 0 {
                low = Some(ys.shallow_clone());
            }
        }
        BackboneFeatures {
            low: low.expect("ResNet has four stages"),
            high: ys,
        }
    }
}
