//! Multimodal classification: cross-entropy; CGGM's batch metric is accuracy.

use super::Task;
use tch::{Kind, Reduction, Tensor};

#[derive(Clone, Debug, Default)]
pub struct Classification;

impl Task for Classification {
    /// logits: [B, C] (fp32 or, under autocast, bf16: the loss is taken in fp32), target: [B]
    /// int64.
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
            target,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )
    }

    fn batch_metric(&self, logits: &Tensor, target: &Tensor) -> f64 {
        logits
            .argmax(1, false)
            .eq_tensor(target)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_argmax_hits() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 3.0, 1.0, 0.0]).view([3, 2]);
        let target = Tensor::from_slice(&[0i64, 1, 1]);
        assert!((Classification.batch_metric(&logits, &target) - 2.0 / 3.0).abs() < 1e-6);
        assert!(Classification.loss(&logits, &target).double_value(&[]) > 0.0);
    }
}
