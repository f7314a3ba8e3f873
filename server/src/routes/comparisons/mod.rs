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
//!
//! Here the routes and pages; `grid` turns a request into runs, `aggregate` reads what they
//! reported and summarises it with `stats`, `csv` and `figure` export the summary.

mod aggregate;
mod csv;
mod figure;
mod grid;
mod stats;

pub use aggregate::{aggregate, Aggregate, ArmSummary, ModalityScore, PairedDifference, RunResult};
pub use csv::to_csv;
pub use figure::{render_png, render_svg, COLOURS};
use grid::cells;
pub use grid::ComparisonRequest;
pub use stats::{interval, Interval};

use crate::db::{self, JobKind};
use crate::error::{Error, Result};
use crate::templates::HtmlTemplate;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/comparisons", get(list).post(create))
        .route("/comparisons/{id}", get(show))
        .route("/comparisons/{id}/csv", get(download_csv))
        .route("/comparisons/{id}/png", get(figure_png))
        .route("/comparisons/{id}/svg", get(figure_svg))
}

/// The pages: `/comparisons` (list and launch form) and `/comparisons/<id>` (aggregate).
pub fn page_router() -> Router<AppState> {
    Router::new()
        .route("/comparisons", get(list_page))
        .route("/comparisons/{id}", get(comparison_page))
}

async fn create(
    State(state): State<AppState>,
    Json(request): Json<ComparisonRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let cells = cells(&request)?;
    let dataset = db::dataset(&state.pool, request.dataset_id).await?;
    let given_name = match &request.name {
        Some(name) => Some(crate::limits::check_name("the comparison's name", name)?),
        None => None,
    };
    let runs = checked_runs(&state, &cells, dataset.id).await?;
    // The whole grid fits the queue, or nothing is queued.
    let queued = super::jobs::queued_jobs(&state).await?;
    if queued as usize + cells.len() > state.config.bounds.max_queued_jobs {
        return Err(super::jobs::queue_full(&state, cells.len()));
    }
    let name = given_name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{} on {}", request.methods.join(" vs "), dataset.name));
    let (id, jobs) = store_comparison(&state, &name, dataset.id, &request, &cells, &runs).await?;
    for job in &jobs {
        state.runner.enqueue(*job);
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "name": name, "jobs": jobs })),
    ))
}

/// Every cell's run request, checked before any is stored (a bad method or option queues
/// nothing); a refusal names the cell's arm and seed.
async fn checked_runs(
    state: &AppState,
    cells: &[grid::Cell],
    dataset_id: i64,
) -> Result<Vec<super::jobs::TrainRequest>> {
    let mut runs = Vec::with_capacity(cells.len());
    for cell in cells {
        let mut body = cell.body.clone();
        body["dataset_id"] = dataset_id.into();
        let run = super::jobs::check_train_request(state, body)
            .await
            .map_err(|e| match e {
                Error::Unprocessable(m) => {
                    Error::Unprocessable(format!("{} seed {}: {m}", cell.arm, cell.seed))
                }
                other => other,
            })?;
        runs.push(run);
    }
    Ok(runs)
}

/// Stores the comparison, its jobs and their links as one transaction: a job refused on the way
/// (the queue filled meanwhile, a request that cannot be written) leaves neither an empty
/// comparison nor orphan jobs behind. The comparison's id and its jobs', not yet queued.
async fn store_comparison(
    state: &AppState,
    name: &str,
    dataset_id: i64,
    request: &ComparisonRequest,
    cells: &[grid::Cell],
    runs: &[super::jobs::TrainRequest],
) -> Result<(i64, Vec<i64>)> {
    let mut tx = state.pool.begin().await?;
    let id = sqlx::query(
        "INSERT INTO comparisons (name, dataset_id, spec, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(name)
    .bind(dataset_id)
    .bind(serde_json::to_string(request).unwrap_or_default())
    .bind(db::now())
    .execute(&mut *tx)
    .await?
    .last_insert_rowid();
    let mut jobs = Vec::new();
    let stored = store_runs(state, &mut tx, id, cells, runs, &mut jobs).await;
    if let Err(e) = stored {
        drop(tx);
        // The rolled-back jobs' ids will be given again: their requests must not wait there.
        for job in &jobs {
            let folder = state.data_dir().join(JobKind::Train.folder());
            let _ = std::fs::remove_file(folder.join(format!("job-{job}")).join("request.json"));
        }
        return Err(e);
    }
    tx.commit().await?;
    Ok((id, jobs))
}

/// Stores each cell's job and its link to comparison `id` inside `tx`; `jobs` collects the ids
/// stored so far (also on failure, for the caller's clean-up).
async fn store_runs(
    state: &AppState,
    tx: &mut sqlx::SqliteConnection,
    id: i64,
    cells: &[grid::Cell],
    runs: &[super::jobs::TrainRequest],
    jobs: &mut Vec<i64>,
) -> Result<()> {
    for (cell, run) in cells.iter().zip(runs) {
        let job = super::jobs::insert_train_job(state, tx, run).await?;
        jobs.push(job);
        sqlx::query(
            "INSERT INTO comparison_runs (comparison_id, job_id, arm, method, seed) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(job)
        .bind(&cell.arm)
        .bind(&cell.method)
        .bind(cell.seed as i64)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
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

async fn show(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Aggregate>> {
    Ok(Json(aggregate(&state, id).await?))
}

async fn download_csv(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
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

async fn figure_png(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let a = aggregate(&state, id).await?;
    let bytes = render_png(&a).map_err(|e| Error::Internal(e.into()))?;
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
    /// (id, name, task, modalities comma-separated): the pickers offer what fits the dataset.
    datasets: Vec<(i64, String, String, String)>,
}

async fn list_page(State(state): State<AppState>) -> Response {
    let page = async {
        let rows: Vec<ComparisonRow> = sqlx::query_as("SELECT * FROM comparisons ORDER BY id DESC")
            .fetch_all(&state.pool)
            .await?;
        let datasets = db::datasets(&state.pool)
            .await?
            .into_iter()
            .map(|d| {
                let facts = crate::feature_datasets::DatasetFacts::of(&d);
                (
                    d.id,
                    d.name,
                    facts.task.to_string(),
                    facts.modalities.join(","),
                )
            })
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
