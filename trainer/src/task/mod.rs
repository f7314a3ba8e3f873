//! What the trainer optimises and how CGGM measures each modality: a `Task` gives the loss, the
//! per-batch "higher is better" metric behind the balance coefficients, and how logits become a
//! prediction. Segmentation is the product's task; classification and regression plug into the
//! same trainer through the same trait (their heads: attention layers + linear, see DESIGN.md).

pub mod classification;
pub mod regression;
pub mod segmentation;

use tch::Tensor;

pub trait Task {
    /// Task loss L_task (also each classifier's loss L_cls_i). Differentiable, scalar.
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor;
    /// Per-batch metric eps_i^t used by CGGM: segmentation = mean ET/TC/WT Dice, classification =
    /// accuracy, regression = sign accuracy.
    fn batch_metric(&self, logits: &Tensor, target: &Tensor) -> f64;
}
