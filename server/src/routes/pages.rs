//! The HTML pages. They render what the server knows; the live parts (charts, viewer) are driven
//! by `web/static/app.js` through the JSON API.

use super::datasets::DatasetView;
use super::jobs::{checkpoint_list, job_task, job_view};
use super::parse_ids;
use super::studies::StudyView;
use crate::db::{self, JobKind};
use crate::error::{Error, Result};
use crate::feature_datasets::DatasetFacts;
use crate::provenance::PredictionSource;
use crate::templates::*;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cggm_core::request::{headline_metric, OptionKind, Vocabulary};
use cggm_core::task::TaskKind;
use std::collections::{BTreeMap, HashMap};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/datasets", get(datasets))
        .route("/runs/new", get(new_run))
        .route("/jobs/{id}", get(job))
        .route("/compare", get(compare))
        .route("/models", get(models))
        .route("/segment", get(segment))
        .route("/pacs", get(pacs))
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
pub(crate) fn page<T: IntoResponse>(result: Result<T>) -> Response {
    match result {
        Ok(page) => page.into_response(),
        Err(Error::NotFound(what)) => {
            (StatusCode::NOT_FOUND, HtmlTemplate(NotFound { what })).into_response()
        }
        Err(other) => other.into_response(),
    }
}

/// A validation (or finished) event's fused scores by name: its `metrics` map (every task), or
/// for runs recorded before tasks existed, the segmentation Dice under the same names.
pub fn fused_scores(
    event: &serde_json::Value,
    metrics_key: &str,
    dice_key: &str,
) -> BTreeMap<String, f64> {
    let from_map: BTreeMap<String, f64> = event[metrics_key]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    if !from_map.is_empty() {
        return from_map;
    }
    let dice = &event[dice_key];
    ["wt", "tc", "et", "mean"]
        .iter()
        .filter_map(|r| Some((format!("dice_{r}"), dice[*r].as_f64()?)))
        .collect()
}

/// Each modality's classifier score `name` from a validation event: `modality_metrics` (every
/// task) or the older `modality_dice`. In the run's modality order for segmentation (flair, t1ce,
/// t1, t2), as stored otherwise.
pub fn modality_scores(event: &serde_json::Value, name: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = match event["modality_metrics"].as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v[name].as_f64()?)))
            .collect(),
        _ => event["modality_dice"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v["mean"].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mri = cggm_core::data::Modality::ALL;
    out.sort_by_key(|(k, _)| mri.iter().position(|m| m.name() == k).unwrap_or(usize::MAX));
    out
}

/// Scores as "name value" text, the headline first.
fn score_list(scores: &BTreeMap<String, f64>, headline: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = scores
        .iter()
        .map(|(k, v)| (metric_label(k), format!("{v:.3}")))
        .collect();
    if let Some(i) = scores.keys().position(|k| k == headline) {
        let head = out.remove(i);
        out.insert(0, head);
    }
    out
}

/// A metric's name as people read it (`dice_wt` -> `Dice WT`, `f1_weighted` -> `F1 weighted`).
pub fn metric_label(name: &str) -> String {
    name.split('_')
        .map(|part| match part {
            "dice" => "Dice".to_string(),
            "f1" => "F1".to_string(),
            "mae" | "wt" | "tc" | "et" => part.to_ascii_uppercase(),
            "acc2" => "Acc-2".to_string(),
            "acc7" => "Acc-7".to_string(),
            "corr" => "Corr".to_string(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-modality bars: (modality, text, bar width in %).
fn modality_bars(event: &serde_json::Value, headline: &str) -> Vec<(String, String, u32)> {
    modality_scores(event, headline)
        .into_iter()
        .map(|(name, v)| (name, format!("{v:.3}"), (v.clamp(0.0, 1.0) * 100.0) as u32))
        .collect()
}

/// What a list's filter box matches (lower case): the run's name and tags, and `facts` (method,
/// preset, dataset, task).
fn search_text(labels: &crate::run_labels::RunLabels, facts: &[&str]) -> String {
    let mut text = labels.search_text();
    for f in facts {
        text.push(' ');
        text.push_str(f);
    }
    text.to_lowercase()
}

async fn dashboard(State(state): State<AppState>) -> Response {
    page(
        async {
            let mut runs = Vec::new();
            for job in db::jobs(&state.pool, Some(JobKind::Train)).await? {
                let view = job_view(&state, job).await?;
                let task = job_task(&view.params);
                let headline = headline_metric(task);
                let best = view.best_validation.clone().unwrap_or_default();
                let scores = fused_scores(&best, "metrics", "dice");
                let method = view.params["method"].as_str().unwrap_or_default();
                let preset = view.params["preset"].as_str().unwrap_or_default();
                let dataset = view.params["dataset"].as_str().unwrap_or_default();
                runs.push(RunRow {
                    search: search_text(
                        &view.labels,
                        &[method, preset, dataset, &task.to_string()],
                    ),
                    name: view.labels.name.clone(),
                    tags: view.labels.tags.clone(),
                    id: view.job.id,
                    state: view.job.state.to_string(),
                    task: task.to_string(),
                    method: view.params["method"].as_str().unwrap_or_default().into(),
                    preset: view.params["preset"].as_str().unwrap_or_default().into(),
                    dataset: view.params["dataset"].as_str().unwrap_or_default().into(),
                    epochs: view.params["epochs"].to_string(),
                    scores: score_list(&scores, headline),
                    headline: metric_label(headline),
                    modalities: modality_bars(&best, headline),
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
                .map(dataset_row)
                .collect();
            Ok(HtmlTemplate(Datasets {
                datasets: rows,
                data_dir: state.data_dir().display().to_string(),
            }))
        }
        .await,
    )
}

/// One dataset of the Datasets page, with its problems (a feature dataset's own, else its
/// cases').
fn dataset_row(d: db::Dataset) -> DatasetRow {
    let facts = DatasetFacts::of(&d);
    let view = DatasetView::from(d);
    let features = facts.features.as_ref().map(feature_row);
    let mut problems: Vec<(String, String)> = facts
        .features
        .iter()
        .flat_map(|f| f.problems.iter())
        .map(|p| ("dataset".to_string(), p.clone()))
        .collect();
    problems.extend(
        view.report
            .problems
            .iter()
            .filter(|_| facts.features.is_none())
            .map(|p| (p.case.clone(), p.error.clone())),
    );
    DatasetRow {
        task: facts.task.to_string(),
        features,
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
        problems,
    }
}

fn feature_row(f: &crate::feature_datasets::FeatureSummary) -> FeatureRow {
    FeatureRow {
        modalities: f
            .modalities
            .iter()
            .map(|m| {
                let shape = match m.seq_len {
                    Some(t) => format!("{t}×{}", m.dim),
                    None => m.dim.to_string(),
                };
                (m.name.clone(), shape)
            })
            .collect(),
        labels: match f.label_range {
            Some([lo, hi]) => format!("real labels in [{lo}, {hi}]"),
            None if !f.classes.is_empty() => {
                format!("{} classes: {}", f.classes.len(), f.classes.join(", "))
            }
            None => "real labels".to_string(),
        },
        samples: crate::feature_datasets::SPLITS
            .iter()
            .filter_map(|split| Some(format!("{} {split}", f.samples.get(*split)?)))
            .collect::<Vec<_>>()
            .join(" / "),
    }
}

async fn new_run(State(state): State<AppState>) -> Response {
    page(
        async {
            let vocabulary = Vocabulary::current(state.config.cuda_devices);
            let datasets = dataset_choices(db::datasets(&state.pool).await?);
            // The first dataset's task decides what the form offers until the browser refines it.
            let task = datasets
                .first()
                .map_or(TaskKind::Segmentation.to_string(), |d| d.task.clone());
            let (presets, default_preset) = preset_options(&vocabulary, &task);
            let fields = form_fields(&vocabulary)?;
            let sources = crate::fine_tune::sources(&state.pool).await?;
            Ok(HtmlTemplate(NewRun {
                methods: method_names(&vocabulary, datasets.first()),
                datasets,
                presets,
                default_preset,
                fields,
                sources,
            }))
        }
        .await,
    )
}

/// The form's datasets, with their task, size and modalities.
fn dataset_choices(datasets: Vec<db::Dataset>) -> Vec<DatasetChoice> {
    datasets
        .into_iter()
        .map(|d| {
            let facts = DatasetFacts::of(&d);
            DatasetChoice {
                id: d.id,
                name: d.name.clone(),
                task: facts.task.to_string(),
                samples: facts.samples,
                unit: if facts.task == TaskKind::Segmentation {
                    "cases"
                } else {
                    "training samples"
                },
                modalities: facts.modalities.join(","),
            }
        })
        .collect()
}

/// Every method, then a unimodal one for each modality of `first` (the dataset shown first).
fn method_names(vocabulary: &Vocabulary, first: Option<&DatasetChoice>) -> Vec<String> {
    let modalities: Vec<String> = first
        .map(|d| {
            d.modalities
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut methods: Vec<String> = vocabulary.methods.iter().map(|m| m.name.clone()).collect();
    methods.extend(
        modalities
            .iter()
            .map(|m| format!("{}{m}", vocabulary.unimodal_prefix)),
    );
    methods
}

/// The presets, marked whether they fit `task`, and the one chosen at first: the vocabulary's
/// default where it fits `task`, else the first that does.
fn preset_options(vocabulary: &Vocabulary, task: &str) -> (Vec<PresetOption>, String) {
    let presets = vocabulary
        .presets
        .iter()
        .map(|p| PresetOption {
            name: p.name.clone(),
            task: p.task.to_string(),
            fits: p.task.to_string() == task,
            label: format!("{} ({})", p.name, p.hardware),
            description: p.description.clone(),
        })
        .collect();
    let default_preset = vocabulary
        .presets
        .iter()
        .find(|p| p.task.to_string() == task)
        .map_or(vocabulary.default_preset.clone(), |p| {
            if vocabulary
                .presets
                .iter()
                .any(|q| q.name == vocabulary.default_preset && q.task.to_string() == task)
            {
                vocabulary.default_preset.clone()
            } else {
                p.name.clone()
            }
        });
    (presets, default_preset)
}

/// The run options of the form (method and preset have their own lists), with the choices of
/// those that choose from one of the vocabulary's lists.
fn form_fields(vocabulary: &Vocabulary) -> Result<Vec<FormField>> {
    let lists = serde_json::to_value(vocabulary).map_err(anyhow::Error::from)?;
    Ok(vocabulary
        .options
        .iter()
        .filter(|o| o.name != "method" && o.name != "preset")
        .map(|o| FormField {
            name: o.name.clone(),
            label: o.label.clone(),
            help: o.help.clone(),
            tasks: o
                .tasks
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(","),
            flag: o.flag.clone(),
            kind: match o.kind {
                OptionKind::Number => "number",
                OptionKind::Integer => "integer",
                OptionKind::Flag => "flag",
                OptionKind::Choice => "choice",
            },
            choices: o
                .choices
                .as_ref()
                .and_then(|list| lists[list].as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

async fn run_choices(state: &AppState) -> Result<Vec<(i64, String)>> {
    Ok(db::jobs(&state.pool, Some(JobKind::Train))
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
            if job.kind == JobKind::Infer {
                return Ok(
                    axum::response::Redirect::to(&format!("/predictions/{id}")).into_response()
                );
            }
            let view = job_view(&state, job).await?;
            let p = &view.params;
            let task = job_task(p);
            let summary = format!(
                "{task} · {} · preset {} · {} epoch(s) · dataset {}",
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
                task: task.to_string(),
                headline: headline_metric(task).to_string(),
                headline_label: metric_label(headline_metric(task)),
                state: view.job.state,
                summary,
                params: serde_json::to_string_pretty(p).unwrap_or_default(),
                error: view.job.error.clone().unwrap_or_default(),
                runs,
                tracking: crate::tracking::describe(view.job.run_dir().root()).unwrap_or_default(),
                name: view.labels.name.clone(),
                notes: view.labels.notes.clone(),
                tags: view.labels.tags.join(", "),
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
            let task = match ids.first() {
                Some(id) => db::job(&state.pool, *id)
                    .await
                    .map(|j| job_task(&j.params_json()))
                    .unwrap_or_default(),
                None => TaskKind::default(),
            };
            let ids = ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",");
            Ok(HtmlTemplate(Compare {
                ids,
                headline: headline_metric(task).to_string(),
                runs: run_choices(&state).await?,
            }))
        }
        .await,
    )
}

/// The data of a run's last `finished` event (`null` before it has one).
async fn finished_event(state: &AppState, job_id: i64) -> Result<serde_json::Value> {
    Ok(db::events(
        &state.pool,
        job_id,
        0,
        Some(cggm_core::events::EventKind::Finished.as_str()),
    )
    .await?
    .last()
    .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
    .unwrap_or_default())
}

/// "best, last": the checkpoints a run has.
fn checkpoint_files(best: bool, last: bool) -> String {
    [(best, "best"), (last, "last")]
        .iter()
        .filter(|(has, _)| *has)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn models(State(state): State<AppState>) -> Response {
    page(
        async {
            let mut checkpoints = Vec::new();
            let labels = crate::run_labels::load_all(&state.pool).await?;
            for c in checkpoint_list(&state).await? {
                let label = labels.get(&c.job_id).cloned().unwrap_or_default();
                let headline = headline_metric(c.task);
                let best = c.best_validation.clone().unwrap_or_default();
                let finished = finished_event(&state, c.job_id).await?;
                let mut test = fused_scores(&finished, "test_metrics", "test_dice");
                if test.is_empty() {
                    if let Some(metrics) = &c.metrics {
                        test = fused_scores(metrics, "test_metrics", "test_dice");
                    }
                }
                let files = checkpoint_files(c.best_checkpoint, c.last_checkpoint);
                checkpoints.push(CheckpointRow {
                    search: search_text(
                        &label,
                        &[&c.method, &c.preset, &c.dataset, &c.task.to_string()],
                    ),
                    name: label.name,
                    tags: label.tags,
                    job_id: c.job_id,
                    state: c.state.to_string(),
                    task: c.task.to_string(),
                    segments: c.task == TaskKind::Segmentation,
                    method: c.method,
                    preset: c.preset,
                    dataset: c.dataset,
                    files,
                    scores: score_list(&fused_scores(&best, "metrics", "dice"), headline),
                    modalities: modality_scores(&best, headline)
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" · "),
                    headline: metric_label(headline),
                    test: test
                        .get(headline)
                        .map_or_else(|| "–".to_string(), |v| format!("{v:.3}")),
                });
            }
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
                .filter(|c| c.task == TaskKind::Segmentation)
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
            let jobs = db::jobs(&state.pool, Some(JobKind::Infer)).await?;
            let sources = PredictionSource::of_all(&state.pool, &jobs).await?;
            let predictions = jobs
                .iter()
                .zip(sources)
                .map(|(j, source)| PredictionRow {
                    id: j.id,
                    state: j.state.to_string(),
                    study: j.params_json()["study"].as_str().unwrap_or("").into(),
                    source,
                })
                .collect();
            Ok(HtmlTemplate(Segment {
                studies,
                checkpoints,
                predictions,
                modalities: crate::inspect::MODALITIES,
            }))
        }
        .await,
    )
}

async fn pacs(State(state): State<AppState>) -> Response {
    page(
        async {
            let predictions = crate::job_store::pacs_segmentations(&state.pool).await?;
            Ok(HtmlTemplate(Pacs {
                url: state.config.pacs.as_ref().map(|p| p.root.clone()),
                modalities: crate::inspect::MODALITIES,
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
            if job.kind != JobKind::Infer {
                return Err(Error::NotFound(format!("prediction {id}")));
            }
            let study: StudyView = db::study(&state.pool, job.study_id.unwrap_or_default())
                .await?
                .into();
            Ok(HtmlTemplate(Viewer {
                id,
                study_id: study.study.id,
                study: study.study.name.clone(),
                state: job.state.to_string(),
                shape: study.shape.clone(),
                source: PredictionSource::of(&state.pool, &job).await,
            }))
        }
        .await,
    )
}
