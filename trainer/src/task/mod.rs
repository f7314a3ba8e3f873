//! What the trainer optimises and how CGGM measures each modality: a `Task` gives the loss, the
//! per-batch "higher is better" metric behind the balance coefficients, and how logits become a
//! prediction. Segmentation is the product's task; classification and regression plug into the
//! same trainer through the same trait (their heads: attention layers + linear, see README "Feature datasets").

pub mod classification;
pub use cggm_core::task::{metrics, TaskKind};
pub mod regression;
pub mod segmentation;

use tch::Tensor;

/// The predicted class at each position of logits [B, C, ...]: the first maximum over dim 1.
/// `max_dim`, not `argmax`: libtorch's CPU argmax over a dimension that is not the innermost is
/// about 12x slower (18.7 vs 1.5 ms for [64, 4, 64, 64] on 2 cores); both take the first maximum.
pub fn class_indices(logits: &Tensor) -> Tensor {
    logits.max_dim(1, false).1
}

pub trait Task: Send {
    /// Task loss L_task (also each classifier's loss L_cls_i). Differentiable, scalar.
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor;
    /// Per-batch metric eps_i^t used by CGGM: segmentation = mean ET/TC/WT Dice, classification =
    /// accuracy, regression = sign accuracy.
    fn batch_metric(&self, logits: &Tensor, target: &Tensor) -> f64;
    /// The sum of `loss` over several logits for one target (the M classifiers' L_cls_i). A task
    /// may compute it in one batched pass.
    fn summed_loss(&self, logits: &[Tensor], target: &Tensor) -> Tensor {
        logits
            .iter()
            .map(|l| self.loss(l, target))
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([], (tch::Kind::Float, target.device())))
    }
    /// `batch_metric` of each of several logits for one target, in order.
    fn batch_metrics(&self, logits: &[Tensor], target: &Tensor) -> Vec<f64> {
        logits
            .iter()
            .map(|l| self.batch_metric(l, target))
            .collect()
    }
}
