//! Studies in the sense of method comparisons ("comparisons" in the code, the URL and the
//! database: `studies` already names uploaded patient scans). A comparison is a grid of training
//! runs on one dataset — methods x seeds, optionally x a rho/lambda grid for the CGGM methods —
//! each an ordinary job through the executor (local queue or Slurm), and one aggregate: mean and
//! 95 % t confidence interval per arm for the task's test metrics, paired differences against
//! joint training (same seed), per-modality classifier scores, as JSON, CSV and a PNG figure.
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

/// Bar colours of the figure, in the arms' order (the page's table uses the same).
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

/// The headline metric per arm as bars (mean) with 95 % interval whiskers, on a scale from 0 to
/// the largest upper end (1 for scores within [0, 1]); grid lines at each tenth of the scale.
pub fn render_png(a: &Aggregate) -> std::result::Result<Vec<u8>, String> {
    let values: Vec<(f64, f64)> = a
        .arms
        .iter()
        .map(|arm| {
            a.headline
                .as_ref()
                .and_then(|h| arm.metrics.get(h))
                .map(|i| (i.mean, i.half.unwrap_or(0.0)))
                .unwrap_or((0.0, 0.0))
        })
        .collect();
    let (width, height, margin) = (60 + 90 * values.len().max(1), 320usize, 30usize);
    let top = values.iter().map(|(m, h)| m + h).fold(0.0f64, f64::max);
    let scale = if top <= 1.0 { 1.0 } else { top * 1.05 };
    let mut pixels = vec![255u8; width * height * 3];
    let mut put = |x: usize, y: usize, c: [u8; 3]| {
        if x < width && y < height {
            let i = (y * width + x) * 3;
            pixels[i..i + 3].copy_from_slice(&c);
        }
    };
    let plot_h = (height - 2 * margin) as f64;
    let y_of = |v: f64| margin + (plot_h * (1.0 - (v / scale).clamp(0.0, 1.0))) as usize;
    for tick in 0..=10 {
        let y = y_of(scale * tick as f64 / 10.0);
        for x in margin..width - 10 {
            put(x, y, [0xe0, 0xe0, 0xe0]);
        }
    }
    for y in margin..=height - margin {
        put(margin, y, [0x40, 0x40, 0x40]);
    }
    for (k, (mean, half)) in values.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let x0 = margin + 20 + 90 * k;
        let y_top = y_of(*mean);
        for x in x0..x0 + 60 {
            for y in y_top..=height - margin {
                put(x, y, colour);
            }
        }
        if *half > 0.0 {
            let (hi, lo) = (y_of(mean + half), y_of(mean - half));
            for y in hi..=lo {
                put(x0 + 29, y, [0, 0, 0]);
                put(x0 + 30, y, [0, 0, 0]);
            }
            for x in x0 + 20..x0 + 40 {
                put(x, hi, [0, 0, 0]);
                put(x, lo, [0, 0, 0]);
            }
        }
    }
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
}
