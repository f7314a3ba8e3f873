//! Evaluation metrics of the feature tasks, with the conventions the field reports (MulT, MMSA,
//! the CGGM paper): classification accuracy, weighted and macro F1 (scikit-learn's definitions:
//! labels = those present in truth or prediction, zero division counts as 0) and per-class
//! scores; regression MAE, Pearson r, Acc-2 and F1 both "negative vs non-negative" (`has0`) and
//! "non-zero" (samples with label 0 left out), and Acc-7 (clip to [-3, 3], round).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub f1_weighted: f64,
    pub f1_macro: f64,
    /// Keyed by class name.
    pub per_class: BTreeMap<String, ClassScores>,
    /// confusion[true][predicted], in class order.
    pub confusion: Vec<Vec<usize>>,
    pub class_names: Vec<String>,
}

impl ClassificationReport {
    /// The flat metrics of events and summaries.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("accuracy".to_string(), self.accuracy),
            ("f1_weighted".to_string(), self.f1_weighted),
            ("f1_macro".to_string(), self.f1_macro),
        ])
    }
}

/// Per-label (precision, recall, f1, support) over `labels`.
fn per_label(truth: &[usize], pred: &[usize], labels: &[usize]) -> Vec<(f64, f64, f64, usize)> {
    labels
        .iter()
        .map(|&c| {
            let tp = truth
                .iter()
                .zip(pred)
                .filter(|(t, p)| **t == c && **p == c)
                .count() as f64;
            let support = truth.iter().filter(|t| **t == c).count();
            let predicted = pred.iter().filter(|p| **p == c).count() as f64;
            let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            (precision, recall, f1, support)
        })
        .collect()
}

/// F1 averaged over the labels present in truth or prediction: (weighted by support, macro).
pub fn f1_scores(truth: &[usize], pred: &[usize]) -> (f64, f64) {
    let mut labels: Vec<usize> = truth.iter().chain(pred).copied().collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.is_empty() {
        return (0.0, 0.0);
    }
    let scores = per_label(truth, pred, &labels);
    let n = truth.len().max(1) as f64;
    let weighted = scores.iter().map(|s| s.2 * s.3 as f64).sum::<f64>() / n;
    let macro_f1 = scores.iter().map(|s| s.2).sum::<f64>() / labels.len() as f64;
    (weighted, macro_f1)
}

pub fn accuracy(truth: &[usize], pred: &[usize]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().zip(pred).filter(|(t, p)| t == p).count() as f64 / truth.len() as f64
}

pub fn classification_report(
    truth: &[usize],
    pred: &[usize],
    class_names: &[String],
) -> ClassificationReport {
    let k = class_names.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        if t < k && p < k {
            confusion[t][p] += 1;
        }
    }
    let labels: Vec<usize> = (0..k).collect();
    let per_class = class_names
        .iter()
        .cloned()
        .zip(per_label(truth, pred, &labels))
        .map(|(name, (precision, recall, f1, support))| {
            (
                name,
                ClassScores {
                    precision,
                    recall,
                    f1,
                    support,
                },
            )
        })
        .collect();
    let (f1_weighted, f1_macro) = f1_scores(truth, pred);
    ClassificationReport {
        accuracy: accuracy(truth, pred),
        f1_weighted,
        f1_macro,
        per_class,
        confusion,
        class_names: class_names.to_vec(),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegressionReport {
    pub mae: f64,
    /// Pearson correlation (0 when either side has no variance).
    pub corr: f64,
    /// Acc-2 / weighted F1, negative (< 0) vs non-negative (>= 0), all samples.
    pub acc2: f64,
    pub f1: f64,
    /// Acc-2 / weighted F1, negative vs positive, samples whose label is 0 left out.
    pub acc2_nonzero: f64,
    pub f1_nonzero: f64,
    /// Accuracy over the 7 integer classes -3..=3 after clipping and rounding.
    pub acc7: f64,
    /// (predicted, true) per test sample, for the scatter plot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<(f64, f64)>,
}

impl RegressionReport {
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("mae".to_string(), self.mae),
            ("corr".to_string(), self.corr),
            ("acc2".to_string(), self.acc2),
            ("f1".to_string(), self.f1),
            ("acc2_nonzero".to_string(), self.acc2_nonzero),
            ("f1_nonzero".to_string(), self.f1_nonzero),
            ("acc7".to_string(), self.acc7),
        ])
    }
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    if a.is_empty() {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va <= 0.0 || vb <= 0.0 {
        0.0
    } else {
        cov / (va.sqrt() * vb.sqrt())
    }
}

/// Round half to even, as numpy's `np.round` (the MMSA convention for Acc-7).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

pub fn regression_report(pred: &[f64], truth: &[f64]) -> RegressionReport {
    let n = pred.len().max(1) as f64;
    let mae = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / n;
    let sign = |v: &f64| usize::from(*v >= 0.0);
    let (tb, pb): (Vec<usize>, Vec<usize>) =
        truth.iter().map(sign).zip(pred.iter().map(sign)).unzip();
    let nonzero: Vec<usize> = (0..truth.len()).filter(|&i| truth[i] != 0.0).collect();
    let tz: Vec<usize> = nonzero
        .iter()
        .map(|&i| usize::from(truth[i] > 0.0))
        .collect();
    let pz: Vec<usize> = nonzero
        .iter()
        .map(|&i| usize::from(pred[i] > 0.0))
        .collect();
    let seven = |v: &f64| round_half_even(v.clamp(-3.0, 3.0)) as i64;
    let acc7 = pred
        .iter()
        .zip(truth)
        .filter(|(p, t)| seven(p) == seven(t))
        .count() as f64
        / n;
    RegressionReport {
        mae,
        corr: pearson(pred, truth),
        acc2: accuracy(&tb, &pb),
        f1: f1_scores(&tb, &pb).0,
        acc2_nonzero: accuracy(&tz, &pz),
        f1_nonzero: f1_scores(&tz, &pz).0,
        acc7,
        pairs: pred.iter().copied().zip(truth.iter().copied()).collect(),
    }
}

/// Fused and per-modality scores of one split.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeatureEvalReport {
    pub samples: usize,
    /// The task's metrics by name (the `metrics` of the events).
    pub metrics: BTreeMap<String, f64>,
    /// Each modality's own classifier, same metric names.
    pub modality_metrics: BTreeMap<String, BTreeMap<String, f64>>,
    /// Classification: per-class scores and the confusion matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassificationReport>,
    /// Regression: every metric and the (predicted, true) pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionReport>,
}

impl FeatureEvalReport {
    /// Higher is better: accuracy (classification), minus MAE (regression).
    pub fn selection_score(&self) -> f64 {
        match (&self.classification, &self.regression) {
            (Some(c), _) => c.accuracy,
            (_, Some(r)) => -r.mae,
            _ => f64::NEG_INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_predictions_score_one() {
        let t = [0usize, 1, 2, 2];
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r = classification_report(&t, &t, &names);
        assert_eq!((r.accuracy, r.f1_weighted, r.f1_macro), (1.0, 1.0, 1.0));
        assert_eq!(r.confusion[2][2], 2);
        let reg = regression_report(&[1.0, -2.0], &[1.0, -2.0]);
        assert_eq!((reg.mae, reg.acc2, reg.acc7), (0.0, 1.0, 1.0));
        assert!((reg.corr - 1.0).abs() < 1e-12);
    }

    #[test]
    fn acc7_rounds_half_to_even_like_numpy() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        assert_eq!(round_half_even(-0.6), -1.0);
    }
}
