//! Studies in the sense of method comparisons ("comparisons" in the code, the URL and the
//! database: `studies` already names uploaded patient scans). A comparison is a grid of training
//! runs on one dataset — methods x seeds, optionally x a rho/lambda grid for the CGGM methods —
//! each an ordinary job through the executor (local queue or Slurm), and one aggregate: mean and
//! 95 % t confidence interval per arm for the task's test metrics, paired differences against
//! joint training (same seed), per-modality classifier scores, as JSON, CSV and a figure (SVG with
//! its text; PNG without).
//!
//! The numbers come from what the runs reported: each job's stored `finished` event
//! (`test_metrics`, the same values the trainer writes to the run's `metrics.json`) and its best
//! validation event (`modality_metrics`).

use crate::db;
use crate::error::{Error, Result};
use crate::templates::HtmlTemplate;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/comparisons", get(list).post(create))
        .route("/comparisons/{id}", get(show))
        .route("/comparisons/{id}/csv", get(csv))
        .route("/comparisons/{id}/png", get(figure))
        .route("/comparisons/{id}/svg", get(figure_svg))
}

/// The pages: `/comparisons` (list and launch form) and `/comparisons/<id>` (aggregate).
pub fn page_router() -> Router<AppState> {
    Router::new()
        .route("/comparisons", get(list_page))
        .route("/comparisons/{id}", get(comparison_page))
}

/// The most runs one comparison may queue.
const MAX_CELLS: usize = 500;

/// `POST /api/comparisons`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ComparisonRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub dataset_id: i64,
    pub methods: Vec<String>,
    pub seeds: Vec<u64>,
    /// CGGM's rho values to cross with the CGGM methods (empty: the preset's).
    #[serde(default)]
    pub rho: Vec<f64>,
    /// CGGM's lambda values to cross with the CGGM methods (empty: the preset's).
    #[serde(default)]
    pub lambda: Vec<f64>,
    /// Run options every run shares (preset, epochs, steps_per_epoch, device, ...), as
    /// `POST /api/jobs` takes them.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

struct Cell {
    arm: String,
    method: String,
    seed: u64,
    /// The run request without `dataset_id`.
    body: serde_json::Value,
}

fn cells(request: &ComparisonRequest) -> Result<Vec<Cell>> {
    let unprocessable = |m: String| Error::Unprocessable(m);
    if request.methods.is_empty() {
        return Err(unprocessable(
            "methods is empty: choose at least one method (joint as the baseline)".into(),
        ));
    }
    if request.seeds.is_empty() {
        return Err(unprocessable(
            "seeds is empty: give at least one seed (three or more for an interval)".into(),
        ));
    }
    for key in ["method", "seed", "rho", "lambda", "dataset_id"] {
        if request.options.contains_key(key) {
            return Err(unprocessable(format!(
                "options.{key}: set it in the comparison's own field, not in the shared options"
            )));
        }
    }
    let methods: Vec<&String> = {
        let mut seen = BTreeSet::new();
        request.methods.iter().filter(|m| seen.insert(*m)).collect()
    };
    let seeds: Vec<u64> = {
        let mut seen = BTreeSet::new();
        request
            .seeds
            .iter()
            .copied()
            .filter(|s| seen.insert(*s))
            .collect()
    };
    let rhos: Vec<Option<f64>> = if request.rho.is_empty() {
        vec![None]
    } else {
        request.rho.iter().copied().map(Some).collect()
    };
    let lambdas: Vec<Option<f64>> = if request.lambda.is_empty() {
        vec![None]
    } else {
        request.lambda.iter().copied().map(Some).collect()
    };
    let mut out = Vec::new();
    for method in methods {
        let grid: Vec<(Option<f64>, Option<f64>)> = if method.starts_with("cggm") {
            rhos.iter()
                .flat_map(|r| lambdas.iter().map(move |l| (*r, *l)))
                .collect()
        } else {
            vec![(None, None)]
        };
        for (rho, lambda) in grid {
            let mut arm = method.clone();
            if let Some(rho) = rho {
                arm.push_str(&format!(" rho={rho}"));
            }
            if let Some(lambda) = lambda {
                arm.push_str(&format!(" lambda={lambda}"));
            }
            for &seed in &seeds {
                let mut body = request.options.clone();
                body.insert("method".into(), method.clone().into());
                body.insert("seed".into(), seed.into());
                if let Some(rho) = rho {
                    body.insert("rho".into(), rho.into());
                }
                if let Some(lambda) = lambda {
                    body.insert("lambda".into(), lambda.into());
                }
                out.push(Cell {
                    arm: arm.clone(),
                    method: method.clone(),
                    seed,
                    body: serde_json::Value::Object(body),
                });
            }
        }
    }
    if out.len() > MAX_CELLS {
        return Err(unprocessable(format!(
            "{} runs: at most {MAX_CELLS} per comparison; use fewer seeds or grid values",
            out.len()
        )));
    }
    Ok(out)
}

async fn create(
    State(state): State<AppState>,
    Json(request): Json<ComparisonRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let cells = cells(&request)?;
    let dataset = db::dataset(&state.pool, request.dataset_id).await?;
    // Every run is checked before any is queued: a bad method or option queues nothing.
    for cell in &cells {
        let options = cggm_trainer::request::RunOptions::from_json(&cell.body)
            .map_err(|e| Error::Unprocessable(format!("{} seed {}: {e}", cell.arm, cell.seed)))?;
        options
            .to_config(std::path::Path::new(&dataset.path))
            .map_err(|e| Error::Unprocessable(format!("{} seed {}: {e}", cell.arm, cell.seed)))?;
    }
    let name = request
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("{} on {}", request.methods.join(" vs "), dataset.name));
    let id = sqlx::query(
        "INSERT INTO comparisons (name, dataset_id, spec, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&name)
    .bind(dataset.id)
    .bind(serde_json::to_string(&request).unwrap_or_default())
    .bind(db::now())
    .execute(&state.pool)
    .await?
    .last_insert_rowid();
    let mut jobs = Vec::new();
    for cell in cells {
        let mut body = cell.body;
        body["dataset_id"] = dataset.id.into();
        let (_, Json(view)) = super::jobs::create(State(state.clone()), Json(body)).await?;
        sqlx::query(
            "INSERT INTO comparison_runs (comparison_id, job_id, arm, method, seed) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(view.job.id)
        .bind(&cell.arm)
        .bind(&cell.method)
        .bind(cell.seed as i64)
        .execute(&state.pool)
        .await?;
        jobs.push(view.job.id);
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "name": name, "jobs": jobs })),
    ))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ComparisonRow {
    pub id: i64,
    pub name: String,
    pub dataset_id: Option<i64>,
    #[serde(skip)]
    pub spec: String,
    pub created_at: f64,
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<ComparisonRow>>> {
    Ok(Json(
        sqlx::query_as("SELECT * FROM comparisons ORDER BY id DESC")
            .fetch_all(&state.pool)
            .await?,
    ))
}

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

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub job_id: i64,
    pub arm: String,
    pub method: String,
    pub seed: i64,
    pub state: String,
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
}

/// Metrics where lower is better are still aggregated the same way; the headline is the first
/// of these that the runs report.
const HEADLINES: [&str; 5] = ["dice_mean", "accuracy", "f1_weighted", "acc2", "mae"];

pub async fn aggregate(state: &AppState, id: i64) -> Result<Aggregate> {
    let row: ComparisonRow = sqlx::query_as("SELECT * FROM comparisons WHERE id = ?")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("comparison {id}")))?;
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
            "SELECT data FROM events WHERE job_id = ? AND kind = 'finished' ORDER BY seq DESC LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(&state.pool)
        .await?;
        let test_metrics = finished
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|v| serde_json::from_value(v["test_metrics"].clone()).ok())
            .filter(|_| job.state == db::JobState::Succeeded)
            .unwrap_or_default();
        let modality_metrics = db::best_validation(&state.pool, job_id)
            .await?
            .and_then(|v| serde_json::from_value(v["modality_metrics"].clone()).ok())
            .unwrap_or_default();
        runs.push(RunResult {
            job_id,
            arm,
            method,
            seed,
            state: job.state.to_string(),
            test_metrics,
            modality_metrics,
        });
    }
    let metrics: Vec<String> = runs
        .iter()
        .flat_map(|r| r.test_metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut arm_order: Vec<String> = Vec::new();
    for run in &runs {
        if !arm_order.contains(&run.arm) {
            arm_order.push(run.arm.clone());
        }
    }
    let by_seed = |arm: &str, metric: &str| -> BTreeMap<i64, f64> {
        runs.iter()
            .filter(|r| r.arm == arm)
            .filter_map(|r| r.test_metrics.get(metric).map(|v| (r.seed, *v)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let mut arms = Vec::new();
    let mut paired = Vec::new();
    let mut modality = Vec::new();
    for arm in &arm_order {
        let members: Vec<&RunResult> = runs.iter().filter(|r| &r.arm == arm).collect();
        let mut summary = BTreeMap::new();
        for metric in &metrics {
            let values: Vec<f64> = by_seed(arm, metric).into_values().collect();
            if let Some(i) = interval(&values) {
                summary.insert(metric.clone(), i);
            }
        }
        arms.push(ArmSummary {
            arm: arm.clone(),
            runs: members.len(),
            finished: members
                .iter()
                .filter(|r| !r.test_metrics.is_empty())
                .count(),
            metrics: summary,
        });
        if arm != "joint" {
            for metric in &metrics {
                let joint = by_seed("joint", metric);
                let mine = by_seed(arm, metric);
                let diffs: Vec<f64> = mine
                    .iter()
                    .filter_map(|(seed, v)| joint.get(seed).map(|j| v - j))
                    .collect();
                if let Some(i) = interval(&diffs) {
                    paired.push(PairedDifference {
                        arm: arm.clone(),
                        metric: metric.clone(),
                        above: diffs.iter().filter(|d| **d > 0.0).count(),
                        interval: i,
                    });
                }
            }
        }
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
        for ((name, metric), values) in per_modality {
            if let Some(i) = interval(&values) {
                modality.push(ModalityScore {
                    arm: arm.clone(),
                    modality: name,
                    metric,
                    interval: i,
                });
            }
        }
    }
    let headline = HEADLINES
        .iter()
        .find(|h| metrics.iter().any(|m| m == *h))
        .map(|h| h.to_string())
        .or_else(|| metrics.first().cloned());
    Ok(Aggregate {
        id,
        name: row.name,
        dataset_id: row.dataset_id,
        spec: serde_json::from_str(&row.spec).unwrap_or_default(),
        headline,
        done: runs
            .iter()
            .all(|r| !matches!(r.state.as_str(), "queued" | "running")),
        metrics,
        runs,
        arms,
        paired,
        modality,
    })
}

async fn show(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Aggregate>> {
    Ok(Json(aggregate(&state, id).await?))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The aggregate as one CSV table: `section` is summary, paired_vs_joint, modality or run.
pub fn to_csv(a: &Aggregate) -> String {
    let mut out = String::from("section,arm,detail,metric,n,mean,ci95_half,ci95_low,ci95_high\n");
    let mut row = |section: &str, arm: &str, detail: &str, metric: &str, i: &Interval| {
        let (half, low, high) = match i.half {
            Some(h) => (
                format!("{h}"),
                format!("{}", i.mean - h),
                format!("{}", i.mean + h),
            ),
            None => Default::default(),
        };
        out.push_str(&format!(
            "{section},{},{},{},{},{},{half},{low},{high}\n",
            csv_field(arm),
            csv_field(detail),
            csv_field(metric),
            i.n,
            i.mean
        ));
    };
    for arm in &a.arms {
        for (metric, i) in &arm.metrics {
            row("summary", &arm.arm, "", metric, i);
        }
    }
    for p in &a.paired {
        row(
            "paired_vs_joint",
            &p.arm,
            &format!("above joint on {} of {}", p.above, p.interval.n),
            &p.metric,
            &p.interval,
        );
    }
    for m in &a.modality {
        row("modality", &m.arm, &m.modality, &m.metric, &m.interval);
    }
    for r in &a.runs {
        for (metric, value) in &r.test_metrics {
            let single = Interval {
                n: 1,
                mean: *value,
                half: None,
            };
            row(
                "run",
                &r.arm,
                &format!("seed {} job {}", r.seed, r.job_id),
                metric,
                &single,
            );
        }
    }
    out
}

async fn csv(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let a = aggregate(&state, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"comparison-{id}.csv\""),
            ),
        ],
        to_csv(&a),
    )
        .into_response())
}

/// Colours of the figure's arms, in the arms' order (the page's table uses the same).
pub const COLOURS: [[u8; 3]; 8] = [
    [0x44, 0x77, 0xaa],
    [0xee, 0x66, 0x77],
    [0x22, 0x88, 0x33],
    [0xcc, 0xbb, 0x44],
    [0x66, 0xcc, 0xee],
    [0xaa, 0x33, 0x77],
    [0xbb, 0xbb, 0xbb],
    [0x00, 0x00, 0x00],
];

/// One arm of the figure: its bar (mean), whisker (95 % t interval) and seeds, in pixels.
struct FigureArm {
    name: String,
    colour: [u8; 3],
    x: f64,
    interval: Option<Interval>,
    /// (seed, value, x) of every run with a score.
    points: Vec<(i64, f64, f64)>,
}

/// Where everything of the figure goes; the SVG and the PNG draw the same layout.
struct Figure {
    title: String,
    metric: String,
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    decimals: usize,
    bar_width: f64,
    rotate_labels: bool,
    arms: Vec<FigureArm>,
}

/// Axis range and ticks: 0 to 1 in fifths for scores within [0, 1]; otherwise 1, 2, 2.5 or 5
/// times a power of ten, about five steps, from min(0, lowest) to the highest value.
fn axis(lo: f64, hi: f64) -> (f64, f64, Vec<f64>, usize) {
    if lo >= 0.0 && hi <= 1.0 {
        return (0.0, 1.0, (0..=5).map(|k| k as f64 * 0.2).collect(), 1);
    }
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    let ticks: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    let (start, end) = (first as f64 * step, last as f64 * step);
    let mut decimals = (-step.log10().floor()).max(0.0) as usize;
    if (step / magnitude - 2.5).abs() < 1e-9 {
        decimals += 1;
    }
    (start, end, ticks, decimals.min(6))
}

fn figure_layout(a: &Aggregate) -> Figure {
    let metric = a.headline.clone().unwrap_or_default();
    let longest = a
        .arms
        .iter()
        .map(|arm| arm.arm.chars().count())
        .max()
        .unwrap_or(0);
    let rotate_labels = longest > 14;
    let step = 110.0;
    let (left, right, top) = (78.0, 24.0, 58.0);
    let bottom_margin = if rotate_labels {
        40.0 + 6.5 * longest as f64 * 0.7
    } else {
        52.0
    };
    let width = (left + right + step * a.arms.len().max(1) as f64).max(480.0);
    let height = 300.0 + bottom_margin;
    let plot_width = width - left - right;
    let slot = plot_width / a.arms.len().max(1) as f64;
    let mut values = Vec::new();
    let arms: Vec<FigureArm> = a
        .arms
        .iter()
        .enumerate()
        .map(|(k, arm)| {
            let x = left + slot * (k as f64 + 0.5);
            let interval = arm.metrics.get(&metric).cloned();
            if let Some(i) = &interval {
                values.push(i.mean);
                if let Some(h) = i.half {
                    values.extend([i.mean - h, i.mean + h]);
                }
            }
            let mut scored: Vec<(i64, f64)> = a
                .runs
                .iter()
                .filter(|r| r.arm == arm.arm)
                .filter_map(|r| r.test_metrics.get(&metric).map(|v| (r.seed, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            scored.sort_by_key(|(seed, _)| *seed);
            let n = scored.len().max(1) as f64;
            // Side by side across the bar's middle half, so that equal scores stay visible.
            let points = scored
                .into_iter()
                .enumerate()
                .map(|(j, (seed, v))| {
                    values.push(v);
                    let offset = if n > 1.0 {
                        (j as f64 / (n - 1.0) - 0.5) * 30.0
                    } else {
                        0.0
                    };
                    (seed, v, x + offset)
                })
                .collect();
            FigureArm {
                name: arm.arm.clone(),
                colour: COLOURS[k % COLOURS.len()],
                x,
                interval,
                points,
            }
        })
        .collect();
    let lowest = values.iter().copied().fold(0.0f64, f64::min);
    let highest = values.iter().copied().fold(0.0f64, f64::max);
    let (lo, hi, ticks, decimals) = axis(lowest, highest);
    Figure {
        title: a.name.clone(),
        metric,
        width,
        height,
        left,
        right,
        top,
        bottom: height - bottom_margin,
        lo,
        hi,
        ticks,
        decimals,
        bar_width: (slot * 0.55).min(64.0),
        rotate_labels,
        arms,
    }
}

impl Figure {
    fn y(&self, v: f64) -> f64 {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        self.bottom - t * (self.bottom - self.top)
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The headline metric per arm, for a report: a bar at the mean, the 95 % t interval as a
/// whisker, every seed's score as a dot, the y axis with ticks and the metric's name, the arms'
/// names (and how many seeds scored) below. SVG, so the text needs no font on the server.
pub fn render_svg(a: &Aggregate) -> String {
    let f = figure_layout(a);
    let mut s = String::new();
    let w = f.width;
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n",
        h = f.height
    ));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        w / 2.0,
        xml(&f.title)
    ));
    let subtitle = if f.metric.is_empty() {
        "no run has a test score yet".to_string()
    } else {
        format!(
            "{} (test): bar = mean, whisker = 95 % t interval, dots = seeds",
            f.metric
        )
    };
    s.push_str(&format!(
        "<text x=\"{}\" y=\"38\" text-anchor=\"middle\" fill=\"#444444\">{}</text>\n",
        w / 2.0,
        xml(&subtitle)
    ));
    for tick in &f.ticks {
        let y = f.y(*tick);
        s.push_str(&format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\n\
             <line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#404040\"/>\n\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.*}</text>\n",
            f.left,
            w - f.right,
            f.left - 5.0,
            f.left,
            f.left - 8.0,
            y + 4.0,
            f.decimals,
            tick
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{l}\" x2=\"{l}\" y1=\"{}\" y2=\"{}\" stroke=\"#404040\"/>\n\
         <text transform=\"translate(20 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        f.top,
        f.bottom,
        (f.top + f.bottom) / 2.0,
        xml(&f.metric),
        l = f.left
    ));
    let base = f.y(0.0_f64.clamp(f.lo, f.hi));
    s.push_str(&format!(
        "<line x1=\"{}\" x2=\"{}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"#404040\"/>\n",
        f.left,
        w - f.right
    ));
    for arm in &f.arms {
        let colour = hex(arm.colour);
        s.push_str(&format!(
            "<g class=\"arm\" data-arm=\"{}\">\n",
            xml(&arm.name)
        ));
        if let Some(i) = &arm.interval {
            let y = f.y(i.mean);
            let (top, height) = if y < base {
                (y, base - y)
            } else {
                (base, y - base)
            };
            let ci = i.half.map_or(String::new(), |h| format!(" ± {h:.4}"));
            s.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{colour}\" \
                 fill-opacity=\"0.8\"><title>{}: mean {:.4}{ci} (n = {})</title></rect>\n",
                arm.x - f.bar_width / 2.0,
                f.bar_width,
                xml(&arm.name),
                i.mean,
                i.n
            ));
            if let Some(h) = i.half {
                let (hi, lo) = (f.y(i.mean + h), f.y(i.mean - h));
                s.push_str(&format!(
                    "<path class=\"whisker\" d=\"M{x:.1} {hi:.1}V{lo:.1}M{a:.1} {hi:.1}H{b:.1}M{a:.1} {lo:.1}H{b:.1}\" \
                     stroke=\"#111111\" stroke-width=\"1.6\" fill=\"none\"/>\n",
                    x = arm.x,
                    a = arm.x - 10.0,
                    b = arm.x + 10.0
                ));
            }
        }
        for (seed, v, x) in &arm.points {
            s.push_str(&format!(
                "<circle class=\"seed\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#ffffff\" stroke=\"#111111\">\
                 <title>seed {seed}: {v:.4}</title></circle>\n",
                f.y(*v)
            ));
        }
        let n = arm.interval.as_ref().map_or(0, |i| i.n);
        let label_y = f.bottom + 18.0;
        if f.rotate_labels {
            s.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{label_y:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {x:.1} {label_y:.1})\">{} (n = {n})</text>\n",
                xml(&arm.name),
                x = arm.x + 4.0
            ));
        } else {
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{label_y:.1}\" text-anchor=\"middle\">{}</text>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666666\" font-size=\"11\">n = {n}</text>\n",
                arm.x,
                xml(&arm.name),
                arm.x,
                label_y + 15.0
            ));
        }
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

/// The same figure as a PNG without its text (the server has no font rasteriser): bars, whiskers,
/// seeds' dots, the y axis with a tick and a grid line at each tick of the SVG. The page's "PNG"
/// button rasterises the SVG in the browser instead, text included.
pub fn render_png(a: &Aggregate) -> std::result::Result<Vec<u8>, String> {
    let f = figure_layout(a);
    let (width, height) = (f.width.ceil() as usize, f.height.ceil() as usize);
    let mut pixels = vec![255u8; width * height * 3];
    let mut put = |x: f64, y: f64, c: [u8; 3]| {
        if x >= 0.0 && y >= 0.0 {
            let (x, y) = (x as usize, y as usize);
            if x < width && y < height {
                let i = (y * width + x) * 3;
                pixels[i..i + 3].copy_from_slice(&c);
            }
        }
    };
    let hline = |put: &mut dyn FnMut(f64, f64, [u8; 3]), x0: f64, x1: f64, y: f64, c| {
        let mut x = x0;
        while x <= x1 {
            put(x, y, c);
            x += 1.0;
        }
    };
    for tick in &f.ticks {
        let y = f.y(*tick).round();
        hline(&mut put, f.left, f.width - f.right, y, [0xe0, 0xe0, 0xe0]);
        hline(&mut put, f.left - 5.0, f.left, y, [0x40, 0x40, 0x40]);
    }
    let mut y = f.top;
    while y <= f.bottom {
        put(f.left, y, [0x40, 0x40, 0x40]);
        y += 1.0;
    }
    let base = f.y(0.0_f64.clamp(f.lo, f.hi)).round();
    for arm in &f.arms {
        if let Some(i) = &arm.interval {
            let top = f.y(i.mean).round();
            let (y0, y1) = if top < base { (top, base) } else { (base, top) };
            let mut y = y0;
            while y <= y1 {
                hline(
                    &mut put,
                    (arm.x - f.bar_width / 2.0).round(),
                    (arm.x + f.bar_width / 2.0).round(),
                    y,
                    arm.colour,
                );
                y += 1.0;
            }
            if let Some(h) = i.half {
                let (hi, lo) = (f.y(i.mean + h).round(), f.y(i.mean - h).round());
                let mut y = hi;
                while y <= lo {
                    put(arm.x.round(), y, [0x11, 0x11, 0x11]);
                    put(arm.x.round() + 1.0, y, [0x11, 0x11, 0x11]);
                    y += 1.0;
                }
                hline(&mut put, arm.x - 10.0, arm.x + 10.0, hi, [0x11, 0x11, 0x11]);
                hline(&mut put, arm.x - 10.0, arm.x + 10.0, lo, [0x11, 0x11, 0x11]);
            }
        }
        for (_, v, x) in &arm.points {
            let (cx, cy) = (x.round(), f.y(*v).round());
            for dy in -4i32..=4 {
                for dx in -4i32..=4 {
                    let d = ((dx * dx + dy * dy) as f64).sqrt();
                    let c = if d <= 2.5 {
                        [0xff, 0xff, 0xff]
                    } else if d <= 4.0 {
                        [0x11, 0x11, 0x11]
                    } else {
                        continue;
                    };
                    put(cx + dx as f64, cy + dy as f64, c);
                }
            }
        }
    }
    hline(
        &mut put,
        f.left,
        f.width - f.right,
        base,
        [0x40, 0x40, 0x40],
    );
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

async fn figure_svg(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let a = aggregate(&state, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"comparison-{id}.svg\""),
            ),
        ],
        render_svg(&a),
    )
        .into_response())
}

async fn figure(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let a = aggregate(&state, id).await?;
    let bytes = render_png(&a).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"comparison-{id}.png\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "comparisons.html")]
struct ListPage {
    comparisons: Vec<(i64, String, String)>,
    datasets: Vec<(i64, String)>,
}

async fn list_page(State(state): State<AppState>) -> Response {
    let page = async {
        let rows: Vec<ComparisonRow> = sqlx::query_as("SELECT * FROM comparisons ORDER BY id DESC")
            .fetch_all(&state.pool)
            .await?;
        let datasets = db::datasets(&state.pool)
            .await?
            .into_iter()
            .map(|d| (d.id, d.name))
            .collect();
        let comparisons = rows
            .into_iter()
            .map(|r| {
                let spec: serde_json::Value = serde_json::from_str(&r.spec).unwrap_or_default();
                let seeds = spec["seeds"].as_array().map_or(0, Vec::len);
                (r.id, r.name, format!("{seeds} seed(s)"))
            })
            .collect();
        Ok::<_, Error>(HtmlTemplate(ListPage {
            comparisons,
            datasets,
        }))
    };
    match page.await {
        Ok(page) => page.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Template)]
#[template(path = "comparison.html")]
struct ComparisonPage {
    id: i64,
    name: String,
}

async fn comparison_page(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let row: Result<Option<(String,)>> =
        sqlx::query_as("SELECT name FROM comparisons WHERE id = ?")
            .bind(id)
            .fetch_optional(&state.pool)
            .await
            .map_err(Error::from);
    match row {
        Ok(Some((name,))) => HtmlTemplate(ComparisonPage { id, name }).into_response(),
        Ok(None) => Error::NotFound(format!("comparison {id}")).into_response(),
        Err(e) => e.into_response(),
    }
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
    fn a_grid_crosses_only_the_cggm_methods_and_every_arm_gets_every_seed() {
        let request: ComparisonRequest = serde_json::from_value(serde_json::json!({
            "dataset_id": 1, "methods": ["joint", "cggm"], "seeds": [1, 2],
            "rho": [1.0, 1.5], "options": {"preset": "tiny"}
        }))
        .unwrap();
        let made = cells(&request).unwrap();
        let arms: BTreeSet<&str> = made.iter().map(|c| c.arm.as_str()).collect();
        assert_eq!(
            arms,
            BTreeSet::from(["joint", "cggm rho=1", "cggm rho=1.5"])
        );
        assert_eq!(made.len(), 6);
        assert!(made.iter().all(|c| c.body["preset"] == "tiny"));
        let bad: ComparisonRequest = serde_json::from_value(serde_json::json!({
            "dataset_id": 1, "methods": ["joint"], "seeds": [], "options": {}
        }))
        .unwrap();
        assert!(cells(&bad).is_err());
    }

    fn aggregate_of(scores: &[(&str, i64, f64)]) -> Aggregate {
        let runs: Vec<RunResult> = scores
            .iter()
            .enumerate()
            .map(|(k, (arm, seed, v))| RunResult {
                job_id: k as i64 + 1,
                arm: arm.to_string(),
                method: arm.to_string(),
                seed: *seed,
                state: "succeeded".into(),
                test_metrics: BTreeMap::from([("dice_mean".to_string(), *v)]),
                modality_metrics: BTreeMap::new(),
            })
            .collect();
        let mut arms: Vec<ArmSummary> = Vec::new();
        for (arm, _, _) in scores {
            if arms.iter().any(|a| a.arm == *arm) {
                continue;
            }
            let values: Vec<f64> = scores
                .iter()
                .filter(|(a, _, _)| a == arm)
                .map(|(_, _, v)| *v)
                .collect();
            arms.push(ArmSummary {
                arm: arm.to_string(),
                runs: values.len(),
                finished: values.len(),
                metrics: BTreeMap::from([("dice_mean".to_string(), interval(&values).unwrap())]),
            });
        }
        Aggregate {
            id: 1,
            name: "joint <vs> cggm".into(),
            dataset_id: Some(1),
            spec: serde_json::Value::Null,
            headline: Some("dice_mean".into()),
            metrics: vec!["dice_mean".into()],
            done: true,
            runs,
            arms,
            paired: vec![],
            modality: vec![],
        }
    }

    #[test]
    fn the_svg_figure_names_the_methods_and_the_metric_and_draws_every_seed() {
        let a = aggregate_of(&[
            ("joint", 1, 0.40),
            ("joint", 2, 0.45),
            ("joint", 3, 0.50),
            ("cggm", 1, 0.30),
            ("cggm", 2, 0.35),
            ("cggm", 3, 0.37),
        ]);
        let svg = render_svg(&a);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(
            svg.contains(">joint</text>") && svg.contains(">cggm</text>"),
            "{svg}"
        );
        assert!(svg.contains("dice_mean (test)"), "{svg}");
        assert!(
            svg.contains("joint &lt;vs&gt; cggm"),
            "the title is escaped: {svg}"
        );
        assert_eq!(svg.matches("class=\"seed\"").count(), 6);
        assert_eq!(svg.matches("class=\"whisker\"").count(), 2);
        for tick in ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"] {
            assert!(
                svg.contains(&format!("text-anchor=\"end\">{tick}</text>")),
                "tick {tick}: {svg}"
            );
        }
        assert!(svg.contains("seed 2: 0.4500"));
        assert!(is_png_bytes(&render_png(&a).unwrap()));
    }

    #[test]
    fn long_arm_names_are_turned_so_that_they_do_not_overlap() {
        let a = aggregate_of(&[
            ("joint", 1, 0.4),
            ("joint", 2, 0.5),
            ("cggm rho=1.5 lambda=0.1", 1, 0.3),
            ("cggm rho=1.5 lambda=0.1", 2, 0.2),
        ]);
        let svg = render_svg(&a);
        assert_eq!(svg.matches("rotate(-35 ").count(), 2, "{svg}");
        assert!(
            svg.contains(">cggm rho=1.5 lambda=0.1 (n = 2)</text>"),
            "{svg}"
        );
    }

    fn is_png_bytes(bytes: &[u8]) -> bool {
        bytes.starts_with(&[0x89, b'P', b'N', b'G'])
    }

    #[test]
    fn the_axis_spans_zero_to_one_for_scores_and_round_steps_otherwise() {
        let (lo, hi, ticks, decimals) = axis(0.0, 0.7);
        assert_eq!((lo, hi, ticks.len(), decimals), (0.0, 1.0, 6, 1));
        let (lo, hi, ticks, decimals) = axis(0.0, 37.0);
        assert_eq!((lo, hi, decimals), (0.0, 40.0, 0));
        assert_eq!(ticks, vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        let (lo, hi, ticks, _) = axis(-0.3, 0.2);
        assert!(lo <= -0.3 && hi >= 0.2 && ticks.contains(&0.0), "{ticks:?}");
    }
}
