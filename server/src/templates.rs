//! askama page templates (in `web/templates/`) and the one wrapper that renders them.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Renders any template as an HTML response; a render error is a logged 500.
pub struct HtmlTemplate<T>(pub T);

impl<T: Template> IntoResponse for HtmlTemplate<T> {
    fn into_response(self) -> Response {
        match self.0.render() {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "template render failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "page could not be rendered (see the server log)",
                )
                    .into_response()
            }
        }
    }
}

/// One row of the runs table on the dashboard.
pub struct RunRow {
    pub id: i64,
    /// The run's name (empty when it has none) and tags.
    pub name: String,
    pub tags: Vec<String>,
    /// Lower-case text the list's filter matches: name, tags, method, preset, dataset, task.
    pub search: String,
    pub state: String,
    pub task: String,
    pub method: String,
    pub preset: String,
    pub dataset: String,
    pub epochs: String,
    /// Best validation scores as (label, text), the task's headline metric first.
    pub scores: Vec<(String, String)>,
    /// The headline metric's label (what the per-modality bars show).
    pub headline: String,
    /// Per-modality classifier headline score: (modality, text, bar width in %).
    pub modalities: Vec<(String, String, u32)>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    pub runs: Vec<RunRow>,
    pub dataset_count: usize,
    pub demo_pending: bool,
}

pub struct DatasetRow {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub source: String,
    pub layout: String,
    pub cases: usize,
    pub valid_cases: usize,
    pub shape: String,
    pub modalities: String,
    /// "train / val / test" case counts of the trainer's default split.
    pub split: String,
    pub full_check: bool,
    pub problems: Vec<(String, String)>,
    /// segmentation, classification or regression.
    pub task: String,
    /// Feature datasets: per modality "name [T×D]", class names or label range, samples per split.
    pub features: Option<FeatureRow>,
}

pub struct FeatureRow {
    pub modalities: Vec<(String, String)>,
    pub labels: String,
    pub samples: String,
}

#[derive(Template)]
#[template(path = "datasets.html")]
pub struct Datasets {
    pub datasets: Vec<DatasetRow>,
    pub data_dir: String,
}

/// A dataset as the new-run form offers it.
pub struct DatasetChoice {
    pub id: i64,
    pub name: String,
    pub task: String,
    pub samples: usize,
    /// "cases" or "training samples".
    pub unit: &'static str,
    /// Comma-separated modality names (for the unimodal methods).
    pub modalities: String,
}

/// One preset of the form's list.
pub struct PresetOption {
    pub name: String,
    pub task: String,
    /// Fits the first dataset's task (the others are hidden until another dataset is chosen).
    pub fits: bool,
    /// `paper (GPU)`.
    pub label: String,
    pub description: String,
}

/// One run option of the form, described from the trainer's vocabulary.
pub struct FormField {
    pub name: String,
    /// The option's name and one-line help in the user's words (the vocabulary's `OptionSpec`).
    pub label: String,
    pub help: String,
    /// The tasks it applies to, comma-separated (the form hides it for the others).
    pub tasks: String,
    pub flag: String,
    /// number, integer, flag or choice.
    pub kind: &'static str,
    pub choices: Vec<String>,
}

#[derive(Template)]
#[template(path = "new_run.html")]
pub struct NewRun {
    pub datasets: Vec<DatasetChoice>,
    pub methods: Vec<String>,
    pub presets: Vec<PresetOption>,
    pub default_preset: String,
    pub fields: Vec<FormField>,
    /// Finished runs a new run may start from (`init_from`).
    pub sources: Vec<crate::fine_tune::SourceRun>,
}

#[derive(Template)]
#[template(path = "job.html")]
pub struct JobPage {
    pub id: i64,
    pub task: String,
    /// The task's headline metric (name in the events) and its label.
    pub headline: String,
    pub headline_label: String,
    /// Shown by name; its flags decide which of Cancel and Resume the page shows.
    pub state: crate::db::JobState,
    pub summary: String,
    pub params: String,
    pub error: String,
    pub runs: Vec<(i64, String)>,
    /// Where the run is logged (MLflow, TensorBoard; see `crate::tracking`), or empty.
    pub tracking: String,
    /// The run's name, notes and tags (comma-separated), editable on the page.
    pub name: String,
    pub notes: String,
    pub tags: String,
}

#[derive(Template)]
#[template(path = "compare.html")]
pub struct Compare {
    pub ids: String,
    /// The headline metric of the first run's task (the per-modality chart follows it).
    pub headline: String,
    pub runs: Vec<(i64, String)>,
}

pub struct CheckpointRow {
    pub job_id: i64,
    pub name: String,
    pub tags: Vec<String>,
    /// Lower-case text the list's filter matches: name, tags, method, preset, dataset, task.
    pub search: String,
    pub state: String,
    pub task: String,
    /// Whether the run segments (and can be used on the Segment page).
    pub segments: bool,
    pub method: String,
    pub preset: String,
    pub dataset: String,
    pub files: String,
    /// Best validation scores as (label, text), the headline first.
    pub scores: Vec<(String, String)>,
    pub modalities: String,
    pub headline: String,
    /// The headline metric on the test split.
    pub test: String,
}

#[derive(Template)]
#[template(path = "models.html")]
pub struct Models {
    pub checkpoints: Vec<CheckpointRow>,
}

pub struct PredictionRow {
    pub id: i64,
    pub state: String,
    pub study: String,
    /// The run, checkpoint and method it came from (the run links to its page).
    pub source: Option<crate::provenance::PredictionSource>,
}

#[derive(Template)]
#[template(path = "segment.html")]
pub struct Segment {
    pub studies: Vec<(i64, String, String)>,
    pub checkpoints: Vec<(i64, String)>,
    pub predictions: Vec<PredictionRow>,
    /// One DICOM series field per modality.
    pub modalities: [&'static str; 4],
}

/// The PACS page: search, a study's series and the modality mapping (web/static/pacs.js).
#[derive(Template)]
#[template(path = "pacs.html")]
pub struct Pacs {
    /// The configured DICOMweb root; `None`: the page says how to configure one.
    pub url: Option<String>,
    pub modalities: [&'static str; 4],
    /// Finished segmentations of studies imported from the PACS: (job id, study name).
    pub predictions: Vec<(i64, String)>,
}

#[derive(Template)]
#[template(path = "viewer.html")]
pub struct Viewer {
    pub id: i64,
    pub study_id: i64,
    pub study: String,
    pub state: String,
    /// [X, Y, Z] of the study.
    pub shape: Vec<usize>,
    /// The run, checkpoint and method the prediction came from.
    pub source: Option<crate::provenance::PredictionSource>,
}

#[derive(Template)]
#[template(path = "not_found.html")]
pub struct NotFound {
    pub what: String,
}

/// Dice as text with three decimals, or a dash.
pub fn dice(value: &serde_json::Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}
