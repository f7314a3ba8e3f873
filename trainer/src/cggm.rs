//! Classifier-guided gradient modulation (CGGM, Guo et al., NeurIPS 2024), the pieces that are
//! independent of the task: balance coefficients, magnitude modulation of encoder gradients, and
//! the direction-modulation loss. DESIGN.md restates the method; the numbers below follow it.

use crate::optim::Param;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// How B_i is computed from the per-modality improvements d_i.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceFormula {
    /// The paper's formula with a guard that keeps B finite and meaningful (see
    /// `balance_coefficients`).
    #[default]
    Guarded,
    /// The paper's formula as printed, `rho * sum_{k!=i} d_k / sum_k d_k`: for reproduction
    /// studies only. It divides by ~0 whenever the modalities' improvements cancel out.
    Raw,
}

/// Below this |sum_k d_k| the improvements are indistinguishable from batch noise (the metric is a
/// Dice in [0, 1]); the guard then treats all modalities as improving equally.
pub const NEGLIGIBLE_TOTAL_IMPROVEMENT: f64 = 1e-4;

/// B_i = rho * (sum_{k != i} d_k) / (sum_k d_k) = rho * (1 - s_i), with s_i = d_i / sum_k d_k the
/// modality's share of the total improvement.
///
/// The guard (`BalanceFormula::Guarded`):
/// 1. a non-finite d_k counts as no improvement (0);
/// 2. when the total improvement S is not clearly positive (S <= 1e-4: the modalities did not
///    improve on balance, or their changes cancel), every modality gets the neutral value
///    `rho * (M - 1) / M`, the value of equal improvements; dividing by such an S would turn a
///    tiny or negative denominator into a huge or sign-flipped coefficient;
/// 3. otherwise the share s_i is clamped to [0, 1]: a modality that got worse while the others
///    improved gets the full `rho` (it lags most), and one that improved more than the total gets
///    0. Hence `0 <= B_i <= rho` and B is always finite for finite rho.
///
/// With one modality there is nothing to balance: B = [rho].
pub fn balance_coefficients(improvements: &[f64], rho: f64, formula: BalanceFormula) -> Vec<f64> {
    balance_outcome(improvements, rho, formula).coefficients
}

/// B_i and what the guard did to get them (for the `step` event and the run's statistics).
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceOutcome {
    pub coefficients: Vec<f64>,
    /// Rule 2 fired: the total improvement was not clearly positive, every B_i is neutral.
    pub guarded: bool,
    /// How many shares rule 3 clamped (B_i pinned at 0 or rho).
    pub clamped: usize,
}

/// [`balance_coefficients`] with the guard's bookkeeping.
pub fn balance_outcome(improvements: &[f64], rho: f64, formula: BalanceFormula) -> BalanceOutcome {
    let m = improvements.len();
    let plain = |coefficients| BalanceOutcome {
        coefficients,
        guarded: false,
        clamped: 0,
    };
    if m <= 1 {
        return plain(vec![rho; m]);
    }
    match formula {
        BalanceFormula::Raw => {
            let total: f64 = improvements.iter().sum();
            plain(
                improvements
                    .iter()
                    .map(|d| rho * (total - d) / total)
                    .collect(),
            )
        }
        BalanceFormula::Guarded => {
            let d: Vec<f64> = improvements
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.0 })
                .collect();
            let total: f64 = d.iter().sum();
            if total <= NEGLIGIBLE_TOTAL_IMPROVEMENT {
                return BalanceOutcome {
                    coefficients: neutral_balance(m, rho),
                    guarded: true,
                    clamped: 0,
                };
            }
            let shares: Vec<f64> = d.iter().map(|di| di / total).collect();
            BalanceOutcome {
                clamped: shares.iter().filter(|s| !(0.0..=1.0).contains(*s)).count(),
                coefficients: shares
                    .iter()
                    .map(|s| rho * (1.0 - s.clamp(0.0, 1.0)))
                    .collect(),
                guarded: false,
            }
        }
    }
}

/// The neutral coefficient of equal improvements, `rho * (M - 1) / M`, for every modality: the
/// guard's fallback and the fixed-B control (`cggm-fixed`).
pub fn neutral_balance(modalities: usize, rho: f64) -> Vec<f64> {
    if modalities <= 1 {
        return vec![rho; modalities];
    }
    vec![rho * (modalities as f64 - 1.0) / modalities as f64; modalities]
}

/// Counts over a run of how often the guard decided B (kept in checkpoints, so they survive
/// resume).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalanceStats {
    pub steps: usize,
    /// Steps where rule 2 set every B_i to the neutral value.
    pub guarded_steps: usize,
    /// Steps where at least one share was clamped (some B_i pinned at 0 or rho).
    pub clamped_steps: usize,
}

/// Remembers each modality's previous batch metric eps_i^(t-1) (eps_i^0 = 0) and turns the new
/// metrics into balance coefficients.
///
/// Optional smoothing (`cggm.eps_ema` = beta in (0, 1), 0 = off, the paper): eps_i is replaced by
/// its exponential moving average `e_i^t = beta e_i^(t-1) + (1 - beta) eps_i^t` (e_i^0 = 0, no bias
/// correction), and d_i = e_i^t - e_i^(t-1) = (1 - beta)(eps_i^t - e_i^(t-1)). Each step's d_i then
/// compares the new batch with an average of many past batches instead of with one other random
/// batch, which is most of the noise in B.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BalanceTracker {
    /// e_i^(t-1): the previous metric (or its running average when smoothing).
    pub previous: Vec<f64>,
    pub rho: f64,
    pub formula: BalanceFormula,
    #[serde(default)]
    pub eps_ema: f64,
    #[serde(default)]
    pub stats: BalanceStats,
}

impl BalanceTracker {
    pub fn new(modalities: usize, rho: f64, formula: BalanceFormula) -> Self {
        Self {
            previous: vec![0.0; modalities],
            rho,
            formula,
            eps_ema: 0.0,
            stats: BalanceStats::default(),
        }
    }

    /// With eps_i smoothed by an EMA of factor `beta` (0 = off).
    pub fn with_ema(mut self, beta: f64) -> Self {
        self.eps_ema = beta;
        self
    }

    /// metrics: eps_i^t, "higher is better". Returns B_i.
    pub fn update(&mut self, metrics: &[f64]) -> Vec<f64> {
        self.update_outcome(metrics).coefficients
    }

    /// [`update`](Self::update) with the guard's bookkeeping; counts it in `stats`.
    pub fn update_outcome(&mut self, metrics: &[f64]) -> BalanceOutcome {
        let beta = self.eps_ema;
        let smoothed: Vec<f64> = metrics
            .iter()
            .zip(&self.previous)
            .map(|(now, before)| {
                if beta > 0.0 && now.is_finite() {
                    beta * before + (1.0 - beta) * now
                } else {
                    *now
                }
            })
            .collect();
        let improvements: Vec<f64> = smoothed
            .iter()
            .zip(&self.previous)
            .map(|(now, before)| now - before)
            .collect();
        self.previous = smoothed;
        let outcome = balance_outcome(&improvements, self.rho, self.formula);
        self.stats.steps += 1;
        self.stats.guarded_steps += outcome.guarded as usize;
        self.stats.clamped_steps += (outcome.clamped > 0) as usize;
        outcome
    }
}

/// Magnitude modulation: multiplies the gradient of every parameter of encoder i (optimiser
/// group i + 1; group 0 is the fusion head, left alone) by `balance[i]`.
pub fn scale_encoder_gradients(params: &[Param], balance: &[f64]) {
    tch::no_grad(|| {
        for p in params.iter().filter(|p| p.group > 0) {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.g_mul_scalar_(balance[p.group - 1]);
            }
        }
    });
}

/// Cosine of two tensors of the same shape, flattened. Differentiable in both.
pub fn flat_cosine(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor::cosine_similarity(&a.flatten(0, -1), &b.flatten(0, -1), 0, 1e-8)
}

/// Direction modulation: `L_gm = (1/M) sum_i (|B_i| - B_i cos(g_F, g_i))`.
///
/// `g_f` must carry a graph (taken with `create_graph = true`) so that L_gm reaches the model's
/// parameters; `g_cls[i]` are detached. Returns the loss and the cosines (as plain numbers).
pub fn direction_loss(g_f: &Tensor, g_cls: &[Tensor], balance: &[f64]) -> (Tensor, Vec<f64>) {
    let m = g_cls.len() as f64;
    let mut loss = Tensor::zeros([], (g_f.kind(), g_f.device()));
    let mut cosines = Vec::with_capacity(g_cls.len());
    for (g_i, b) in g_cls.iter().zip(balance) {
        let cos = flat_cosine(g_f, g_i);
        cosines.push(cos.double_value(&[]));
        loss += (cos * (-b)).g_add_scalar(b.abs());
    }
    (loss / m, cosines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn equal_improvements_give_rho_times_m_minus_one_over_m() {
        let b = balance_coefficients(&[0.1, 0.1, 0.1, 0.1], 1.0, BalanceFormula::Guarded);
        for v in b {
            assert!((v - 0.75).abs() < 1e-12);
        }
    }

    #[test]
    fn the_fastest_improving_modality_gets_the_smallest_coefficient() {
        let b = balance_coefficients(&[0.4, 0.1, 0.05, 0.05], 1.0, BalanceFormula::Guarded);
        assert!(b[0] < b[1] && b[1] < b[2]);
        let raw = balance_coefficients(&[0.4, 0.1, 0.05, 0.05], 1.0, BalanceFormula::Raw);
        for (g, r) in b.iter().zip(raw) {
            assert!(
                (g - r).abs() < 1e-12,
                "guard must not change the well-posed case"
            );
        }
    }

    #[test]
    fn guard_is_finite_when_improvements_sum_to_zero() {
        for d in [[0.0; 4], [0.2, -0.2, 0.1, -0.1], [1e-12, -1e-12, 0.0, 0.0]] {
            let b = balance_coefficients(&d, 1.3, BalanceFormula::Guarded);
            assert!(b.iter().all(|v| v.is_finite()), "{d:?} -> {b:?}");
            assert!(b.iter().all(|v| (v - 1.3 * 0.75).abs() < 1e-12));
        }
        let raw = balance_coefficients(&[0.0; 4], 1.0, BalanceFormula::Raw);
        assert!(
            raw.iter().all(|v| v.is_nan()),
            "the raw switch must really be raw"
        );
    }

    #[test]
    fn guard_handles_negative_and_non_finite_improvements() {
        // t1 got worse while the rest improved: it lags most and gets the full rho.
        let b = balance_coefficients(&[0.3, 0.2, -0.1, 0.1], 1.0, BalanceFormula::Guarded);
        assert_eq!(b[2], 1.0);
        assert!(b.iter().all(|v| (0.0..=1.0).contains(v)));
        // One modality improved more than the total: clamped to 0, not negative.
        let b = balance_coefficients(&[0.5, -0.2, -0.1, -0.1], 1.0, BalanceFormula::Guarded);
        assert_eq!(b[0], 0.0);
        let b = balance_coefficients(
            &[f64::NAN, f64::INFINITY, 0.1, 0.1],
            1.0,
            BalanceFormula::Guarded,
        );
        assert!(b.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn guard_stays_finite_and_bounded_over_a_long_adversarial_sequence() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut tracker = BalanceTracker::new(4, 2.0, BalanceFormula::Guarded);
        for step in 0..100_000 {
            let metrics: Vec<f64> = (0..4)
                .map(|i| match (step + i) % 5 {
                    0 => rng.gen_range(0.0..1.0),
                    1 => 0.0,
                    2 => 1.0,
                    3 => tracker.previous[i] + rng.gen_range(-1e-9..1e-9),
                    _ => tracker.previous[(i + 1) % 4],
                })
                .collect();
            let b = tracker.update(&metrics);
            assert!(
                b.iter().all(|v| v.is_finite() && (0.0..=2.0).contains(v)),
                "step {step}: {b:?}"
            );
        }
    }

    #[test]
    fn first_update_measures_improvement_from_zero() {
        let mut tracker = BalanceTracker::new(2, 1.0, BalanceFormula::Guarded);
        let b = tracker.update(&[0.6, 0.2]);
        assert!((b[0] - 0.25).abs() < 1e-12 && (b[1] - 0.75).abs() < 1e-12);
    }

    #[test]
    fn the_guard_reports_when_it_fired_and_how_many_shares_it_clamped() {
        let o = balance_outcome(&[0.1, -0.1, 0.0, 0.0], 1.0, BalanceFormula::Guarded);
        assert!(o.guarded && o.clamped == 0);
        let o = balance_outcome(&[0.5, -0.2, -0.1, 0.1], 1.0, BalanceFormula::Guarded);
        // shares 0.5/0.3 > 1 and two negative ones: three clamped.
        assert!(!o.guarded);
        assert_eq!(o.clamped, 3);
        let o = balance_outcome(&[0.4, 0.1, 0.05, 0.05], 1.0, BalanceFormula::Guarded);
        assert_eq!((o.guarded, o.clamped), (false, 0));
        let mut tracker = BalanceTracker::new(2, 1.0, BalanceFormula::Guarded);
        tracker.update(&[0.5, 0.5]);
        tracker.update(&[0.5, 0.5]);
        tracker.update(&[0.9, 0.4]);
        assert_eq!(
            tracker.stats,
            BalanceStats {
                steps: 3,
                guarded_steps: 1,
                clamped_steps: 1
            }
        );
    }

    #[test]
    fn smoothing_eps_makes_the_guard_fire_less_on_batch_noise() {
        // Four modalities whose true metric rises steadily (at different speeds) under batch noise
        // larger than a step's rise: the raw d_i are mostly noise, the smoothed ones mostly signal.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut raw = BalanceTracker::new(4, 1.0, BalanceFormula::Guarded);
        let mut ema = BalanceTracker::new(4, 1.0, BalanceFormula::Guarded).with_ema(0.9);
        for step in 0..400 {
            let metrics: Vec<f64> = (0..4)
                .map(|i| 0.2 + 0.0005 * step as f64 * (i + 1) as f64 + rng.gen_range(-0.01..0.01))
                .collect();
            raw.update(&metrics);
            ema.update(&metrics);
        }
        let fired = |t: &BalanceTracker| {
            (t.stats.guarded_steps + t.stats.clamped_steps) as f64 / t.stats.steps as f64
        };
        assert!(
            fired(&ema) < fired(&raw),
            "ema {:?} vs raw {:?}",
            ema.stats,
            raw.stats
        );
        assert_eq!(neutral_balance(4, 1.0), vec![0.75; 4]);
    }

    #[test]
    fn direction_loss_is_zero_when_gradients_align_and_two_b_when_opposed() {
        let g = Tensor::from_slice(&[1.0f32, 2.0, -1.0]);
        let (loss, cos) = direction_loss(&g, &[g.copy(), -&g], &[0.5, 0.5]);
        assert!((cos[0] - 1.0).abs() < 1e-6 && (cos[1] + 1.0).abs() < 1e-6);
        // (0.5 - 0.5) + (0.5 + 0.5) over M = 2
        assert!((loss.double_value(&[]) - 0.5).abs() < 1e-6);
    }
}
