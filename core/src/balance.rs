//! How CGGM's balance coefficients B_i are computed from the per-modality improvements (the
//! computation itself is the trainer's `cggm` module).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How B_i is computed from the per-modality improvements d_i.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceFormula {
    /// The paper's formula with a guard that keeps B finite and meaningful (see
    /// `balance_coefficients`).
    #[default]
    Guarded,
    /// The paper's formula with only the authors' epsilon (zrguo/CGGM `src/segtrain.py`,
    /// `src/msatrain.py`: `diff_sum = sum(diff) + 1e-8`, `coeff = (diff_sum - d) / diff_sum`):
    /// `rho * (S + 1e-8 - d_i) / (S + 1e-8)`, `S = sum_k d_k`. For reproduction studies: when
    /// the improvements nearly cancel it is huge or sign-flipped, but it is never NaN (see
    /// `balance_outcome`).
    Raw,
}

/// Below this |sum_k d_k| the improvements are indistinguishable from batch noise (the metric is a
/// Dice in [0, 1]); the guard then treats all modalities as improving equally.
pub const NEGLIGIBLE_TOTAL_IMPROVEMENT: f64 = 1e-4;

/// The authors' epsilon in the denominator of B_i (`diff_sum = sum(diff) + 1e-8`).
pub const AUTHORS_EPSILON: f64 = 1e-8;

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
            // The authors' epsilon: with every d_i = 0 (repeated identical metrics) B_i = rho.
            // A non-finite d_i counts as 0 and a denominator of exactly 0 (S = -1e-8) as the
            // epsilon alone, so that B is never NaN or infinite.
            let d: Vec<f64> = improvements
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.0 })
                .collect();
            let mut total = d.iter().sum::<f64>() + AUTHORS_EPSILON;
            if total == 0.0 {
                total = AUTHORS_EPSILON;
            }
            plain(d.iter().map(|di| rho * (total - di) / total).collect())
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

/// Counts over a run of how often the guard decided B, and the running sums behind B's
/// signal-to-noise diagnostics (kept in checkpoints, so they survive resume).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalanceStats {
    pub steps: usize,
    /// Steps where rule 2 set every B_i to the neutral value.
    pub guarded_steps: usize,
    /// Steps where at least one share was clamped (some B_i pinned at 0 or rho).
    pub clamped_steps: usize,
    /// Steps where |sum_k d_k| <= 1e-4, whatever the formula (where the raw formula divides by
    /// almost nothing).
    #[serde(default)]
    pub negligible_total_steps: usize,
    /// B_i per modality, over the run.
    #[serde(default)]
    pub balance: Vec<SeriesStats>,
    /// d_i per modality (non-finite counted as 0), over the run.
    #[serde(default)]
    pub improvement: Vec<SeriesStats>,
    /// sum_k d_k, over the run.
    #[serde(default)]
    pub total_improvement: SeriesStats,
    /// sum_k d_k since the last [`BalanceStats::take_window`] (the last epoch, in the events).
    #[serde(default)]
    pub window_total_improvement: SeriesStats,
}

impl BalanceStats {
    /// Folds one step in: its improvements d_i (already finite) and the coefficients B_i.
    pub fn record(&mut self, improvements: &[f64], outcome: &BalanceOutcome) {
        let m = improvements.len();
        self.balance.resize(m, SeriesStats::default());
        self.improvement.resize(m, SeriesStats::default());
        for (s, d) in self.improvement.iter_mut().zip(improvements) {
            s.push(*d);
        }
        for (s, b) in self.balance.iter_mut().zip(&outcome.coefficients) {
            s.push(*b);
        }
        let total: f64 = improvements.iter().sum();
        self.total_improvement.push(total);
        self.window_total_improvement.push(total);
        self.steps += 1;
        self.guarded_steps += outcome.guarded as usize;
        self.clamped_steps += (outcome.clamped > 0) as usize;
        self.negligible_total_steps += (total.abs() <= NEGLIGIBLE_TOTAL_IMPROVEMENT) as usize;
    }

    /// The window's statistics of sum_k d_k, and a new window.
    pub fn take_window(&mut self) -> SeriesStats {
        std::mem::take(&mut self.window_total_improvement)
    }
}

/// Running sums of a series x_1..x_n (enough for its mean, standard deviation and lag-1
/// autocorrelation without keeping the series).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesStats {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
    /// sum_{t >= 2} x_t x_(t-1)
    pub lag_products: f64,
    pub first: f64,
    pub last: f64,
}

impl SeriesStats {
    /// Appends x (non-finite values count as 0, so that the sums stay finite).
    pub fn push(&mut self, x: f64) {
        let x = if x.is_finite() { x } else { 0.0 };
        if self.n == 0 {
            self.first = x;
        } else {
            self.lag_products += x * self.last;
        }
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
        self.last = x;
    }

    pub fn of(values: &[f64]) -> Self {
        let mut s = Self::default();
        for v in values {
            s.push(*v);
        }
        s
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Sum of squared deviations from the mean.
    fn centred_sum_sq(&self) -> Option<f64> {
        let mean = self.mean()?;
        Some((self.sum_sq - self.n as f64 * mean * mean).max(0.0))
    }

    /// Sample standard deviation (n - 1); None below two values.
    pub fn sd(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        Some((self.centred_sum_sq()? / (self.n - 1) as f64).sqrt())
    }

    /// `sum_{t>=2} (x_t - mean)(x_(t-1) - mean) / sum_t (x_t - mean)^2`; None below three values
    /// or for a constant series. About -0.5 for the differences of independent draws (d_i of
    /// pure batch noise), near 0 for independent values, near 1 for a slow trend.
    pub fn lag1_autocorrelation(&self) -> Option<f64> {
        if self.n < 3 {
            return None;
        }
        let mean = self.mean()?;
        let denom = self.centred_sum_sq()?;
        if denom <= 1e-300 {
            return None;
        }
        let n = self.n as f64;
        let num = self.lag_products - mean * ((self.sum - self.first) + (self.sum - self.last))
            + (n - 1.0) * mean * mean;
        Some(num / denom)
    }

    /// mean / SD: how many standard deviations the series averages per value (the per-step
    /// signal-to-noise ratio `z`).
    pub fn snr(&self) -> Option<f64> {
        let sd = self.sd()?;
        (sd > 0.0).then(|| self.mean().unwrap_or(0.0) / sd)
    }
}

/// B's signal-to-noise diagnostics of a run (or of the run so far): part of `metrics.json` and
/// of the `balance_diagnostics` event. Undefined statistics (too few steps) are null.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalanceDiagnostics {
    pub steps: usize,
    /// Mean and SD of B_i per modality.
    pub balance_mean: BTreeMap<String, Option<f64>>,
    pub balance_sd: BTreeMap<String, Option<f64>>,
    /// Mean and SD of d_i = eps_i^t - eps_i^(t-1) per modality.
    pub improvement_mean: BTreeMap<String, Option<f64>>,
    pub improvement_sd: BTreeMap<String, Option<f64>>,
    /// Lag-1 autocorrelation of d_i per modality (about -0.5: d_i is batch noise).
    pub improvement_lag1_autocorrelation: BTreeMap<String, Option<f64>>,
    /// Mean and SD of sum_k d_k over the steps, and `z` = mean / SD (the signal per step in units
    /// of the batch noise; the audit found z of about 0.02).
    pub total_improvement_mean: Option<f64>,
    pub total_improvement_sd: Option<f64>,
    pub total_improvement_z: Option<f64>,
    /// z * sqrt(steps): the t statistic of "the mean total improvement is not 0".
    pub total_improvement_t: Option<f64>,
    /// z over the last window (the last epoch in the events; the whole run in `metrics.json`).
    pub window_steps: usize,
    pub window_total_improvement_z: Option<f64>,
    /// Shares of steps where the guard set every B_i to neutral, where it pinned at least one
    /// B_i, and where |sum_k d_k| <= 1e-4.
    pub guarded_share: Option<f64>,
    pub clamped_share: Option<f64>,
    pub negligible_total_share: Option<f64>,
    /// One plain sentence for people (run and comparison pages).
    pub summary: String,
}

impl BalanceDiagnostics {
    /// From the run's statistics; `window` is the last window's sum_k d_k (None: the whole run).
    pub fn new(stats: &BalanceStats, names: &[String], window: Option<&SeriesStats>) -> Self {
        let by = |series: &[SeriesStats], f: &dyn Fn(&SeriesStats) -> Option<f64>| {
            names
                .iter()
                .zip(series)
                .map(|(n, s)| (n.clone(), f(s)))
                .collect::<BTreeMap<_, _>>()
        };
        let share = |k: usize| (stats.steps > 0).then(|| k as f64 / stats.steps as f64);
        let total = &stats.total_improvement;
        let window = window.unwrap_or(total);
        let z = total.snr();
        let mut d = Self {
            steps: stats.steps,
            balance_mean: by(&stats.balance, &SeriesStats::mean),
            balance_sd: by(&stats.balance, &SeriesStats::sd),
            improvement_mean: by(&stats.improvement, &SeriesStats::mean),
            improvement_sd: by(&stats.improvement, &SeriesStats::sd),
            improvement_lag1_autocorrelation: by(
                &stats.improvement,
                &SeriesStats::lag1_autocorrelation,
            ),
            total_improvement_mean: total.mean(),
            total_improvement_sd: total.sd(),
            total_improvement_z: z,
            total_improvement_t: z.map(|z| z * (total.n as f64).sqrt()),
            window_steps: window.n as usize,
            window_total_improvement_z: window.snr(),
            guarded_share: share(stats.guarded_steps),
            clamped_share: share(stats.clamped_steps),
            negligible_total_share: share(stats.negligible_total_steps),
            summary: String::new(),
        };
        d.summary = d.sentence();
        d
    }

    /// The plain sentence: whether B_i carried a signal above batch noise (from z), how often
    /// the guard decided, and what d_i's autocorrelation says.
    pub fn sentence(&self) -> String {
        if self.steps == 0 {
            return "No B_i was measured on this run (no per-modality classifiers).".into();
        }
        let Some(z) = self
            .total_improvement_z
            .filter(|_| self.steps >= MIN_STEPS_TO_JUDGE)
        else {
            return format!(
                "Too few steps ({}) to judge whether B_i carried a signal above batch noise.",
                self.steps
            );
        };
        let verdict = if z.abs() < NO_SIGNAL_Z {
            "B_i carried no signal above batch noise on this run"
        } else if z.abs() < STRONG_SIGNAL_Z {
            "B_i carried a weak signal: batch noise dominated each step's B_i on this run"
        } else {
            "B_i carried a signal above batch noise on this run"
        };
        let mut s = format!("{verdict} (z = {z:.2} over {} steps)", self.steps);
        let mut extra = Vec::new();
        if let Some(g) = self.guarded_share.filter(|g| *g > 0.0) {
            extra.push(format!(
                "the guard set B to neutral on {:.0} % of steps",
                g * 100.0
            ));
        }
        let lags: Vec<f64> = self
            .improvement_lag1_autocorrelation
            .values()
            .flatten()
            .copied()
            .collect();
        if !lags.is_empty() {
            let lo = lags.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = lags.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            extra.push(format!(
                "d_i's lag-1 autocorrelation was {lo:.2} to {hi:.2} (-0.5 is pure batch noise)"
            ));
        }
        if !extra.is_empty() {
            s.push_str("; ");
            s.push_str(&extra.join("; "));
        }
        s.push('.');
        s
    }
}

/// Below this many steps the sentence declines to judge.
pub const MIN_STEPS_TO_JUDGE: usize = 10;
/// |z| below this: no signal (a trend of a tenth of the batch noise per step cannot steer B_i).
pub const NO_SIGNAL_Z: f64 = 0.1;
/// |z| from this: the trend dominates the noise in each step's B_i.
pub const STRONG_SIGNAL_Z: f64 = 1.0;
