//! Atrous Spatial Pyramid Pooling (DeepLabv3, Chen et al., 2017): parallel dilated convolutions and
//! image-level pooling over the backbone's high-level feature.

use super::resnet::{conv_bn, ConvBn};
use tch::{nn, nn::ModuleT, Tensor};

#[derive(Debug)]
pub struct Aspp {
    pub(crate) branches: Vec<ConvBn>,
    pub(crate) pooling: ConvBn,
    pub(crate) project: ConvBn,
}

impl Aspp {
    /// `rates`: the dilations of the 3x3 branches (6, 12, 18 at output stride 16; doubled at 8).
    pub fn new(p: &nn::Path, cin: i64, cout: i64, rates: &[i64]) -> Self {
        let mut branches = vec![conv_bn(&(p / "b0"), cin, cout, 1, 1, 1)];
        for (i, &rate) in rates.iter().enumerate() {
            branches.push(conv_bn(&(p / format!("b{}", i + 1)), cin, cout, 3, 1, rate));
        }
        let pooling = conv_bn(&(p / "pool"), cin, cout, 1, 1, 1);
        let n = branches.len() as i64 + 1;
        let project = conv_bn(&(p / "project"), cout * n, cout, 1, 1, 1);
        Self {
            branches,
            pooling,
            project,
        }
    }

    /// xs: [B, cin, h, w] -> [B, cout, h, w]
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (h, w) = (xs.size()[2], xs.size()[3]);
        let mut outs: Vec<Tensor> = self
            .branches
            .iter()
            .map(|b| b.forward_t(xs, train).relu())
            .collect();
        // Batch norm over a 1x1 map needs more than one value per channel: skip its batch
        // statistics for a single-image training batch by using running statistics.
        let pooled = xs.adaptive_avg_pool2d([1, 1]);
        let pool_train = train && xs.size()[0] > 1;
        let pooled = self.pooling.forward_t(&pooled, pool_train).relu();
        outs.push(pooled.upsample_bilinear2d([h, w], false, None, None));
        let ys = Tensor::cat(&outs, 1);
        self.project
            .forward_t(&ys, train)
            .relu()
            .dropout(0.1, train)
    }
}
