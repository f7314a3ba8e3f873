//! The shapes of the networks (segmentation DeepLabv3+ with ResNet encoders, the feature tasks' MulT
//! Transformers): plain data, saved in `config.json`; the trainer builds the networks from them.

use serde::{Deserialize, Serialize};

/// Why a network shape was refused: the field, its value and the values it may take.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelConfigError {
    #[error("backbone depth {0} is not one of 18, 34, 50, 101")]
    Depth(usize),
    #[error("output stride {0} is not 8 or 16")]
    OutputStride(usize),
    #[error("width multiplier {0} is not in (0, 4]")]
    Width(f64),
    #[error("{name} must be at least 1, got {value}")]
    Channels { name: &'static str, value: i64 },
    #[error("classes must be at least 2, got {0}")]
    Classes(i64),
    #[error(
        "features.proj_dim ({proj_dim}) must be a positive multiple of features.heads ({heads})"
    )]
    ProjDim { proj_dim: i64, heads: i64 },
    #[error("features.layers and features.classifier_layers must be at least 1")]
    Layers,
    #[error("features.{name} must be in [0, 1), got {value}")]
    Dropout { name: &'static str, value: f64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub backbone: ResNetConfig,
    pub aspp_channels: i64,
    /// Width of the fusion head's refinement and of the input of every "last layer".
    pub decoder_channels: i64,
    pub low_level_proj: i64,
    /// Width the classifiers project h_i to (they stay light: one refinement conv).
    pub classifier_channels: i64,
    pub classes: i64,
    /// The per-modality classifiers' decoder: `light` (one 1x1 refinement, the default) or
    /// `full` (two 3x3 refinements like the fusion head, as the authors' classifiers are).
    #[serde(default)]
    pub classifier_design: ClassifierDesign,
    /// How the modality encoders run: one grouped network or one network each (the same
    /// function either way; only the speed differs). Not written to `config.json` when `auto`.
    #[serde(default, skip_serializing_if = "EncoderLayout::is_auto")]
    pub encoders: EncoderLayout,
}

/// How the M modality encoders (identical architectures, separate weights) are executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderLayout {
    /// `grouped` where it was measured faster (basic-block backbones, ResNet-18/34, on a CPU),
    /// else `separate`.
    #[default]
    Auto,
    /// One network per modality, as the paper draws it.
    Separate,
    /// All modalities as one network whose every convolution has M groups and whose batch norms
    /// hold M x the channels: group i is encoder i's weights, so the result is the separate
    /// encoders' (up to floating-point summation order) in a quarter of the operator calls.
    Grouped,
}

impl EncoderLayout {
    pub fn is_auto(&self) -> bool {
        *self == EncoderLayout::Auto
    }

    /// Whether to run the encoders grouped on this device (`on_cpu`) for this backbone.
    /// Measured (PyTorch 2.13, 2 CPU cores, 4 encoders, forward + backward): ResNet-18 at 1/4
    /// width, batch 16, crop 64: grouped 0.47x the separate encoders' time; ResNet-101, batch 2,
    /// crop 64: 1.36x (slower), so bottleneck backbones stay separate. Not measured on CUDA.
    pub fn grouped(&self, backbone: &ResNetConfig, on_cpu: bool) -> bool {
        match self {
            EncoderLayout::Auto => on_cpu && !backbone.bottleneck(),
            EncoderLayout::Separate => false,
            EncoderLayout::Grouped => true,
        }
    }
}

/// How much decoder each per-modality classifier gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassifierDesign {
    /// One 1x1 refinement: the method's overhead stays small next to the encoders.
    #[default]
    Light,
    /// Two 3x3 refinements, the fusion head's decoder: a less noisy eps_i at a higher cost.
    Full,
}

impl ModelConfig {
    /// The authors' setting: ResNet-101, output stride 16, 256-channel ASPP and decoder.
    pub fn paper() -> Self {
        Self {
            backbone: ResNetConfig {
                depth: 101,
                width: 1.0,
                output_stride: 16,
                in_channels: 1,
            },
            aspp_channels: 256,
            decoder_channels: 256,
            low_level_proj: 48,
            classifier_channels: 64,
            classes: 4,
            classifier_design: ClassifierDesign::Light,
            encoders: EncoderLayout::Auto,
        }
    }

    /// ResNet-18 at a quarter width: trains in minutes on two CPU cores.
    pub fn cpu_small() -> Self {
        Self {
            backbone: ResNetConfig {
                depth: 18,
                width: 0.25,
                output_stride: 16,
                in_channels: 1,
            },
            aspp_channels: 64,
            decoder_channels: 64,
            low_level_proj: 16,
            classifier_channels: 32,
            classes: 4,
            classifier_design: ClassifierDesign::Light,
            encoders: EncoderLayout::Auto,
        }
    }

    /// The smallest useful network, for tests: seconds per epoch.
    pub fn tiny() -> Self {
        Self {
            backbone: ResNetConfig {
                depth: 18,
                width: 0.125,
                output_stride: 16,
                in_channels: 1,
            },
            aspp_channels: 16,
            decoder_channels: 16,
            low_level_proj: 8,
            classifier_channels: 8,
            classes: 4,
            classifier_design: ClassifierDesign::Light,
            encoders: EncoderLayout::Auto,
        }
    }

    pub fn validate(&self) -> Result<(), ModelConfigError> {
        self.backbone.validate()?;
        for (name, v) in [
            ("aspp_channels", self.aspp_channels),
            ("decoder_channels", self.decoder_channels),
            ("low_level_proj", self.low_level_proj),
            ("classifier_channels", self.classifier_channels),
        ] {
            if v < 1 {
                return Err(ModelConfigError::Channels { name, value: v });
            }
        }
        if self.classes < 2 {
            return Err(ModelConfigError::Classes(self.classes));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// 18, 34 (basic blocks) or 50, 101 (bottlenecks).
    pub depth: usize,
    /// Multiplies every stage's width (1.0 = the standard 64-128-256-512).
    pub width: f64,
    /// 16 or 8: the last one or two stages are dilated instead of strided.
    pub output_stride: usize,
    pub in_channels: i64,
}

impl ResNetConfig {
    pub fn blocks(&self) -> [usize; 4] {
        match self.depth {
            18 => [2, 2, 2, 2],
            34 | 50 => [3, 4, 6, 3],
            101 => [3, 4, 23, 3],
            other => panic!("ResNet depth {other} is not one of 18, 34, 50, 101"),
        }
    }

    pub fn bottleneck(&self) -> bool {
        self.depth >= 50
    }

    pub fn expansion(&self) -> i64 {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }

    pub fn stage_width(&self, stage: usize) -> i64 {
        ((64 << stage) as f64 * self.width).round().max(4.0) as i64
    }

    /// Channels of the low-level feature (end of stage 1, stride 4).
    pub fn low_level_channels(&self) -> i64 {
        self.stage_width(0) * self.expansion()
    }

    /// Channels of the high-level feature (end of stage 4).
    pub fn high_level_channels(&self) -> i64 {
        self.stage_width(3) * self.expansion()
    }

    pub fn validate(&self) -> Result<(), ModelConfigError> {
        if ![18, 34, 50, 101].contains(&self.depth) {
            return Err(ModelConfigError::Depth(self.depth));
        }
        if ![8, 16].contains(&self.output_stride) {
            return Err(ModelConfigError::OutputStride(self.output_stride));
        }
        if !(self.width > 0.0 && self.width <= 4.0) {
            return Err(ModelConfigError::Width(self.width));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureModelConfig {
    pub proj_dim: i64,
    pub heads: i64,
    /// Layers of each modality's encoder; the fusion has `layers - 2` (at least 1), as theirs.
    pub layers: usize,
    /// Layers of each classifier's Transformer.
    pub classifier_layers: usize,
    pub attn_dropout: f64,
    pub relu_dropout: f64,
    pub res_dropout: f64,
    pub embed_dropout: f64,
    pub out_dropout: f64,
}

impl Default for FeatureModelConfig {
    fn default() -> Self {
        Self::cpu()
    }
}

impl FeatureModelConfig {
    /// CMU-MOSI (run/mosi_run.py): proj 40, 5 heads, 5 layers, dropouts 0.15/0.15/0.1/0.2/0.1.
    pub fn mosi() -> Self {
        Self {
            proj_dim: 40,
            heads: 5,
            layers: 5,
            classifier_layers: 2,
            attn_dropout: 0.15,
            relu_dropout: 0.15,
            res_dropout: 0.1,
            embed_dropout: 0.2,
            out_dropout: 0.1,
        }
    }

    /// IEMOCAP (run/iemo_run.py): 4 layers, residual dropout 0.15, output dropout 0.2.
    pub fn iemocap() -> Self {
        Self {
            layers: 4,
            res_dropout: 0.15,
            out_dropout: 0.2,
            ..Self::mosi()
        }
    }

    /// UPMC-Food 101 (run/food_run.py): 4 layers, attention dropout 0.2, residual 0.15.
    pub fn food101() -> Self {
        Self {
            layers: 4,
            attn_dropout: 0.2,
            res_dropout: 0.15,
            ..Self::mosi()
        }
    }

    /// Small enough to train the synthetic feature set on a CPU in about a minute.
    pub fn cpu() -> Self {
        Self {
            proj_dim: 32,
            heads: 4,
            layers: 3,
            classifier_layers: 1,
            attn_dropout: 0.1,
            relu_dropout: 0.1,
            res_dropout: 0.1,
            embed_dropout: 0.1,
            out_dropout: 0.1,
        }
    }

    pub fn validate(&self) -> Result<(), ModelConfigError> {
        if self.proj_dim < 1 || self.heads < 1 || self.proj_dim % self.heads != 0 {
            return Err(ModelConfigError::ProjDim {
                proj_dim: self.proj_dim,
                heads: self.heads,
            });
        }
        if self.layers < 1 || self.classifier_layers < 1 {
            return Err(ModelConfigError::Layers);
        }
        for (name, p) in [
            ("attn_dropout", self.attn_dropout),
            ("relu_dropout", self.relu_dropout),
            ("res_dropout", self.res_dropout),
            ("embed_dropout", self.embed_dropout),
            ("out_dropout", self.out_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(ModelConfigError::Dropout { name, value: p });
            }
        }
        Ok(())
    }

    pub fn transformer(&self, layers: usize) -> TransformerConfig {
        TransformerConfig {
            embed_dim: self.proj_dim,
            heads: self.heads,
            layers,
            attn_dropout: self.attn_dropout,
            relu_dropout: self.relu_dropout,
            res_dropout: self.res_dropout,
            embed_dropout: self.embed_dropout,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    pub embed_dim: i64,
    pub heads: i64,
    pub layers: usize,
    pub attn_dropout: f64,
    pub relu_dropout: f64,
    pub res_dropout: f64,
    pub embed_dropout: f64,
}
