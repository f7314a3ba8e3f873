//! Brain-tumour segmentation: 0.5 x class-weighted cross-entropy + 0.5 x (1 - soft foreground
//! Dice); the batch metric is the mean of WT/TC/ET Dice. Two soft Dice forms: the project's (mean
//! over the foreground classes of per-class Dice, smoothing 1 in numerator and denominator) and
//! the authors' (zrguo/CGGM `SegLoss`: one Dice pooling all foreground classes and pixels,
//! smoothing 0.01 in the denominator only), which the `paper` preset uses.

use super::Task;
use crate::metrics::{dice_scores, Region};
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentationLoss {
    pub ce_weight: f64,
    pub dice_weight: f64,
    /// Cross-entropy weight per class (background, NCR, ED, ET).
    pub class_weights: Vec<f64>,
    /// numbers (issue 8): which soft Dice the loss uses.
    #[serde(default)]
    pub dice: SoftDice,
}

/// The soft Dice term of the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoftDice {
    /// Mean over foreground classes of (2 I_c + 1) / (P_c + T_c + 1).
    #[default]
    PerClassMean,
    /// The authors' code: 2 sum_c I_c / (sum_c P_c + sum_c T_c + 0.01).
    AuthorsPooled,
}

impl Default for SegmentationLoss {
    fn default() -> Self {
        Self {
            ce_weight: 0.5,
            dice_weight: 0.5,
            class_weights: vec![0.2, 0.3, 0.25, 0.25],
            dice: SoftDice::PerClassMean,
        }
    }
}

impl SegmentationLoss {
    /// Foreground class probabilities and one-hot targets, both [B, C - 1, H, W] float.
    fn foreground(logits: &Tensor, target: &Tensor) -> (Tensor, Tensor) {
        let classes = logits.size()[1];
        let probs = logits.softmax(1, Kind::Float);
        let onehot = target
            .one_hot(classes)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        (
            probs.narrow(1, 1, classes - 1),
            onehot.narrow(1, 1, classes - 1),
        )
    }

    /// logits: [B, C, H, W] float, target: [B, H, W] int64 classes.
    pub fn soft_foreground_dice(logits: &Tensor, target: &Tensor) -> Tensor {
        let (fg_p, fg_t) = Self::foreground(logits, target);
        let dims: &[i64] = &[0, 2, 3];
        let inter = (&fg_p * &fg_t).sum_dim_intlist(dims, false, Kind::Float);
        let denom = fg_p.sum_dim_intlist(dims, false, Kind::Float)
            + fg_t.sum_dim_intlist(dims, false, Kind::Float);
        // Smoothing keeps classes absent from the batch from dominating (and from dividing by 0).
        ((inter * 2.0 + 1.0) / (denom + 1.0)).mean(Kind::Float)
    }

    /// The authors' soft Dice: all foreground classes and pixels pooled, smoothing 0.01 in the
    /// denominator only. logits: [B, C, H, W], target: [B, H, W] int64.
    pub fn pooled_foreground_dice(logits: &Tensor, target: &Tensor) -> Tensor {
        let (fg_p, fg_t) = Self::foreground(logits, target);
        let inter = (&fg_p * &fg_t).sum(Kind::Float);
        let union = fg_p.sum(Kind::Float) + fg_t.sum(Kind::Float) + 0.01;
        inter * 2.0 / union
    }
}

impl Task for SegmentationLoss {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        let weights = Tensor::from_slice(&self.class_weights)
            .to_kind(Kind::Float)
            .to_device(logits.device());
        let ce = logits.to_kind(Kind::Float).cross_entropy_loss(
            target,
            Some(weights),
            Reduction::Mean,
            -100,
            0.0,
        );
        let dice = match self.dice {
            SoftDice::PerClassMean => {
                Self::soft_foreground_dice(&logits.to_kind(Kind::Float), target)
            }
            SoftDice::AuthorsPooled => {
                Self::pooled_foreground_dice(&logits.to_kind(Kind::Float), target)
            }
        };
        ce * self.ce_weight + (1.0 - dice) * self.dice_weight
    }

    fn batch_metric(&self, logits: &Tensor, target: &Tensor) -> f64 {
        let pred = tensor_to_u8(&logits.argmax(1, false));
        let truth = tensor_to_u8(target);
        let s = dice_scores(&pred, &truth);
        debug_assert_eq!(Region::ALL.len(), 3);
        s.mean
    }
}

/// Flattens an integer tensor to host bytes (class indices fit in u8).
pub fn tensor_to_u8(t: &Tensor) -> Vec<u8> {
    let t = t
        .to_kind(Kind::Uint8)
        .to_device(tch::Device::Cpu)
        .flatten(0, -1)
        .contiguous();
    let n = t.numel();
    let mut out = vec![0u8; n];
    t.copy_data(&mut out, n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn perfect_logits_give_low_loss_and_metric_one() {
        let target = Tensor::from_slice(&[0i64, 1, 2, 3, 3, 0, 2, 2]).view([2, 2, 2]);
        let logits = target.one_hot(4).permute([0, 3, 1, 2]).to_kind(Kind::Float) * 20.0;
        let task = SegmentationLoss::default();
        assert!(task.loss(&logits, &target).double_value(&[]) < 0.05);
        assert_eq!(task.batch_metric(&logits, &target), 1.0);
        let wrong = Tensor::zeros([2, 4, 2, 2], (Kind::Float, Device::Cpu));
        assert!(task.loss(&wrong, &target).double_value(&[]) > 0.5);
    }

    #[test]
    fn the_authors_dice_pools_classes_so_a_missed_small_class_weighs_little() {
        // Truth: six oedema pixels and one ET pixel; the prediction gets the oedema and misses ET.
        let target = Tensor::from_slice(&[2i64, 2, 2, 2, 2, 2, 3, 0]).view([1, 2, 4]);
        let pred = Tensor::from_slice(&[2i64, 2, 2, 2, 2, 2, 0, 0]).view([1, 2, 4]);
        let logits = pred.one_hot(4).permute([0, 3, 1, 2]).to_kind(Kind::Float) * 30.0;
        let pooled = SegmentationLoss::pooled_foreground_dice(&logits, &target).double_value(&[]);
        let per_class = SegmentationLoss::soft_foreground_dice(&logits, &target).double_value(&[]);
        // Pooled: 2 * 6 / (6 + 7 + 0.01); per class: NCR 1 (absent, smoothed), ED 13/13, ET 1/2.
        assert!((pooled - 12.0 / 13.01).abs() < 1e-4, "{pooled}");
        assert!(
            (per_class - (1.0 + 1.0 + 0.5) / 3.0).abs() < 1e-4,
            "{per_class}"
        );
    }
}
