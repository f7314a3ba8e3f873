//! The statistics of a comparison: a sample's mean with its 95 % t confidence interval, and the
//! paired differences of an arm against the baseline on the seeds both scored.

use serde::Serialize;
use std::collections::BTreeMap;

/// Mean and 95 % t confidence interval of a sample.
#[derive(Clone, Debug, Serialize)]
pub struct Interval {
    pub n: usize,
    pub mean: f64,
    /// Half-width of the 95 % t interval; None for fewer than two values.
    pub half: Option<f64>,
}

/// t quantile 0.975 for `df` degrees of freedom (scipy's `t.ppf(0.975, df)` to 4 decimals up to
/// 30; above, the value at the bracket's lower end: slightly wide, never narrow).
fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        31..=40 => 2.0423,
        41..=60 => 2.0211,
        61..=120 => 2.0003,
        _ => 1.9799,
    }
}

/// The sample's mean and 95 % t interval; None for no values.
pub fn interval(values: &[f64]) -> Option<Interval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let half = (n >= 2).then(|| {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        t975(n - 1) * var.sqrt() / (n as f64).sqrt()
    });
    Some(Interval { n, mean, half })
}

/// The arm's score minus the baseline's on every seed both scored (in seed order); a seed only
/// one of them scored is left out, so that each difference compares runs that saw the same split
/// and initialisation.
pub fn paired_differences(arm: &BTreeMap<i64, f64>, baseline: &BTreeMap<i64, f64>) -> Vec<f64> {
    arm.iter()
        .filter_map(|(seed, v)| baseline.get(seed).map(|b| v - b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_t_interval_of_the_sample() {
        // scipy.stats.t.ppf(0.975, 2) = 4.3027: half-width 4.3027 * sd 1 / sqrt(3)
        let i = interval(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(i.n, 3);
        assert!((i.mean - 2.0).abs() < 1e-12);
        assert!((i.half.unwrap() - 4.3027 / 3f64.sqrt()).abs() < 1e-9);
        assert!(interval(&[5.0]).unwrap().half.is_none());
        assert!(interval(&[]).is_none());
    }

    #[test]
    fn the_t_quantile_matches_scipy_and_is_never_narrower_than_the_true_one() {
        // scipy.stats.t.ppf(0.975, df), to 4 decimals.
        for (df, scipy) in [
            (1, 12.7062),
            (4, 2.7764),
            (9, 2.2622),
            (19, 2.0930),
            (30, 2.0423),
        ] {
            assert!((t975(df) - scipy).abs() < 5e-5, "df {df}: {}", t975(df));
        }
        // Above the table the value of the bracket's lower end: at or above the true quantile.
        for (df, scipy) in [(31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799)] {
            assert!(t975(df) >= scipy, "df {df}: {} < {scipy}", t975(df));
        }
        assert!(t975(100_000) >= 1.9600);
        assert!((1..500).all(|df| t975(df + 1) <= t975(df)), "not monotone");
        assert!(t975(0).is_nan());
    }

    #[test]
    fn paired_differences_subtract_the_baseline_seed_by_seed_and_skip_unpaired_seeds() {
        let baseline = BTreeMap::from([(1, 0.50), (2, 0.60), (3, 0.70)]);
        let arm = BTreeMap::from([(1, 0.55), (3, 0.71), (4, 0.90)]);
        let diffs = paired_differences(&arm, &baseline);
        assert_eq!(
            diffs.len(),
            2,
            "seed 2 lacks the arm, seed 4 the baseline: {diffs:?}"
        );
        assert!((diffs[0] - 0.05).abs() < 1e-12 && (diffs[1] - 0.01).abs() < 1e-12);
        assert!(paired_differences(&arm, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn pairing_by_seed_removes_the_seed_to_seed_spread_from_the_interval() {
        // The arm is 0.02 above the baseline on every seed while the seeds differ by 0.2: the
        // paired interval has no width, the arm's own interval is wider than the seeds' spread.
        let baseline = BTreeMap::from([(1, 0.3), (2, 0.5), (3, 0.7)]);
        let arm: BTreeMap<i64, f64> = baseline.iter().map(|(s, v)| (*s, v + 0.02)).collect();
        let paired = interval(&paired_differences(&arm, &baseline)).unwrap();
        assert_eq!(paired.n, 3);
        assert!((paired.mean - 0.02).abs() < 1e-12);
        assert!(paired.half.unwrap() < 1e-9, "{paired:?}");
        let unpaired = interval(&arm.values().copied().collect::<Vec<_>>()).unwrap();
        assert!(unpaired.half.unwrap() > 0.4, "{unpaired:?}");
    }
}
