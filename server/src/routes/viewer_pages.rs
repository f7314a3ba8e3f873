//! The viewer's pages: the case list of a dataset (the dataset browser), one case of a dataset in
//! the NiiVue viewer, and the test split of a finished segmentation run (its test cases worst
//! Dice first, each opening with its prediction beside the ground truth).

use super::pages::page;
use super::viewer::{case_entries, run_test_cases};
use crate::db::{self, JobKind};
use crate::error::{Error, Result};
use crate::templates::HtmlTemplate;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets/{id}/cases", get(dataset_cases))
        .route("/datasets/{id}/cases/{case}", get(dataset_case))
        .route("/jobs/{id}/test", get(test_split))
        .route("/jobs/{id}/test/{case}", get(test_case))
}

#[derive(Template)]
#[template(path = "dataset_cases.html")]
pub struct DatasetCases {
    pub id: i64,
    pub name: String,
    /// (case id, has a label)
    pub cases: Vec<(String, bool)>,
}

#[derive(Template)]
#[template(path = "case_viewer.html")]
pub struct CaseViewer {
    pub title: String,
    pub manifest: String,
    /// (link, text) back to where the case was opened from.
    pub back: (String, String),
}

pub struct TestRow {
    pub case: String,
    pub dice: [String; 4],
    pub hd95: [String; 3],
    pub prediction_saved: bool,
}

#[derive(Template)]
#[template(path = "test_split.html")]
pub struct TestSplit {
    pub id: i64,
    pub summary: String,
    pub rows: Vec<TestRow>,
    pub any_unsaved: bool,
}

async fn dataset_cases(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    page(
        async {
            let dataset = db::dataset(&state.pool, id).await?;
            let cases = case_entries(&dataset)
                .into_iter()
                .map(|c| (c.case, c.has_label))
                .collect();
            Ok(HtmlTemplate(DatasetCases {
                id,
                name: dataset.name,
                cases,
            }))
        }
        .await,
    )
}

async fn dataset_case(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Response {
    page(
        async {
            let dataset = db::dataset(&state.pool, id).await?;
            if !case_entries(&dataset).iter().any(|c| c.case == case) {
                return Err(Error::NotFound(format!(
                    "case {case:?} in dataset {}",
                    dataset.name
                )));
            }
            Ok(HtmlTemplate(CaseViewer {
                title: format!("{} · {case}", dataset.name),
                manifest: format!("/api/viewer/datasets/{id}/cases/{case}"),
                back: (
                    format!("/datasets/{id}/cases"),
                    format!("All cases of {}", dataset.name),
                ),
            }))
        }
        .await,
    )
}

async fn training_run(state: &AppState, id: i64) -> Result<db::Job> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Train {
        return Err(Error::NotFound(format!("training run {id}")));
    }
    Ok(job)
}

async fn test_split(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    page(
        async {
            let job = training_run(&state, id).await?;
            let p = job.params_json();
            let cases = run_test_cases(&job);
            let f = |v: f64| format!("{v:.3}");
            let rows: Vec<TestRow> = cases
                .iter()
                .map(|c| TestRow {
                    case: c.case.clone(),
                    dice: [c.dice.mean, c.dice.wt, c.dice.tc, c.dice.et].map(f),
                    hd95: [c.hd95.wt, c.hd95.tc, c.hd95.et].map(|v| format!("{v:.1}")),
                    prediction_saved: c.prediction_saved,
                })
                .collect();
            Ok(HtmlTemplate(TestSplit {
                id,
                summary: format!(
                    "{} · {} · dataset {} · {}",
                    p["method"].as_str().unwrap_or(""),
                    p["preset"].as_str().unwrap_or(""),
                    p["dataset"].as_str().unwrap_or(""),
                    job.state
                ),
                any_unsaved: cases.iter().any(|c| !c.prediction_saved),
                rows,
            }))
        }
        .await,
    )
}

async fn test_case(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Response {
    page(
        async {
            let job = training_run(&state, id).await?;
            if !run_test_cases(&job).iter().any(|c| c.case == case) {
                return Err(Error::NotFound(format!("test case {case:?} of run {id}")));
            }
            Ok(HtmlTemplate(CaseViewer {
                title: format!("Run #{id} · test case {case}"),
                manifest: format!("/api/viewer/jobs/{id}/test-cases/{case}"),
                back: (
                    format!("/jobs/{id}/test"),
                    format!("Test split of run #{id}"),
                ),
            }))
        }
        .await,
    )
}
