//! The HTML pages. They render what the server knows; the live parts (charts, viewer) are driven
//! by `web/static/app.js` through the JSON API.

use super::datasets::DatasetView;
use super::jobs::{checkpoint_list, job_view};
use super::studies::StudyView;
use super::{parse_ids, METHODS, PRESETS};
use crate::db;
use crate::error::{Error, Result};
use crate::inspect::MODALITIES;
use crate::templates::*;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/datasets", get(datasets))
        .route("/runs/new", get(new_run))
        .route("/jobs/{id}", get(job))
        .route("/compare", get(compare))
        .route("/models", get(models))
        .route("/segment", get(segment))
        .route("/predictions/{id}", get(viewer))
        .fallback(not_found)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        HtmlTemplate(NotFound {
            what: "This page".into(),
        }),
    )
        .into_response()
}

/// Pages answer a missing record with the HTML 404 page rather than JSON.
fn page<T: IntoResponse>(result: Result<T>) -> Response {
    match result {
        Ok(page) => page.into_response(),
        Err(Error::NotFound(what)) => {
            (StatusCode::NOT_FOUND, HtmlTemplate(NotFound { what })).into_response()
        }
        Err(other) => other.into_response(),
    }
}

/// Per-modality entries in the project's modality order (flair, t1ce, t1, t2), not alphabetical.
fn in_project_order(
    map: &serde_json::Map<String, serde_json::Value>,
) -> impl Iterator<Item = (&String, &serde_json::Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(k, _)| MODALITIES.iter().position(|m| m == k).unwrap_or(usize::MAX));
    entries.into_iter()
}

fn mean_of(scores: &serde_json::Value) -> Option<f64> {
    scores["mean"].as_f64()
}

async fn dashboard(State(state): State<AppState>) -> Response {
    page(
        async {
            let mut runs = Vec::new();
            for job in db::jobs(&state.pool, Some("train")).await? {
                let view = job_view(&state, job).await?;
                let best = view.best_validation.clone().unwrap_or_default();
                let modalities = best["modality_dice"]
                    .as_object()
                    .map(|m| {
                        in_project_order(m)
                            .map(|(name, scores)| {
                                let v = mean_of(scores).unwrap_or(0.0);
                                (
                                    name.clone(),
                                    format!("{v:.3}"),
                                    (v.clamp(0.0, 1.0) * 100.0) as u32,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                runs.push(RunRow {
                    id: view.job.id,
                    state: view.job.state.clone(),
                    method: view.params["method"].as_str().unwrap_or_default().into(),
                    preset: view.params["preset"].as_str().unwrap_or_default().into(),
                    dataset: view.params["dataset"].as_str().unwrap_or_default().into(),
                    epochs: view.params["epochs"].to_string(),
                    wt: dice(&best["dice"]["wt"]),
                    tc: dice(&best["dice"]["tc"]),
                    et: dice(&best["dice"]["et"]),
                    mean: dice(&best["dice"]["mean"]),
                    modalities,
                });
            }
            let datasets = db::datasets(&state.pool).await?;
            Ok(HtmlTemplate(Dashboard {
                runs,
                dataset_count: datasets.len(),
                demo_pending: datasets.is_empty(),
            }))
        }
        .await,
    )
}

async fn datasets(State(state): State<AppState>) -> Response {
    page(
        async {
            let rows = db::datasets(&state.pool)
                .await?
                .into_iter()
                .map(|d| {
                    let view = DatasetView::from(d);
                    DatasetRow {
                        id: view.dataset.id,
                        name: view.dataset.name.clone(),
                        path: view.dataset.path.clone(),
                        source: view.dataset.source.clone(),
                        layout: view.report.layout.clone(),
                        cases: view.report.cases,
                        valid_cases: view.report.valid_cases,
                        shape: view
                            .report
                            .shape
                            .as_ref()
                            .map(|s| {
                                s.iter()
                                    .map(|d| d.to_string())
                                    .collect::<Vec<_>>()
                                    .join("×")
                            })
                            .unwrap_or_default(),
                        split: format!(
                            "{} train / {} val / {} test",
                            view.report.split.train, view.report.split.val, view.report.split.test
                        ),
                        full_check: view.report.full_check,
                        modalities: view.report.modalities.join(", "),
                        problems: view
                            .report
                            .problems
                            .iter()
                            .map(|p| (p.case.clone(), p.error.clone()))
                            .collect(),
                    }
                })
                .collect();
            Ok(HtmlTemplate(Datasets {
                datasets: rows,
                data_dir: state.data_dir().display().to_string(),
            }))
        }
        .await,
    )
}

async fn new_run(State(state): State<AppState>) -> Response {
    page(
        async {
            let datasets = db::datasets(&state.pool)
                .await?
                .into_iter()
                .map(|d| {
                    let view = DatasetView::from(d);
                    (
                        view.dataset.id,
                        view.dataset.name.clone(),
                        view.report.valid_cases,
                    )
                })
                .collect();
            Ok(HtmlTemplate(NewRun {
                datasets,
                methods: METHODS.to_vec(),
                presets: PRESETS.to_vec(),
            }))
        }
        .await,
    )
}

async fn run_choices(state: &AppState) -> Result<Vec<(i64, String)>> {
    Ok(db::jobs(&state.pool, Some("train"))
        .await?
        .into_iter()
        .map(|j| {
            let p = j.params_json();
            (
                j.id,
                format!(
                    "#{} {} ({})",
                    j.id,
                    p["method"].as_str().unwrap_or(""),
                    j.state
                ),
            )
        })
        .collect())
}

async fn job(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    page(
        async {
            let job = db::job(&state.pool, id).await?;
            if job.kind == "infer" {
                return Ok(
                    axum::response::Redirect::to(&format!("/predictions/{id}")).into_response()
                );
            }
            let view = job_view(&state, job).await?;
            let p = &view.params;
            let summary = format!(
                "{} · preset {} · {} epoch(s) · dataset {}",
                p["method"].as_str().unwrap_or(""),
                p["preset"].as_str().unwrap_or(""),
                p["epochs"],
                p["dataset"].as_str().unwrap_or("")
            );
            let runs = run_choices(&state)
                .await?
                .into_iter()
                .filter(|(rid, _)| *rid != id)
                .collect();
            Ok(HtmlTemplate(JobPage {
                id,
                kind: view.job.kind.clone(),
                state: view.job.state.clone(),
                summary,
                params: serde_json::to_string_pretty(p).unwrap_or_default(),
                error: view.job.error.clone().unwrap_or_default(),
                runs,
            })
            .into_response())
        }
        .await,
    )
}

async fn compare(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    page(
        async {
            let ids = parse_ids(q.get("jobs").map(String::as_str).unwrap_or(""));
            let ids = ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",");
            Ok(HtmlTemplate(Compare {
                ids,
                runs: run_choices(&state).await?,
            }))
        }
        .await,
    )
}

async fn models(State(state): State<AppState>) -> Response {
    page(
        async {
            let checkpoints = checkpoint_list(&state)
                .await?
                .into_iter()
                .map(|c| {
                    let best = c.best_validation.clone().unwrap_or_default();
                    let modalities = best["modality_dice"]
                        .as_object()
                        .map(|m| {
                            in_project_order(m)
                                .map(|(k, v)| format!("{k} {}", dice(&v["mean"])))
                                .collect::<Vec<_>>()
                                .join(" · ")
                        })
                        .unwrap_or_default();
                    let test = c
                        .metrics
                        .as_ref()
                        .map(|m| dice(&m["test_dice"]["mean"]))
                        .unwrap_or_else(|| "–".into());
                    let files = [(c.best_checkpoint, "best"), (c.last_checkpoint, "last")]
                        .iter()
                        .filter(|(has, _)| *has)
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>()
                        .join(", ");
                    CheckpointRow {
                        job_id: c.job_id,
                        state: c.state,
                        method: c.method,
                        preset: c.preset,
                        dataset: c.dataset,
                        files,
                        wt: dice(&best["dice"]["wt"]),
                        tc: dice(&best["dice"]["tc"]),
                        et: dice(&best["dice"]["et"]),
                        mean: dice(&best["dice"]["mean"]),
                        modalities,
                        test,
                    }
                })
                .collect();
            Ok(HtmlTemplate(Models { checkpoints }))
        }
        .await,
    )
}

async fn segment(State(state): State<AppState>) -> Response {
    page(
        async {
            let studies = db::studies(&state.pool)
                .await?
                .into_iter()
                .map(|s| {
                    let view = StudyView::from(s);
                    let shape = view
                        .shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("×");
                    (view.study.id, view.study.name.clone(), shape)
                })
                .collect();
            let checkpoints = checkpoint_list(&state)
                .await?
                .into_iter()
                .map(|c| {
                    let best = c.best_validation.clone().unwrap_or_default();
                    (
                        c.job_id,
                        format!(
                            "run #{} · {} · {} · mean Dice {}",
                            c.job_id,
                            c.method,
                            c.dataset,
                            dice(&best["dice"]["mean"])
                        ),
                    )
                })
                .collect();
            let predictions = db::jobs(&state.pool, Some("infer"))
                .await?
                .into_iter()
                .map(|j| PredictionRow {
                    id: j.id,
                    state: j.state.clone(),
                    study: j.params_json()["study"].as_str().unwrap_or("").into(),
                    checkpoint: j.checkpoint_job_id.unwrap_or_default(),
                })
                .collect();
            Ok(HtmlTemplate(Segment {
                studies,
                checkpoints,
                predictions,
            }))
        }
        .await,
    )
}

async fn viewer(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    page(
        async {
            let job = db::job(&state.pool, id).await?;
            if job.kind != "infer" {
                return Err(Error::NotFound(format!("prediction {id}")));
            }
            let study: StudyView = db::study(&state.pool, job.study_id.unwrap_or_default())
                .await?
                .into();
            Ok(HtmlTemplate(Viewer {
                id,
                study_id: study.study.id,
                study: study.study.name.clone(),
                state: job.state.clone(),
                shape: study.shape.clone(),
            }))
        }
        .await,
    )
}
