//! Brain-tumour segmentation: 0.5 x class-weighted cross-entropy + 0.5 x (1 - soft foreground
//! Dice); the batch metric is the mean of WT/TC/ET Dice. Two soft Dice forms: the project's (mean
//! over the foreground classes of per-class Dice, smoothing 1 in numerator and denominator) and
//! the authors' (zrguo/CGGM `SegLoss`: one Dice pooling all foreground classes and pixels,
//! smoothing 0.01 in the denominator only), which the `paper` preset uses.

use super::Task;
use crate::events::RegionScores;
use crate::metrics::{dice_from_counts, Region};
pub use cggm_core::loss::{SegmentationLoss, SoftDice};
pub use kernels::{pooled_foreground_dice, soft_foreground_dice};
use tch::{Kind, Reduction, Tensor};

// Free functions: `SegmentationLoss` is plain configuration that lives in the core crate.
mod kernels {
    use super::*;

    /// logits: [B, C, H, W] float, target: [B, H, W] int64 classes.
    pub fn soft_foreground_dice(logits: &Tensor, target: &Tensor) -> Tensor {
        soft_dice_by_slice(logits, target, 1, SoftDice::PerClassMean).squeeze()
    }

    /// The authors' soft Dice: all foreground classes and pixels pooled, smoothing 0.01 in the
    /// denominator only. logits: [B, C, H, W], target: [B, H, W] int64.
    pub fn pooled_foreground_dice(logits: &Tensor, target: &Tensor) -> Tensor {
        soft_dice_by_slice(logits, target, 1, SoftDice::AuthorsPooled).squeeze()
    }

    /// The soft Dice of each of `slices` equal parts of the batch (M classifiers' logits
    /// concatenated along the batch dimension, all for the same target): [slices].
    /// logits: [slices * B, C, H, W] float, target: [B, H, W] int64.
    pub(super) fn soft_dice_by_slice(
        logits: &Tensor,
        target: &Tensor,
        slices: i64,
        form: SoftDice,
    ) -> Tensor {
        let classes = logits.size()[1];
        let probs = logits.softmax(1, Kind::Float).narrow(1, 1, classes - 1);
        let s = probs.size();
        // [slices, B, C - 1, H, W] foreground probabilities; the one-hot target [1, B, C - 1, H,
        // W] is made once and broadcast over the slices.
        let fg_p = probs.reshape([slices, s[0] / slices, s[1], s[2], s[3]]);
        let fg_t = target
            .one_hot(classes)
            .permute([0, 3, 1, 2])
            .narrow(1, 1, classes - 1)
            .to_kind(Kind::Float)
            .unsqueeze(0);
        match form {
            SoftDice::PerClassMean => {
                let dims: &[i64] = &[1, 3, 4];
                let inter = (&fg_p * &fg_t).sum_dim_intlist(dims, false, Kind::Float);
                let denom = fg_p.sum_dim_intlist(dims, false, Kind::Float)
                    + fg_t.sum_dim_intlist(dims, false, Kind::Float);
                // Smoothing keeps classes absent from the batch from dominating (and from
                // dividing by 0).
                ((inter * 2.0 + 1.0) / (denom + 1.0)).mean_dim(1, false, Kind::Float)
            }
            SoftDice::AuthorsPooled => {
                let dims: &[i64] = &[1, 2, 3, 4];
                let inter = (&fg_p * &fg_t).sum_dim_intlist(dims, false, Kind::Float);
                let union = fg_p.sum_dim_intlist(dims, false, Kind::Float)
                    + fg_t.sum_dim_intlist(dims, false, Kind::Float)
                    + 0.01;
                inter * 2.0 / union
            }
        }
    }

    /// The sum over `slices` equal parts of the batch of each part's loss against the same
    /// target, in one pass. logits: [slices * B, C, H, W], target: [B, H, W]. Every part has the
    /// same targets, so the class-weighted mean cross-entropy over all parts is the mean of the
    /// parts' own.
    pub(super) fn loss_by_slices(
        loss: &SegmentationLoss,
        logits: &Tensor,
        target: &Tensor,
        slices: i64,
    ) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        let weights = Tensor::from_slice(&loss.class_weights)
            .to_kind(Kind::Float)
            .to_device(logits.device());
        let repeated = match slices {
            1 => target.shallow_clone(),
            _ => target.repeat([slices, 1, 1]),
        };
        let ce = logits.cross_entropy_loss(&repeated, Some(weights), Reduction::Mean, -100, 0.0);
        let dice = soft_dice_by_slice(&logits, target, slices, loss.dice);
        ce * (loss.ce_weight * slices as f64)
            + (dice.sum(Kind::Float).neg() + slices as f64) * loss.dice_weight
    }

    /// Per slice of `slices` equal parts of the flattened predictions [slices, n] and the truth
    /// [1, n]: (intersection, predicted, truth) voxel counts of each region, [regions, 3, slices].
    pub(super) fn region_counts(pred: &Tensor, truth: &Tensor) -> Tensor {
        let member = |x: &Tensor, r: Region| match r {
            Region::Wt => x.ge(1).logical_and(&x.le(3)),
            Region::Tc => x.eq(1).logical_or(&x.eq(3)),
            Region::Et => x.eq(3),
        };
        let count = |x: &Tensor| x.sum_dim_intlist(1, false, Kind::Int64);
        let per_region: Vec<Tensor> = Region::ALL
            .iter()
            .map(|&r| {
                let (p, t) = (member(pred, r), member(truth, r));
                let slices = pred.size()[0];
                Tensor::stack(
                    &[
                        count(&p.logical_and(&t)),
                        count(&p),
                        count(&t).expand([slices], false),
                    ],
                    0,
                )
            })
            .collect();
        Tensor::stack(&per_region, 0)
    }
}

impl Task for SegmentationLoss {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Tensor {
        kernels::loss_by_slices(self, logits, target, 1)
    }

    /// The M classifiers' logits concatenated along the batch: one cross-entropy, one softmax,
    /// one one-hot instead of M of each.
    fn summed_loss(&self, logits: &[Tensor], target: &Tensor) -> Tensor {
        let m = logits.len() as i64;
        if m == 0 {
            return Tensor::zeros([], (Kind::Float, target.device()));
        }
        kernels::loss_by_slices(self, &Tensor::cat(logits, 0), target, m)
    }

    fn batch_metric(&self, logits: &Tensor, target: &Tensor) -> f64 {
        self.batch_metrics(std::slice::from_ref(logits), target)[0]
    }

    /// All M classifiers' Dice counts on the device, read back in one copy (the host loop over
    /// the voxels per classifier was half the classifiers' cost).
    fn batch_metrics(&self, logits: &[Tensor], target: &Tensor) -> Vec<f64> {
        let m = logits.len() as i64;
        if m == 0 {
            return Vec::new();
        }
        let pred = super::class_indices(&Tensor::cat(logits, 0)).reshape([m, -1]);
        let truth = target.reshape([1, -1]);
        let counts = kernels::region_counts(&pred, &truth)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let n = counts.numel();
        let mut host = vec![0i64; n];
        counts.copy_data(&mut host, n);
        // host[(region * 3 + what) * m + slice]
        let at = |region: usize, what: usize, slice: usize| {
            host[(region * 3 + what) * m as usize + slice] as u64
        };
        (0..m as usize)
            .map(|i| {
                let dice = |r| dice_from_counts(at(r, 0, i), at(r, 1, i), at(r, 2, i));
                RegionScores::new(dice(0), dice(1), dice(2)).mean
            })
            .collect()
    }
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
        let pooled = pooled_foreground_dice(&logits, &target).double_value(&[]);
        let per_class = soft_foreground_dice(&logits, &target).double_value(&[]);
        // Pooled: 2 * 6 / (6 + 7 + 0.01); per class: NCR 1 (absent, smoothed), ED 13/13, ET 1/2.
        assert!((pooled - 12.0 / 13.01).abs() < 1e-4, "{pooled}");
        assert!(
            (per_class - (1.0 + 1.0 + 0.5) / 3.0).abs() < 1e-4,
            "{per_class}"
        );
    }

    /// The per-classifier loss and metric, computed as the step did before batching: a host loop
    /// over the voxels with the metrics module's Dice.
    fn reference(task: &SegmentationLoss, logits: &[Tensor], target: &Tensor) -> (f64, Vec<f64>) {
        let flat = |t: &Tensor| {
            let t = t.to_kind(Kind::Uint8).flatten(0, -1).contiguous();
            let n = t.numel();
            let mut v = vec![0u8; n];
            t.copy_data(&mut v, n);
            v
        };
        let loss: f64 = logits
            .iter()
            .map(|l| task.loss(l, target).double_value(&[]))
            .sum();
        let metrics = logits
            .iter()
            .map(|l| crate::metrics::dice_scores(&flat(&l.argmax(1, false)), &flat(target)).mean)
            .collect();
        (loss, metrics)
    }

    #[test]
    fn the_classifiers_batched_loss_and_dice_equal_one_at_a_time() {
        tch::manual_seed(3);
        // Truth without ET in the second sample and none at all in the third case below.
        let target = Tensor::randint(4, [2, 6, 5], (Kind::Int64, Device::Cpu));
        let no_et = target.where_scalarother(&target.ne(3), 2);
        for target in [target, no_et] {
            for dice in [SoftDice::PerClassMean, SoftDice::AuthorsPooled] {
                let task = SegmentationLoss {
                    dice,
                    ..SegmentationLoss::default()
                };
                let logits: Vec<Tensor> = (0..4)
                    .map(|_| {
                        (Tensor::randn([2, 4, 6, 5], (Kind::Float, Device::Cpu)) * 3.0)
                            .set_requires_grad(true)
                    })
                    .collect();
                let (loss, metrics) = reference(&task, &logits, &target);
                let batched = task.summed_loss(&logits, &target);
                assert!(
                    (batched.double_value(&[]) - loss).abs() < 1e-5 * loss.abs().max(1.0),
                    "{dice:?}: batched {} vs {loss}",
                    batched.double_value(&[])
                );
                assert_eq!(task.batch_metrics(&logits, &target), metrics, "{dice:?}");
                // Same gradients as the sum of the separate losses.
                let grads = Tensor::run_backward(&[&batched], &logits, false, false);
                let separate = logits
                    .iter()
                    .map(|l| task.loss(l, &target))
                    .reduce(|a, b| a + b)
                    .unwrap();
                let expected = Tensor::run_backward(&[&separate], &logits, false, false);
                for (g, e) in grads.iter().zip(&expected) {
                    let diff = (g - e).abs().max().double_value(&[]);
                    assert!(diff < 1e-6, "{dice:?}: gradient differs by {diff}");
                }
            }
        }
    }
}
