//! Multimodal regression (e.g. sentiment intensity): L1 loss (the authors' `L1Loss` for MOSI);
//! CGGM's batch metric is Acc-2, the accuracy of the predicted sign (negative vs non-negative),
//! as in the paper.

use super::Task;
use tch::{Kind, Reduction, Tensor};

#[derive(Clone, Debug, Default)]
pub struct Regression;

impl Task for Regression {
    /// logits: [B] or [B, 1] (under autocast bf16: the loss is taken in fp32), target: [B] float.
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        logits
            .flatten(0, -1)
            .to_kind(Kind::Float)
            .l1_loss(&target.flatten(0, -1).to_kind(Kind::Float), Reduction::Mean)
    }

    fn batch_metric(&self, logits: &Tensor, target: &Tensor) -> f64 {
        let p = logits.flatten(0, -1).ge(0.0);
        let t = target.flatten(0, -1).ge(0.0);
        p.eq_tensor(&t)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_accuracy_ignores_magnitude() {
        let pred = Tensor::from_slice(&[0.1f32, -3.0, 2.0, -0.5]);
        let target = Tensor::from_slice(&[2.0f32, -1.0, -1.0, -2.0]);
        assert!((Regression.batch_metric(&pred, &target) - 0.75).abs() < 1e-6);
    }
}
