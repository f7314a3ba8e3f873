//! One modality's encoder phi_i: ResNet backbone + ASPP, giving the high-level feature h_i and the
//! low-level feature l_i that DeepLabv3+ decodes.

use super::aspp::Aspp;
use super::resnet::{ResNet, ResNetConfig};
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Encoder {
    pub(crate) backbone: ResNet,
    pub(crate) aspp: Aspp,
}

pub struct EncoderFeatures {
    /// [B, aspp_channels, H/OS, W/OS]
    pub high: Tensor,
    /// [B, low_level_channels, H/4, W/4]
    pub low: Tensor,
}

impl Encoder {
    pub fn new(p: &nn::Path, backbone: &ResNetConfig, aspp_channels: i64) -> Self {
        let rates: Vec<i64> = if backbone.output_stride == 8 {
            vec![12, 24, 36]
        } else {
            vec![6, 12, 18]
        };
        Self {
            backbone: ResNet::new(&(p / "backbone"), backbone),
            aspp: Aspp::new(
                &(p / "aspp"),
                backbone.high_level_channels(),
                aspp_channels,
                &rates,
            ),
        }
    }

    /// xs: [B, 1, H, W]
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> EncoderFeatures {
        let f = self.backbone.features(xs, train);
        EncoderFeatures {
            high: self.aspp.forward_t(&f.high, train),
            low: f.low,
        }
    }
}
