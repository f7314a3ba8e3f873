//! The NiiVue viewer's data: the stored NIfTI files of studies, predictions, dataset cases and a
//! run's saved test predictions (streamed as stored, behind the same guard as every route, never
//! cached), the manifest that tells a viewer page what to load, a case's Dice and HD95 against its
//! ground truth (the trainer's metric code), and PNG thumbnails of cases.

use super::studies::{file_stream, StudyView};
use crate::db::{self, Dataset, Job, JobKind};
use crate::error::{Error, Result};
use crate::inspect::nifti_extension;
use crate::volume::{self, LabelConvention, TumourClass};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cggm_core::data::{discover, CaseFiles, CaseSource, LabelValues, Modality, MSD_CHANNELS};
use cggm_core::events::RegionScores;
use cggm_core::rundir::RunDir;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod files;
mod scores;

use files::*;
pub use files::{case_entries, CaseEntry};
pub use scores::score_against_truth;
use scores::*;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studies/{id}/nifti/{file}", get(study_nifti))
        .route("/predictions/{id}/nifti", get(prediction_nifti))
        .route("/predictions/{id}/scores", get(prediction_scores))
        .route("/datasets/{id}/case-list", get(dataset_cases))
        .route("/datasets/{id}/cases/{case}/nifti/{file}", get(case_nifti))
        .route(
            "/datasets/{id}/cases/{case}/thumbnail.png",
            get(case_thumbnail),
        )
        .route("/jobs/{id}/test-cases", get(test_cases))
        .route(
            "/jobs/{id}/test-cases/{case}/nifti",
            get(test_prediction_nifti),
        )
        .route(
            "/jobs/{id}/test-cases/{case}/thumbnail.png",
            get(test_case_thumbnail),
        )
        .route("/viewer/predictions/{id}", get(prediction_manifest))
        .route("/viewer/datasets/{id}/cases/{case}", get(case_manifest))
        .route(
            "/viewer/jobs/{id}/test-cases/{case}",
            get(test_case_manifest),
        )
}

/// Volumes larger than this (voxels of one 3-D volume) are not sent to the browser: a WebGL
/// texture of that size does not fit a typical GPU's limits, and the page falls back to the
/// server-rendered slices with a message.
pub const VIEWER_MAX_VOXELS: u64 = 512 * 512 * 256;

// ---------------------------------------------------------------------------- the manifest

/// What a viewer page loads: background images (one per modality), label overlays, the colour
/// of each tumour class, and the case's scores when a ground truth exists.
#[derive(Debug, Serialize)]
pub struct ViewerManifest {
    pub title: String,
    /// [X, Y, Z] voxels.
    pub shape: Vec<usize>,
    pub images: Vec<ImageSource>,
    pub overlays: Vec<Overlay>,
    pub classes: Vec<ClassStyle>,
    /// Dice and HD95 of the prediction against the ground truth, when already known.
    pub scores: Option<CaseScores>,
    /// Where to compute them when not known yet (the first request may take a second).
    pub scores_url: Option<String>,
    /// Set when the volume is too large for the browser: the reason, shown above the PNG viewer.
    pub too_large: Option<String>,
    /// A server-rendered picture of the case, shown when WebGL is missing.
    pub thumbnail_url: Option<String>,
    /// Set when the page may correct the label and save it as the study's ground truth.
    pub labels: Option<LabelEditing>,
}

/// What the viewer's "Edit label" mode needs: where a corrected label goes and the pens.
#[derive(Debug, Serialize)]
pub struct LabelEditing {
    /// `POST` (multipart `label`, `author`): a new `final` version (`server/src/routes/labels.rs`).
    pub save_url: String,
    /// The label values the pens draw (the BraTS numbering every saved label uses) and their
    /// classes, whose names and colours are `classes`.
    pub pens: Vec<(u8, TumourClass)>,
}

impl LabelEditing {
    fn of_study(study_id: i64) -> Self {
        use cggm_core::data::{internal_to_brats, LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA};
        let pen = |internal, class| (internal_to_brats(internal), class);
        Self {
            save_url: format!("/api/studies/{study_id}/labels"),
            pens: vec![
                pen(LABEL_NCR, TumourClass::Ncr),
                pen(LABEL_OEDEMA, TumourClass::Ed),
                pen(LABEL_ENHANCING, TumourClass::Et),
            ],
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ImageSource {
    pub modality: String,
    pub url: String,
    /// File name NiiVue reads the format from (`.nii` or `.nii.gz`).
    pub name: String,
    /// Channel of a 4-D file (MSD), 0 for a 3-D file.
    pub frame: usize,
}

#[derive(Debug, Serialize)]
pub struct Overlay {
    /// `prediction` or `truth`.
    pub key: &'static str,
    pub title: String,
    pub url: String,
    pub name: String,
    pub convention: LabelConvention,
    /// Label value -> tumour class, for the colour table.
    pub values: Vec<(u8, TumourClass)>,
}

#[derive(Debug, Serialize)]
pub struct ClassStyle {
    pub class: TumourClass,
    pub name: &'static str,
    pub colour: [u8; 3],
}

/// Per-region Dice and HD95 (mm) of one case, BraTS conventions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseScores {
    pub dice: RegionScores,
    pub hd95: RegionScores,
}

fn classes() -> Vec<ClassStyle> {
    TumourClass::ALL
        .iter()
        .map(|c| ClassStyle {
            class: *c,
            name: c.name(),
            colour: c.colour(),
        })
        .collect()
}

fn overlay(key: &'static str, title: &str, url: String, path: &std::path::Path) -> Overlay {
    overlay_with(key, title, url, path, LabelConvention::Brats)
}

fn overlay_with(
    key: &'static str,
    title: &str,
    url: String,
    path: &std::path::Path,
    convention: LabelConvention,
) -> Overlay {
    Overlay {
        key,
        title: title.to_string(),
        url,
        name: format!("{key}{}", nifti_extension(path)),
        convention,
        values: convention.values(),
    }
}

/// Why a volume of `shape` is not sent to the browser, if it is too large.
fn too_large(shape: &[usize]) -> Option<String> {
    let voxels: u64 = shape.iter().take(3).map(|d| *d as u64).product();
    (voxels > VIEWER_MAX_VOXELS).then(|| {
        format!(
            "This volume has {voxels} voxels per modality, more than the browser viewer takes \
             ({VIEWER_MAX_VOXELS}); showing server-rendered slices instead."
        )
    })
}

// ---------------------------------------------------------------------------- manifests

fn study_images(study: &StudyView) -> Vec<ImageSource> {
    let id = study.study.id;
    Modality::ALL
        .iter()
        .filter_map(|m| {
            let (role, frame) = if study.files.contains_key("4d") {
                ("4d", msd_frame(&MSD_CHANNELS, *m))
            } else {
                (m.name(), 0)
            };
            let path = study_file(study, role).ok()?;
            Some(ImageSource {
                modality: m.name().to_string(),
                url: format!("/api/studies/{id}/nifti/{role}"),
                name: format!("{role}{}", nifti_extension(&path)),
                frame,
            })
        })
        .collect()
}

fn case_images(dataset_id: i64, case: &CaseSource) -> Vec<ImageSource> {
    Modality::ALL
        .iter()
        .filter_map(|m| {
            let (role, frame) = match case.files {
                CaseFiles::Msd4d { channels, .. } => ("4d", msd_frame(&channels, *m)),
                CaseFiles::Separate { .. } => (m.name(), 0),
            };
            let path = case_file(case, role)?;
            Some(ImageSource {
                modality: m.name().to_string(),
                url: format!("/api/datasets/{dataset_id}/cases/{}/nifti/{role}", case.id),
                name: format!("{role}{}", nifti_extension(&path)),
                frame,
            })
        })
        .collect()
}

async fn prediction_manifest(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<ViewerManifest>> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Infer {
        return Err(Error::NotFound(format!("prediction {id}")));
    }
    let study: StudyView = db::study(&state.pool, job.study_id.unwrap_or_default())
        .await?
        .into();
    let mut overlays = Vec::new();
    let seg = job.segmentation().ok();
    if let Some(path) = &seg {
        overlays.push(overlay(
            "prediction",
            "Prediction",
            format!("/api/predictions/{id}/nifti"),
            path,
        ));
    }
    let truth = crate::labels::ground_truth(&state.pool, &study.study).await?;
    if let Some(t) = &truth {
        let title = match t.source {
            crate::labels::TruthSource::Uploaded => "Ground truth".to_string(),
            crate::labels::TruthSource::Version(v) => format!("Ground truth (corrected, v{v})"),
        };
        overlays.push(overlay(
            "truth",
            &title,
            format!("/api/studies/{}/nifti/truth?v={}", study.study.id, t.key()),
            &t.path,
        ));
    }
    let scores_url =
        (seg.is_some() && truth.is_some()).then(|| format!("/api/predictions/{id}/scores"));
    Ok(Json(ViewerManifest {
        title: format!("Segmentation #{id} · {}", study.study.name),
        too_large: too_large(&study.shape),
        shape: study.shape.clone(),
        images: study_images(&study),
        overlays,
        classes: classes(),
        scores: None,
        scores_url,
        thumbnail_url: Some(format!(
            "/api/studies/{}/slice?modality=flair",
            study.study.id
        )),
        labels: Some(LabelEditing::of_study(study.study.id)),
    }))
}

async fn case_manifest(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Json<ViewerManifest>> {
    let dataset = db::dataset(&state.pool, id).await?;
    let source = dataset_case(&dataset, &case)?;
    let mut overlays = Vec::new();
    if let Some(label) = source.label_path() {
        overlays.push(overlay_with(
            "truth",
            "Ground truth",
            format!("/api/datasets/{id}/cases/{case}/nifti/seg"),
            label,
            case_convention(&source),
        ));
    }
    let shape = case_shape(&source);
    Ok(Json(ViewerManifest {
        title: format!("{} · case {case}", dataset.name),
        too_large: too_large(&shape),
        shape,
        images: case_images(id, &source),
        overlays,
        classes: classes(),
        scores: None,
        scores_url: None,
        thumbnail_url: Some(format!("/api/datasets/{id}/cases/{case}/thumbnail.png")),
        labels: None,
    }))
}

/// [X, Y, Z] of a case from its first image's header.
fn case_shape(case: &CaseSource) -> Vec<usize> {
    case.paths()
        .first()
        .and_then(|p| cggm_core::data::read_header(p).ok())
        .map(|h| h.dims.iter().take(3).copied().collect())
        .unwrap_or_default()
}

/// A segmentation run (a training job) and the dataset it trained on.
async fn segmentation_run(state: &AppState, id: i64) -> Result<(Job, Dataset)> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Train {
        return Err(Error::NotFound(format!("training run {id}")));
    }
    let dataset_id = job
        .dataset_id
        .ok_or_else(|| Error::NotFound(format!("the dataset of run {id}")))?;
    let dataset = db::dataset(&state.pool, dataset_id).await?;
    Ok((job, dataset))
}

/// One test case of a finished run: its scores (from the run's `metrics.json`) and whether its
/// prediction was saved.
#[derive(Clone, Debug, Serialize)]
pub struct TestCase {
    pub case: String,
    pub dice: RegionScores,
    pub hd95: RegionScores,
    pub prediction_saved: bool,
}

/// The test cases of a run, worst mean Dice first; empty when the run has no test report.
pub fn run_test_cases(job: &Job) -> Vec<TestCase> {
    let run = RunDir::new(&job.out_dir);
    let Some(metrics) = run.read_metrics() else {
        return Vec::new();
    };
    let cases: Vec<cggm_core::metrics::CaseScores> =
        serde_json::from_value(metrics["test"]["cases"].clone()).unwrap_or_default();
    let mut out: Vec<TestCase> = cases
        .into_iter()
        .map(|c| TestCase {
            prediction_saved: run.test_prediction(&c.case).is_file(),
            case: c.case,
            dice: c.dice,
            hd95: c.hd95,
        })
        .collect();
    out.sort_by(|a, b| a.dice.mean.total_cmp(&b.dice.mean));
    out
}

async fn test_cases(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<TestCase>>> {
    let (job, _) = segmentation_run(&state, id).await?;
    Ok(Json(run_test_cases(&job)))
}

/// A test case of run `id` (it must be one of the run's test cases).
async fn test_case(state: &AppState, id: i64, case: &str) -> Result<(Job, Dataset, TestCase)> {
    let (job, dataset) = segmentation_run(state, id).await?;
    let test = run_test_cases(&job)
        .into_iter()
        .find(|c| c.case == case)
        .ok_or_else(|| Error::NotFound(format!("test case {case:?} of run {id}")))?;
    Ok((job, dataset, test))
}

async fn test_prediction_nifti(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Response> {
    let (job, _, test) = test_case(&state, id, &case).await?;
    if !test.prediction_saved {
        return Err(Error::NotFound(format!(
            "the saved prediction of test case {case} (runs trained before test predictions were \
             saved have none: segment the case from the Segment page)"
        )));
    }
    let run = RunDir::new(&job.out_dir);
    nifti_response(
        &run.test_prediction(&case),
        std::path::Path::new(&job.out_dir),
    )
    .await
}

async fn test_case_manifest(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Json<ViewerManifest>> {
    let (job, dataset, test) = test_case(&state, id, &case).await?;
    let source = dataset_case(&dataset, &case)?;
    let mut overlays = Vec::new();
    if test.prediction_saved {
        let path = RunDir::new(&job.out_dir).test_prediction(&case);
        overlays.push(overlay(
            "prediction",
            "Prediction",
            format!("/api/jobs/{id}/test-cases/{case}/nifti"),
            &path,
        ));
    }
    if let Some(label) = source.label_path() {
        overlays.push(overlay_with(
            "truth",
            "Ground truth",
            format!("/api/datasets/{}/cases/{case}/nifti/seg", dataset.id),
            label,
            case_convention(&source),
        ));
    }
    let shape = case_shape(&source);
    Ok(Json(ViewerManifest {
        title: format!("Run #{id} · test case {case}"),
        too_large: too_large(&shape),
        shape,
        images: case_images(dataset.id, &source),
        overlays,
        classes: classes(),
        scores: Some(CaseScores {
            dice: test.dice,
            hd95: test.hd95,
        }),
        scores_url: None,
        thumbnail_url: Some(format!("/api/jobs/{id}/test-cases/{case}/thumbnail.png")),
        labels: None,
    }))
}
