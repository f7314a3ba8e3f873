//! What a comparison's runs add up to: each run's test metrics and per-modality scores as its
//! stored events report them, and per arm the mean and 95 % t interval of every metric, the paired
//! differences against joint training and the modality classifiers' scores.

use super::stats::{interval, paired_differences, Interval};
use super::ComparisonRow;
use crate::db;
use crate::error::{Error, Result};
use crate::AppState;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The arm the paired differences are taken against.
const BASELINE: &str = "joint";

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub job_id: i64,
    pub arm: String,
    pub method: String,
    pub seed: i64,
    pub state: db::JobState,
    /// The run's test metrics (its `finished` event); empty until it finished.
    pub test_metrics: BTreeMap<String, f64>,
    /// Per-modality classifier scores of the best validation.
    pub modality_metrics: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Debug, Serialize)]
pub struct ArmSummary {
    pub arm: String,
    pub runs: usize,
    pub finished: usize,
    pub metrics: BTreeMap<String, Interval>,
}

#[derive(Debug, Serialize)]
pub struct PairedDifference {
    pub arm: String,
    pub metric: String,
    /// Of (arm - joint) over the seeds both finished.
    pub interval: Interval,
    /// Seeds on which the arm scored above joint.
    pub above: usize,
}

#[derive(Debug, Serialize)]
pub struct ModalityScore {
    pub arm: String,
    pub modality: String,
    pub metric: String,
    pub interval: Interval,
}

#[derive(Debug, Serialize)]
pub struct Aggregate {
    pub id: i64,
    pub name: String,
    pub dataset_id: Option<i64>,
    pub spec: serde_json::Value,
    /// The metric the figure shows (the task's headline).
    pub headline: Option<String>,
    pub metrics: Vec<String>,
    /// Every run finished (succeeded, failed, cancelled or interrupted).
    pub done: bool,
    pub runs: Vec<RunResult>,
    pub arms: Vec<ArmSummary>,
    pub paired: Vec<PairedDifference>,
    pub modality: Vec<ModalityScore>,
    /// What the reader must know before trusting the intervals (e.g. too few seeds).
    pub warnings: Vec<String>,
}

/// Seeds below which a 95 % t interval is too wide to decide anything (2 seeds: mean ± 12.7 x
/// the standard error).
pub const MIN_SEEDS: usize = 3;

/// Metrics where lower is better are still aggregated the same way; the headline is the first
/// of these that the runs report.
const HEADLINES: [&str; 5] = ["dice_mean", "accuracy", "f1_weighted", "acc2", "mae"];

/// The comparison `id` as it stands now (runs still queued or running count as unscored).
pub async fn aggregate(state: &AppState, id: i64) -> Result<Aggregate> {
    let row: ComparisonRow = sqlx::query_as("SELECT * FROM comparisons WHERE id = ?")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("comparison {id}")))?;
    let runs = load_runs(state, id).await?;
    let summary = summarise(&runs);
    Ok(Aggregate {
        id,
        name: row.name,
        dataset_id: row.dataset_id,
        spec: serde_json::from_str(&row.spec).unwrap_or_default(),
        headline: summary.headline,
        done: runs.iter().all(|r| r.state.is_terminal()),
        metrics: summary.metrics,
        runs,
        arms: summary.arms,
        paired: summary.paired,
        modality: summary.modality,
        warnings: summary.warnings,
    })
}

/// The comparison's runs in the order they were queued, each with what its stored events report
/// (a run's job deleted since is left out).
async fn load_runs(state: &AppState, id: i64) -> Result<Vec<RunResult>> {
    let members: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT job_id, arm, method, seed FROM comparison_runs WHERE comparison_id = ?
         ORDER BY rowid",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let mut runs = Vec::new();
    for (job_id, arm, method, seed) in members {
        let Ok(job) = db::job(&state.pool, job_id).await else {
            continue; // deleted since
        };
        let finished: Option<String> = sqlx::query_scalar(
            "SELECT data FROM events WHERE job_id = ? AND kind = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(job_id)
        .bind(cggm_core::events::EventKind::Finished.as_str())
        .fetch_optional(&state.pool)
        .await?;
        let mut test_metrics: BTreeMap<String, f64> = finished
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|v| serde_json::from_value(v["test_metrics"].clone()).ok())
            .filter(|_| job.state == db::JobState::Succeeded)
            .unwrap_or_default();
        if job.state == db::JobState::Succeeded {
            test_metrics.extend(segmentation_extras(&job));
        }
        let modality_metrics = db::best_validation(&state.pool, job_id)
            .await?
            .and_then(|v| serde_json::from_value(v["modality_metrics"].clone()).ok())
            .unwrap_or_default();
        runs.push(RunResult {
            job_id,
            arm,
            method,
            seed,
            state: job.state,
            test_metrics,
            modality_metrics,
        });
    }
    Ok(runs)
}

/// A segmentation run's HD95 (mm) and lesion-wise Dice on the test split, per region and their
/// mean (`hd95_wt`, ..., `lesion_dice_mean`), from its `metrics.json`: the finished event carries
/// only the voxel-wise Dice. An HD95 the report leaves out (infinite: a region predicted on no
/// voxel) is left out here too.
fn segmentation_extras(job: &db::Job) -> BTreeMap<String, f64> {
    let Some(metrics) = cggm_core::rundir::RunDir::new(&job.out_dir).read_metrics() else {
        return BTreeMap::new();
    };
    let test = &metrics["test"];
    let mut out = BTreeMap::new();
    for (field, prefix) in [("hd95", "hd95"), ("lesion_dice", "lesion_dice")] {
        for region in ["wt", "tc", "et", "mean"] {
            if let Some(v) = test[field][region].as_f64().filter(|v| v.is_finite()) {
                out.insert(format!("{prefix}_{region}"), v);
            }
        }
    }
    out
}

/// The statistics of an [`Aggregate`], computed from its runs alone.
struct Summary {
    headline: Option<String>,
    metrics: Vec<String>,
    arms: Vec<ArmSummary>,
    paired: Vec<PairedDifference>,
    modality: Vec<ModalityScore>,
    warnings: Vec<String>,
}

/// The warning for a study of `seeds` distinct seeds, if it has too few.
pub fn seed_warning(seeds: usize) -> Option<String> {
    (seeds < MIN_SEEDS).then(|| {
        format!(
            "Only {seeds} seed{}: a 95 % interval over fewer than {MIN_SEEDS} seeds is too wide to \
             decide anything (with 2 seeds it is the mean ± 12.7 standard errors). Run at least \
             {MIN_SEEDS} seeds, better 5.",
            if seeds == 1 { "" } else { "s" }
        )
    })
}

/// Per arm (in the order the runs name them): every metric's interval over the seeds, the paired
/// differences against [`BASELINE`], and the modality classifiers' scores of the finished runs.
fn summarise(runs: &[RunResult]) -> Summary {
    let metrics: Vec<String> = runs
        .iter()
        .flat_map(|r| r.test_metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut arm_order: Vec<String> = Vec::new();
    for run in runs {
        if !arm_order.contains(&run.arm) {
            arm_order.push(run.arm.clone());
        }
    }
    let mut arms = Vec::new();
    let mut paired = Vec::new();
    let mut modality = Vec::new();
    for arm in &arm_order {
        let members: Vec<&RunResult> = runs.iter().filter(|r| &r.arm == arm).collect();
        arms.push(arm_summary(runs, arm, &members, &metrics));
        if arm != BASELINE {
            paired.extend(paired_against_baseline(runs, arm, &metrics));
        }
        modality.extend(modality_scores(arm, &members));
    }
    let headline = HEADLINES
        .iter()
        .find(|h| metrics.iter().any(|m| m == *h))
        .map(|h| h.to_string())
        .or_else(|| metrics.first().cloned());
    let seeds = runs.iter().map(|r| r.seed).collect::<BTreeSet<_>>().len();
    Summary {
        headline,
        metrics,
        arms,
        paired,
        modality,
        warnings: seed_warning(seeds).into_iter().collect(),
    }
}

/// The finite scores of `metric` by the runs of `arm`, by seed.
fn by_seed(runs: &[RunResult], arm: &str, metric: &str) -> BTreeMap<i64, f64> {
    runs.iter()
        .filter(|r| r.arm == arm)
        .filter_map(|r| r.test_metrics.get(metric).map(|v| (r.seed, *v)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// An arm's run counts and the interval of each metric over its seeds.
fn arm_summary(
    runs: &[RunResult],
    arm: &str,
    members: &[&RunResult],
    metrics: &[String],
) -> ArmSummary {
    let mut summary = BTreeMap::new();
    for metric in metrics {
        let values: Vec<f64> = by_seed(runs, arm, metric).into_values().collect();
        if let Some(i) = interval(&values) {
            summary.insert(metric.clone(), i);
        }
    }
    ArmSummary {
        arm: arm.to_string(),
        runs: members.len(),
        finished: members
            .iter()
            .filter(|r| !r.test_metrics.is_empty())
            .count(),
        metrics: summary,
    }
}

/// For each metric, the interval of `arm`'s differences from [`BASELINE`] over their shared
/// seeds.
fn paired_against_baseline(
    runs: &[RunResult],
    arm: &str,
    metrics: &[String],
) -> Vec<PairedDifference> {
    let mut paired = Vec::new();
    for metric in metrics {
        let diffs = paired_differences(
            &by_seed(runs, arm, metric),
            &by_seed(runs, BASELINE, metric),
        );
        if let Some(i) = interval(&diffs) {
            paired.push(PairedDifference {
                arm: arm.to_string(),
                metric: metric.clone(),
                above: diffs.iter().filter(|d| **d > 0.0).count(),
                interval: i,
            });
        }
    }
    paired
}

/// The interval of each (modality, metric) score over an arm's finished runs.
fn modality_scores(arm: &str, members: &[&RunResult]) -> Vec<ModalityScore> {
    let mut per_modality: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for run in members.iter().filter(|r| !r.test_metrics.is_empty()) {
        for (name, scores) in &run.modality_metrics {
            for (metric, value) in scores {
                per_modality
                    .entry((name.clone(), metric.clone()))
                    .or_default()
                    .push(*value);
            }
        }
    }
    per_modality
        .into_iter()
        .filter_map(|((name, metric), values)| {
            interval(&values).map(|i| ModalityScore {
                arm: arm.to_string(),
                modality: name,
                metric,
                interval: i,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(arm: &str, seed: i64, metrics: &[(&str, f64)]) -> RunResult {
        RunResult {
            job_id: seed,
            arm: arm.into(),
            method: arm.split(' ').next().unwrap().into(),
            seed,
            state: db::JobState::Succeeded,
            test_metrics: metrics.iter().map(|(m, v)| (m.to_string(), *v)).collect(),
            modality_metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn paired_differences_are_taken_against_joint_on_the_seeds_both_scored() {
        let runs = [
            run("cggm", 1, &[("accuracy", 0.70), ("mae", 1.0)]),
            run("joint", 1, &[("accuracy", 0.60), ("mae", 1.5)]),
            run("joint", 2, &[("accuracy", 0.50), ("mae", 2.0)]),
            run("cggm", 2, &[("accuracy", 0.45), ("mae", 1.0)]),
            run("cggm", 3, &[("accuracy", 0.99), ("mae", 0.1)]),
        ];
        let summary = summarise(&runs);
        assert_eq!(summary.headline.as_deref(), Some("accuracy"));
        assert_eq!(summary.metrics, ["accuracy", "mae"]);
        let arms: Vec<&str> = summary.arms.iter().map(|a| a.arm.as_str()).collect();
        assert_eq!(arms, ["cggm", "joint"], "in the order the runs name them");
        assert_eq!(summary.arms[0].metrics["accuracy"].n, 3);
        assert!(
            summary.paired.iter().all(|p| p.arm == "cggm"),
            "none for joint"
        );
        let accuracy = summary
            .paired
            .iter()
            .find(|p| p.metric == "accuracy")
            .unwrap();
        // Seeds 1 and 2 only (joint has no seed 3): +0.10 and -0.05.
        assert_eq!((accuracy.interval.n, accuracy.above), (2, 1));
        assert!((accuracy.interval.mean - 0.025).abs() < 1e-12);
        assert!(
            summary.warnings.is_empty(),
            "three seeds: {:?}",
            summary.warnings
        );
    }

    #[test]
    fn a_study_of_fewer_than_three_seeds_says_its_intervals_cannot_decide() {
        let runs = [
            run("joint", 1, &[("dice_mean", 0.5)]),
            run("cggm", 1, &[("dice_mean", 0.6)]),
            run("joint", 2, &[("dice_mean", 0.4)]),
            run("cggm", 2, &[("dice_mean", 0.3)]),
        ];
        let warnings = summarise(&runs).warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("Only 2 seeds"), "{}", warnings[0]);
        assert!(seed_warning(1).unwrap().starts_with("Only 1 seed:"));
    }
}
