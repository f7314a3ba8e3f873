//! Baselines for modality imbalance that the CGGM paper compares against, written against what
//! every task has: per-modality scores (or logits, or features) and the encoders' gradients.
//!
//! - **OGM-GE** (Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
//!   CVPR 2022): a modality whose score s_i (summed softmax probability of the true class) exceeds
//!   the weakest one's gets its encoder gradients scaled by `1 - tanh(alpha * s_i / s_min)`; then
//!   Gaussian noise with the gradient's own standard deviation is added to every encoder weight
//!   gradient (the "generalisation enhancement").
//! - **AGM** (Li et al., "Boosting Multi-modal Model Performance with Adaptive Gradient
//!   Modulation", ICCV 2023): mono-modal responses are Shapley values of the fused output over
//!   modality subsets (absent modalities zeroed; the empty set's output taken as 0); their
//!   cross-entropies s_i, compared with their running means, give
//!   `k_i = exp(alpha * min(eta_i - r_i, 7))` with `r_i = exp(M/(M-1) (mean s - s_i))` (the sign of
//!   the authors' two-modality code; BalanceBenchmark's multi-modality code flips it) and `eta_i`
//!   the same of the running means; encoder i's gradients are multiplied by k_i.
//! - **PMR** (Fan et al., "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023):
//!   class prototypes per modality (mean encoder feature of each class, momentum-averaged); the
//!   prototypical cross-entropy (logits = minus Euclidean distance to the prototypes) is added to
//!   the loss of each lagging modality with weight `alpha * clip(s_max / s_i - 1, 0, 1)`, s_i the
//!   summed prototype probability of the true class (BalanceBenchmark's rule), or `alpha` for
//!   every modality below the leader and 0 for the leader (`pmr_weight_rule: "step"`, the rule of
//!   the reference code, fanyunfeng-bit/Modal-Imbalance-PMR `main_Prototype_grad.py`).
//!
//! Hyper-parameters follow GeWu-Lab/BalanceBenchmark's `configs/trainer_config.yaml` (commit
//! 0f68d46): OGM-GE alpha 0.3 modulating from epoch 10 to 80 (0-based, both included; outside the
//! window no scaling and no noise), AGM alpha 0.1, PMR alpha 0.6. How each is adapted to
//! segmentation is in the README ("Baselines").

mod hooks;

pub(crate) use hooks::scores_hook;
pub use hooks::BaselineState;

use crate::optim::Param;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

pub use cggm_core::baseline_config::{BaselineConfig, PmrWeightRule};

/// OGM-GE's coefficients from per-modality scores s_i > 0 (higher = stronger modality):
/// `ratio_i = s_i / min_k s_k`; `k_i = 1 - tanh(alpha * ratio_i)` when `ratio_i > 1`, else 1.
/// With two modalities this is the paper's rule exactly; with more, every modality is compared
/// with the weakest (as BalanceBenchmark does for three).
pub fn ogm_coefficients(scores: &[f64], alpha: f64) -> Vec<f64> {
    let min = scores
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .fold(f64::INFINITY, f64::min);
    scores
        .iter()
        .map(|s| {
            if !(min.is_finite() && min > 0.0 && s.is_finite()) {
                return 1.0;
            }
            let ratio = s / min;
            if ratio > 1.0 {
                1.0 - (alpha * ratio).tanh()
            } else {
                1.0
            }
        })
        .collect()
}

/// Multiplies the gradient of every weight (tensors of two or more dimensions, as the reference
/// code: biases and norms are left alone) of encoder i (optimiser group i + 1) by `coefficients[i]`;
/// with `noise`, then adds N(0, std(grad)) noise drawn from libtorch's generator (OGM-GE's
/// generalisation enhancement; the std is taken before scaling, as the reference code does).
pub fn scale_encoder_weight_gradients(params: &[Param], coefficients: &[f64], noise: bool) {
    tch::no_grad(|| {
        for p in params.iter().filter(|p| p.group > 0 && p.tensor.dim() > 1) {
            let mut g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let k = coefficients[p.group - 1];
            if noise {
                let std = g.std(true).double_value(&[]);
                let std = if std.is_finite() { std } else { 0.0 } + 1e-8;
                let n = g.randn_like() * std;
                let _ = g.g_mul_scalar_(k);
                let _ = g.g_add_(&n);
            } else {
                let _ = g.g_mul_scalar_(k);
            }
        }
    });
}

/// Summed softmax probability of the true class: logits [B, C, ...], target [B, ...] int64. For
/// segmentation the sum runs over pixels, divided by their number (a mean, so that scores of
/// batches of any size compare).
pub fn true_class_confidence(logits: &Tensor, target: &Tensor) -> f64 {
    let probs = logits.to_kind(Kind::Float).softmax(1, Kind::Float);
    probs
        .gather(1, &target.unsqueeze(1), false)
        .mean(Kind::Float)
        .double_value(&[])
}

/// AGM's running state: the cumulative mean of each modality's score over all iterations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgmState {
    pub running: Vec<f64>,
    pub iterations: usize,
}

impl AgmState {
    /// Coefficients k_i from this batch's mono-modal cross-entropies `scores` (lower = better
    /// modality), then folds the scores into the running means.
    pub fn update(&mut self, scores: &[f64], alpha: f64) -> Vec<f64> {
        let m = scores.len();
        if self.running.len() != m {
            self.running = vec![0.0; m];
        }
        if m < 2 {
            return vec![1.0; m];
        }
        let factor = m as f64 / (m as f64 - 1.0);
        let mean = scores.iter().sum::<f64>() / m as f64;
        let running_mean = self.running.iter().sum::<f64>() / m as f64;
        self.iterations += 1;
        let t = self.iterations as f64;
        let mut coefficients = Vec::with_capacity(m);
        for (s, r) in scores.iter().zip(self.running.iter_mut()) {
            // Sign of the authors' two-modality code (ratio_a = exp(s_v - s_a)): a modality whose
            // loss is above the others' gets r < 1, hence k > 1 unless it always lags that much.
            let ratio = (factor * (mean - s)).exp();
            let optimal = (factor * (running_mean - *r)).exp();
            coefficients.push((alpha * (optimal - ratio).min(7.0)).exp());
            *r = *r * (t - 1.0) / t + s / t;
        }
        coefficients
    }
}

/// Shapley weight of a coalition of `size` other modalities out of `m`: |S|! (m - |S| - 1)! / m!.
fn shapley_weight(size: usize, m: usize) -> f64 {
    let fact = |n: usize| (1..=n).map(|v| v as f64).product::<f64>();
    fact(size) * fact(m - size - 1) / fact(m)
}

/// AGM's mono-modal responses: for each modality i the Shapley value
/// `sum_{S subset of the others} w(|S|) (f(S + i) - f(S))`, `f(S)` the fused output with the
/// modalities outside S zeroed and `f(empty) = 0`. `fused(mask)` returns f for a subset given as a
/// keep-mask; it is called once per non-empty subset (2^M - 1 calls). The responses sum to f(all).
pub fn shapley_responses(m: usize, mut fused: impl FnMut(&[bool]) -> Tensor) -> Vec<Tensor> {
    let subsets = 1usize << m;
    let mut outputs: Vec<Option<Tensor>> = (0..subsets).map(|_| None).collect();
    for (bits, slot) in outputs.iter_mut().enumerate().skip(1) {
        let keep: Vec<bool> = (0..m).map(|i| bits & (1 << i) != 0).collect();
        *slot = Some(fused(&keep));
    }
    let f = |bits: usize| outputs[bits].as_ref();
    (0..m)
        .map(|i| {
            let mut total: Option<Tensor> = None;
            for others in 0..subsets {
                if others & (1 << i) != 0 {
                    continue;
                }
                let w = shapley_weight(others.count_ones() as usize, m);
                let with = f(others | (1 << i)).expect("every non-empty subset evaluated");
                let term = match f(others) {
                    Some(without) => (with - without) * w,
                    None => with * w,
                };
                total = Some(match total {
                    Some(t) => t + term,
                    None => term,
                });
            }
            total.expect("at least the empty coalition")
        })
        .collect()
}

/// AGM's score of a mono-modal response: the mean cross-entropy of the true class, each
/// probability floored at 1e-8 (as the reference code).
pub fn response_cross_entropy(response: &Tensor, target: &Tensor) -> f64 {
    let probs = response.to_kind(Kind::Float).softmax(1, Kind::Float);
    let p = probs.gather(1, &target.unsqueeze(1), false).clamp_min(1e-8);
    (-p.log()).mean(Kind::Float).double_value(&[])
}

/// PMR's prototypes of one modality: [classes, channels], None until every class has been seen.
#[derive(Debug, Default)]
pub struct Prototypes {
    sums: Option<Tensor>,
    seen: Vec<bool>,
}

impl Prototypes {
    /// Folds this batch's class means of `features` [N, C] (rows labelled by `labels` [N] int64)
    /// into the momentum average; classes absent from the batch keep their prototype.
    pub fn update(&mut self, features: &Tensor, labels: &Tensor, classes: i64, momentum: f64) {
        let features = features.detach().to_kind(Kind::Float);
        let onehot = labels.one_hot(classes).to_kind(Kind::Float); // [N, K]
        let counts = onehot.sum_dim_intlist(&[0i64][..], false, Kind::Float); // [K]
        let means = onehot.transpose(0, 1).matmul(&features) / counts.clamp_min(1.0).unsqueeze(1);
        let present: Vec<bool> = (0..classes)
            .map(|c| counts.double_value(&[c]) > 0.0)
            .collect();
        if self.seen.len() != classes as usize {
            self.seen = vec![false; classes as usize];
        }
        let mask = Tensor::from_slice(
            &present
                .iter()
                .map(|p| if *p { 1f32 } else { 0.0 })
                .collect::<Vec<_>>(),
        )
        .to_device(features.device())
        .unsqueeze(1);
        let updated = match &self.sums {
            None => &means * &mask,
            Some(old) => {
                // First sight of a class: take the batch mean; later: momentum average.
                let first: Vec<f32> = present
                    .iter()
                    .zip(&self.seen)
                    .map(|(p, s)| if *p && !*s { 1.0 } else { 0.0 })
                    .collect();
                let first = Tensor::from_slice(&first)
                    .to_device(features.device())
                    .unsqueeze(1);
                let avg = old * momentum + &means * (1.0 - momentum);
                let blended = &avg * &mask + old * (mask.neg() + 1.0);
                &blended * (first.neg() + 1.0) + &means * &first
            }
        };
        self.sums = Some(updated);
        for (s, p) in self.seen.iter_mut().zip(present) {
            *s |= p;
        }
    }

    pub fn ready(&self) -> Option<&Tensor> {
        (self.sums.is_some() && !self.seen.is_empty() && self.seen.iter().all(|s| *s))
            .then(|| self.sums.as_ref().expect("checked"))
    }
}

/// Logits of the prototypical classifier: minus the Euclidean distance of every row of
/// `features` [N, C] to every prototype [K, C] -> [N, K].
pub fn prototype_logits(features: &Tensor, prototypes: &Tensor) -> Tensor {
    -Tensor::cdist(&features.to_kind(Kind::Float), prototypes, 2.0, None::<i64>)
}

/// PMR's weights of the prototypical cross-entropy from the prototype scores s_i (higher =
/// stronger): `clip(s_max / s_i - 1, 0, 1)`; the leading modality gets 0. With two modalities
/// this is the paper's rule.
pub fn pmr_weights(scores: &[f64]) -> Vec<f64> {
    pmr_weights_by(scores, PmrWeightRule::Clip)
}

/// PMR's weights by `rule` (see [`PmrWeightRule`]).
pub fn pmr_weights_by(scores: &[f64], rule: PmrWeightRule) -> Vec<f64> {
    let max = scores
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    scores
        .iter()
        .map(|s| {
            if s.is_finite() && *s > 0.0 && max.is_finite() {
                match rule {
                    PmrWeightRule::Clip => (max / s - 1.0).clamp(0.0, 1.0),
                    PmrWeightRule::Step => f64::from(u8::from(*s < max)),
                }
            } else {
                0.0
            }
        })
        .collect()
}

/// Per-pixel rows of a feature map [B, C, h, w] -> [B h w, C] and the labels [B, H, W] resized to
/// [B, h, w] (nearest) -> [B h w].
pub fn pixel_rows(features: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let size = features.size();
    let (c, h, w) = (size[1], size[2], size[3]);
    let rows = features.permute([0, 2, 3, 1]).reshape([-1, c]);
    let small = labels
        .unsqueeze(1)
        .to_kind(Kind::Float)
        .upsample_nearest2d([h, w], None::<f64>, None::<f64>)
        .squeeze_dim(1)
        .to_kind(Kind::Int64)
        .reshape([-1]);
    (rows, small)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn ogm_suppresses_only_the_leading_modalities() {
        let k = ogm_coefficients(&[0.9, 0.3, 0.3, 0.6], 0.3);
        assert_eq!(k[1], 1.0);
        assert_eq!(k[2], 1.0);
        assert!(k[0] < k[3] && k[3] < 1.0, "{k:?}");
        assert!((k[0] - (1.0 - (0.3f64 * 3.0).tanh())).abs() < 1e-12);
    }

    #[test]
    fn agm_boosts_a_modality_that_falls_behind_its_usual_share() {
        let mut state = AgmState::default();
        for _ in 0..50 {
            state.update(&[0.5, 0.5], 0.1);
        }
        // Modality 0's loss jumps above its running mean: it lags, so it is boosted.
        let k = state.update(&[1.5, 0.5], 0.1);
        assert!(k[0] > 1.0 && k[1] < 1.0, "{k:?}");
    }

    #[test]
    fn shapley_responses_sum_to_the_full_output_and_credit_the_contributor() {
        // f(S) = 2 * [flair in S] + 1 * [t1 in S] for a 3-modality model (third adds nothing).
        let contributions = [2.0, 1.0, 0.0];
        let responses = shapley_responses(3, |keep| {
            let v: f64 = keep
                .iter()
                .zip(contributions)
                .map(|(k, c)| if *k { c } else { 0.0 })
                .sum();
            Tensor::from_slice(&[v])
        });
        let values: Vec<f64> = responses.iter().map(|t| t.double_value(&[0])).collect();
        for (v, c) in values.iter().zip(contributions) {
            assert!((v - c).abs() < 1e-9, "{values:?}");
        }
    }

    #[test]
    fn pmr_weights_the_lagging_modalities_and_prototypes_average_class_means() {
        let w = pmr_weights(&[0.8, 0.4, 0.8]);
        assert_eq!(w, vec![0.0, 1.0, 0.0]);
        // The reference code's step rule: full weight for anything below the leader.
        let w = pmr_weights_by(&[0.8, 0.7, 0.4], PmrWeightRule::Step);
        assert_eq!(w, vec![0.0, 1.0, 1.0]);
        let w = pmr_weights_by(&[0.8, 0.7, 0.4], PmrWeightRule::Clip);
        assert!(
            (w[1] - (0.8 / 0.7 - 1.0)).abs() < 1e-12 && w[2] == 1.0,
            "{w:?}"
        );
        assert_eq!(BaselineConfig::default().pmr_alpha, 0.6);
        let mut p = Prototypes::default();
        let feats = Tensor::from_slice(&[0f32, 0.0, 2.0, 2.0, 4.0, 4.0]).view([3, 2]);
        let labels = Tensor::from_slice(&[0i64, 1, 1]);
        p.update(&feats, &labels, 2, 0.5);
        let protos = p.ready().expect("both classes seen");
        let v: Vec<f32> = Vec::try_from(protos.reshape([-1])).unwrap();
        assert_eq!(v, vec![0.0, 0.0, 3.0, 3.0]);
        let logits = prototype_logits(&feats, protos);
        assert_eq!(logits.size(), [3, 2]);
        let nearest: Vec<i64> = Vec::try_from(logits.argmax(1, false)).unwrap();
        assert_eq!(nearest, vec![0, 1, 1]);
        let _ = Device::Cpu;
    }
}
