//! Classifier-guided gradient modulation (CGGM, Guo et al., NeurIPS 2024), the pieces that are
//! independent of the task: balance coefficients, magnitude modulation of encoder gradients, and
//! the direction-modulation loss. README "What CGGM computes here" restates the method; the numbers below follow it.

pub use cggm_core::balance::*;
use serde::{Deserialize, Serialize};
use tch::Tensor;

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
    /// The last step's improvements d_i (finite).
    #[serde(default)]
    pub last_improvements: Vec<f64>,
    /// `cggm-authors`: the L_gm of the previous step (weights and coefficients), applied now.
    #[serde(default)]
    pub authors_lag: Option<authors::LaggedDirection>,
}

impl BalanceTracker {
    pub fn new(modalities: usize, rho: f64, formula: BalanceFormula) -> Self {
        Self {
            previous: vec![0.0; modalities],
            rho,
            formula,
            eps_ema: 0.0,
            stats: BalanceStats::default(),
            last_improvements: Vec::new(),
            authors_lag: None,
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
        let finite: Vec<f64> = improvements
            .iter()
            .map(|v| if v.is_finite() { *v } else { 0.0 })
            .collect();
        self.stats.record(&finite, &outcome);
        self.last_improvements = finite;
        outcome
    }
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

/// The authors' CGGM as their public code runs it (zrguo/CGGM `src/segtrain.py` for BraTS,
/// `src/msatrain.py` for the feature tasks), for `--method cggm-authors`: their per-modality
/// metric eps_i, their coefficients, and their direction term, built at step t - 1 from the
/// pre-update weights and added to the loss at step t.
pub mod authors {
    use super::direction_loss;
    use crate::task::TaskKind;
    use serde::{Deserialize, Serialize};
    use tch::{Device, Kind, Tensor};

    /// `(S + 1e-8 - d_i) / (S + 1e-8)`, `S = sum_k d_k`: their `coeff` (no rho; their
    /// magnitude modulation multiplies it by rho, their L_gm does not).
    pub fn coefficients(improvements: &[f64]) -> Vec<f64> {
        super::balance_coefficients(improvements, 1.0, super::BalanceFormula::Raw)
    }

    /// Their Dice (`src/eval_metrics.py` `Dice`): per sample `2 (sum o t + 1e-3) / (sum o +
    /// sum t + 2e-3)` over the pixels, averaged over the batch. o, t: [B, H, W] float masks.
    fn dice(o: &Tensor, t: &Tensor) -> Tensor {
        let dims: &[i64] = &[1, 2];
        let inter = (o * t).sum_dim_intlist(dims, false, Kind::Float) + 1e-3;
        let union = o.sum_dim_intlist(dims, false, Kind::Float)
            + t.sum_dim_intlist(dims, false, Kind::Float)
            + 2e-3;
        (inter * 2.0 / union).mean(Kind::Float)
    }

    /// Their eps_i for BraTS (`train_eval_seg`): argmax, then the mean of the ET (class 3), TC
    /// (1 or 3) and WT (not 0) Dice of [`dice`]. logits [B, C, H, W], target [B, H, W] int64.
    pub fn segmentation_eps(logits: &Tensor, target: &Tensor) -> f64 {
        let o = crate::task::class_indices(logits);
        let f = |x: Tensor| x.to_kind(Kind::Float);
        let et = dice(&f(o.eq(3)), &f(target.eq(3)));
        let tc = dice(
            &f(o.eq(1).logical_or(&o.eq(3))),
            &f(target.eq(1).logical_or(&target.eq(3))),
        );
        let wt = dice(&f(o.ne(0)), &f(target.ne(0)));
        ((et + tc + wt) / 3.0).double_value(&[])
    }

    /// Their eps_i for regression (`train_eval_senti`): the share of samples whose prediction
    /// and label are both > 0 or both <= 0 (label 0 counts as negative).
    pub fn sign_accuracy(pred: &Tensor, target: &Tensor) -> f64 {
        let p = pred.flatten(0, -1).gt(0.0);
        let t = target.flatten(0, -1).gt(0.0);
        share(&p.eq_tensor(&t))
    }

    /// The share of true values, in f64 as their numpy/sklearn means: when the modalities'
    /// changes cancel, S + 1e-8 is a rounding residue, and the coefficients depend on it.
    fn share(hits: &Tensor) -> f64 {
        hits.to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    }

    /// Their eps_i for classification (`train_eval_iemo`, `train_eval_food`): argmax accuracy.
    pub fn accuracy(logits: &Tensor, target: &Tensor) -> f64 {
        share(&logits.argmax(1, false).eq_tensor(target))
    }

    /// eps_i of each classifier's logits, by task.
    pub fn batch_metrics(task: TaskKind, logits: &[Tensor], target: &Tensor) -> Vec<f64> {
        logits
            .iter()
            .map(|l| match task {
                TaskKind::Segmentation => segmentation_eps(l, target),
                TaskKind::Regression => sign_accuracy(l, target),
                TaskKind::Classification => accuracy(l, target),
            })
            .collect()
    }

    /// A tensor's values, to keep it in a checkpoint.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct SavedTensor {
        pub shape: Vec<i64>,
        pub values: Vec<f32>,
    }

    impl SavedTensor {
        pub fn of(t: &Tensor) -> Self {
            let flat = t
                .detach()
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .flatten(0, -1)
                .contiguous();
            Self {
                shape: t.size(),
                values: Vec::<f32>::try_from(&flat).unwrap_or_default(),
            }
        }

        pub fn tensor(&self, device: Device) -> Tensor {
            Tensor::from_slice(&self.values)
                .view(self.shape.as_slice())
                .to_device(device)
        }
    }

    /// Their `l_gm` as built at step t - 1 (after the classifiers' backward, before either
    /// optimiser stepped): `(sum_i |c_i| - sum_i c_i cos(W_i, W_F)) / M` over the last layers'
    /// *weights* at that moment, with that step's coefficients c_i (no rho). Added to the loss at
    /// step t, its gradient reaches only the fusion head's last-layer weight, evaluated at those
    /// old weights (their graph holds clones of them).
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct LaggedDirection {
        pub fusion: SavedTensor,
        pub classifiers: Vec<SavedTensor>,
        pub coefficients: Vec<f64>,
    }

    impl LaggedDirection {
        /// L_gm's value and its gradient with respect to the fusion head's last-layer weight
        /// (evaluated at the saved weights).
        pub fn value_and_gradient(&self, device: Device) -> (f64, Tensor) {
            let w = self.fusion.tensor(device).set_requires_grad(true);
            let cls: Vec<Tensor> = self.classifiers.iter().map(|c| c.tensor(device)).collect();
            let (loss, _) = direction_loss(&w, &cls, &self.coefficients);
            let value = loss.double_value(&[]);
            let grad = Tensor::run_backward(&[&loss], &[&w], false, false).remove(0);
            (value, grad)
        }
    }
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
            // Up to the authors' 1e-8 in the raw formula's denominator.
            assert!(
                (g - r).abs() < 1e-7,
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
        // The raw formula keeps the authors' epsilon: (0 + 1e-8 - 0) / (0 + 1e-8) = 1.
        let raw = balance_coefficients(&[0.0; 4], 1.3, BalanceFormula::Raw);
        assert_eq!(raw, vec![1.3; 4]);
        let raw = balance_coefficients(&[0.2, -0.2, 0.1, -0.1], 1.0, BalanceFormula::Raw);
        assert!(
            raw[0] < -1e6,
            "the raw switch must really be raw (near-zero denominators explode): {raw:?}"
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
        let st = &tracker.stats;
        assert_eq!((st.steps, st.guarded_steps, st.clamped_steps), (3, 1, 1));
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

    /// issue 20: `--balance raw` divided by sum d = 0 on repeated identical metrics (NaN, the
    /// run aborted); with the authors' epsilon it gives rho, and nothing else makes it NaN.
    #[test]
    fn raw_formula_never_yields_nan_on_repeated_identical_metrics() {
        let mut tracker = BalanceTracker::new(4, 1.0, BalanceFormula::Raw);
        let metrics = [0.3, 0.5, 0.2, 0.4];
        tracker.update(&metrics);
        for step in 1..50 {
            let b = tracker.update(&metrics);
            assert!(b.iter().all(|v| v.is_finite()), "step {step}: {b:?}");
            assert_eq!(b, vec![1.0; 4], "every d_i = 0: the authors' coefficient 1");
        }
        for d in [
            [f64::NAN, 0.1, 0.0, 0.0],
            [f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0],
            [-1e-8, 0.0, 0.0, 0.0],
        ] {
            let b = balance_coefficients(&d, 1.0, BalanceFormula::Raw);
            assert!(b.iter().all(|v| v.is_finite()), "{d:?} -> {b:?}");
        }
        // The authors' coefficients without rho, as their code computes them.
        let c = authors::coefficients(&[0.1, 0.3, 0.0, 0.1]);
        let s = 0.5 + 1e-8;
        for (ci, di) in c.iter().zip([0.1, 0.3, 0.0, 0.1]) {
            assert!((ci - (s - di) / s).abs() < 1e-15);
        }
    }

    #[test]
    fn series_statistics_of_known_series() {
        let s = SeriesStats::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(s.mean(), Some(3.0));
        assert!((s.sd().unwrap() - 2.5f64.sqrt()).abs() < 1e-12);
        // deviations -2..2: (2 + 0 + 0 + 2) / 10
        assert!((s.lag1_autocorrelation().unwrap() - 0.4).abs() < 1e-12);
        assert!((s.snr().unwrap() - 3.0 / 2.5f64.sqrt()).abs() < 1e-12);
        let alt = SeriesStats::of(&[1.0, -1.0, 1.0, -1.0]);
        assert_eq!(alt.mean(), Some(0.0));
        assert!((alt.lag1_autocorrelation().unwrap() + 0.75).abs() < 1e-12);
        assert_eq!(alt.snr(), Some(0.0));
        assert_eq!(
            SeriesStats::of(&[2.0, 2.0, 2.0]).lag1_autocorrelation(),
            None
        );
        assert_eq!(SeriesStats::of(&[2.0]).sd(), None);
        assert_eq!(SeriesStats::default().mean(), None);
        // The running sums survive a JSON round trip (checkpoints).
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SeriesStats>(&json).unwrap(), s);
    }

    /// The differences of independent draws (d_i of a metric that is pure batch noise) have
    /// lag-1 autocorrelation -0.5 and z near 0; a steady trend under small noise has a large z.
    #[test]
    fn diagnostics_tell_batch_noise_from_a_trend() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let names: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let mut noise = BalanceTracker::new(2, 1.0, BalanceFormula::Guarded);
        let mut trend = BalanceTracker::new(2, 1.0, BalanceFormula::Guarded);
        for step in 0..20_000 {
            noise.update(&[rng.gen_range(0.2..0.6), rng.gen_range(0.2..0.6)]);
            let t = 1e-3 * step as f64;
            trend.update(&[t + rng.gen_range(0.0..1e-4), 2.0 * t]);
        }
        let d = BalanceDiagnostics::new(&noise.stats, &names, None);
        assert_eq!(d.steps, 20_000);
        for (m, r) in &d.improvement_lag1_autocorrelation {
            assert!((r.unwrap() + 0.5).abs() < 0.03, "{m}: {r:?}");
        }
        let z = d.total_improvement_z.unwrap();
        assert!(z.abs() < 0.03, "z {z}");
        assert!((d.guarded_share.unwrap() - 0.5).abs() < 0.05, "{d:?}");
        // Equal spreads: mean B = rho (M-1)/M = 0.5 for both.
        for b in d.balance_mean.values() {
            assert!((b.unwrap() - 0.5).abs() < 0.05);
        }
        assert!(
            d.summary
                .starts_with("B_i carried no signal above batch noise on this run (z = "),
            "{}",
            d.summary
        );
        assert!(d.summary.contains("-0.5"), "{}", d.summary);
        let t = BalanceDiagnostics::new(&trend.stats, &names, None);
        assert!(t.total_improvement_z.unwrap() > 5.0, "{t:?}");
        assert!(t
            .summary
            .starts_with("B_i carried a signal above batch noise"));
        // b improves twice as fast as a: B_a = 2/3, B_b = 1/3.
        assert!((t.balance_mean["a"].unwrap() - 2.0 / 3.0).abs() < 0.01);
        assert!((t.balance_mean["b"].unwrap() - 1.0 / 3.0).abs() < 0.01);
        assert!(
            BalanceDiagnostics::new(&BalanceStats::default(), &names, None)
                .summary
                .starts_with("No B_i was measured")
        );
    }

    #[test]
    fn diagnostics_window_covers_the_steps_since_it_was_taken() {
        let mut tracker = BalanceTracker::new(2, 1.0, BalanceFormula::Guarded);
        for v in [0.1, 0.2, 0.3] {
            tracker.update(&[v, v]);
        }
        let first = tracker.stats.take_window();
        assert_eq!(first.n, 3);
        tracker.update(&[0.1, 0.1]);
        let names = vec!["a".to_string(), "b".to_string()];
        let w = tracker.stats.take_window();
        let d = BalanceDiagnostics::new(&tracker.stats, &names, Some(&w));
        assert_eq!((d.steps, d.window_steps), (4, 1));
        // sum d: 0.2, 0.2, 0.2, -0.4: mean 0.05, SD 0.3.
        assert!((d.total_improvement_mean.unwrap() - 0.05).abs() < 1e-12);
        assert!((d.total_improvement_sd.unwrap() - 0.3).abs() < 1e-12);
        assert!((d.total_improvement_z.unwrap() - 0.05 / 0.3).abs() < 1e-12);
        assert!((d.total_improvement_t.unwrap() - 2.0 * 0.05 / 0.3).abs() < 1e-12);
        assert!(d.summary.starts_with("Too few steps (4)"), "{}", d.summary);
    }

    /// The authors' eps for BraTS: per-sample Dice with 1e-3 smoothing, averaged over the batch
    /// (an empty region in both prediction and truth scores 1, not the pooled hard Dice).
    #[test]
    fn authors_segmentation_eps_is_a_per_sample_smoothed_dice() {
        // Two 1x2 samples: sample 0 predicts [3, 0] for truth [3, 0], sample 1 [0, 0] for [2, 2].
        let pred = Tensor::from_slice(&[3i64, 0, 0, 0]).view([2, 1, 2]);
        let logits = pred
            .one_hot(4)
            .permute([0, 3, 1, 2])
            .to_kind(tch::Kind::Float);
        let target = Tensor::from_slice(&[3i64, 0, 2, 2]).view([2, 1, 2]);
        let one = 2.0 * (1.0 + 1e-3) / (2.0 + 2e-3);
        let empty = 2.0 * 1e-3 / 2e-3;
        let miss = 2.0 * 1e-3 / (2.0 + 2e-3);
        // ET, TC: sample 0 perfect, sample 1 empty in both; WT: sample 0 perfect, 1 missed.
        let want = ((one + empty) / 2.0 * 2.0 + (one + miss) / 2.0) / 3.0;
        let got = authors::segmentation_eps(&logits, &target);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Regression: label 0 is negative for the authors (> 0), positive for our Acc-2.
        let p = Tensor::from_slice(&[0.5f32, -0.5]);
        let t = Tensor::from_slice(&[0.0f32, 0.0]);
        assert_eq!(authors::sign_accuracy(&p, &t), 0.5);
    }

    /// Why magnitude modulation by a constant B is a no-op under Adam (every feature preset,
    /// `cpu-small`, `tiny`) but a smaller learning rate under SGD: Adam's update divides the
    /// gradient's moments by each other, so c g gives the trajectory of g (up to Adam's epsilon).
    #[test]
    fn a_constant_b_changes_nothing_under_adam_and_scales_the_step_under_sgd() {
        use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind, Param};
        let run = |kind: OptimizerKind, b: f64| -> Vec<f32> {
            let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
            let cfg = OptimizerConfig {
                kind,
                weight_decay: 0.0,
                ..OptimizerConfig::default()
            };
            let param = Param {
                name: "encoder.w".into(),
                tensor: w.shallow_clone(),
                group: 1,
            };
            let mut opt = Optimizer::new(cfg, vec![param]);
            for step in 0..30 {
                opt.zero_grad();
                let target = Tensor::from_slice(&[1.0f32, 0.0, -1.0]) * (1.0 + 0.1 * step as f64);
                (&w - target).square().sum(tch::Kind::Float).backward();
                opt.scale_group_gradients(1, b);
                opt.step(&|_| 0.01);
            }
            Vec::try_from(&w.detach()).unwrap()
        };
        let gap = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let adam = gap(
            &run(OptimizerKind::Adam, 1.0),
            &run(OptimizerKind::Adam, 0.75),
        );
        assert!(adam < 1e-5, "Adam: {adam}");
        let sgd = gap(
            &run(OptimizerKind::Sgd, 1.0),
            &run(OptimizerKind::Sgd, 0.75),
        );
        assert!(sgd > 1e-2, "SGD: {sgd}");
    }
}
