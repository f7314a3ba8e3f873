//! The NiiVue viewer's data: the stored NIfTI files of studies, predictions, dataset cases and a
//! run's saved test predictions (streamed as stored, behind the same guard as every route, never
//! cached), the manifest that tells a viewer page what to load, a case's Dice and HD95 against its
//! ground truth (the trainer's metric code), and PNG thumbnails of cases.

use super::studies::{file_stream, StudyView};
use crate::db::{self, Dataset, Job, JobKind, JobState};
use crate::error::{Error, Result};
use crate::volume::{self, LabelConvention, TumourClass};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cggm_trainer::data::{discover, CaseFiles, CaseSource, Modality};
use cggm_trainer::events::RegionScores;
use cggm_trainer::rundir::RunDir;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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

fn nifti_extension(path: &std::path::Path) -> &'static str {
    if path.to_string_lossy().to_ascii_lowercase().ends_with(".gz") {
        ".nii.gz"
    } else {
        ".nii"
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

// ---------------------------------------------------------------------------- streaming

/// A stored NIfTI file as it is on disk (gzip or not), shown inline; patient data, never cached.
async fn nifti_response(path: &std::path::Path) -> Result<Response> {
    let file = tokio::fs::File::open(path).await?;
    let length = file.metadata().await?.len();
    // A stored .nii.gz goes out as it is; a plain .nii is compressed on the way (CompressionLayer).
    let content_type = if nifti_extension(path) == ".nii.gz" {
        "application/gzip"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(file_stream(file)),
    )
        .into_response())
}

/// A study's stored files by role: `flair`, `t1ce`, `t1`, `t2`, `4d` (an MSD upload) and `seg`
/// (a label sent with the study).
fn study_file(study: &StudyView, role: &str) -> Result<PathBuf> {
    let file = study.files.get(role).ok_or_else(|| {
        let roles: Vec<&str> = study.files.keys().map(String::as_str).collect();
        Error::NotFound(format!(
            "file {role:?} of study {} (it has: {})",
            study.study.id,
            roles.join(", ")
        ))
    })?;
    Ok(PathBuf::from(&study.study.dir).join(file))
}

async fn study_nifti(
    State(state): State<AppState>,
    Path((id, file)): Path<(i64, String)>,
) -> Result<Response> {
    let study: StudyView = db::study(&state.pool, id).await?.into();
    nifti_response(&study_file(&study, &file)?).await
}

/// A finished prediction's segmentation file.
fn prediction_seg(job: &Job) -> Result<PathBuf> {
    let path = PathBuf::from(&job.out_dir).join("seg.nii.gz");
    if job.kind != JobKind::Infer || job.state != JobState::Succeeded || !path.is_file() {
        return Err(Error::NotFound(format!("segmentation of job {}", job.id)));
    }
    Ok(path)
}

async fn prediction_nifti(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let job = db::job(&state.pool, id).await?;
    nifti_response(&prediction_seg(&job)?).await
}

/// The case `case` of a registered or uploaded dataset (found by name, never by path).
fn dataset_case(dataset: &Dataset, case: &str) -> Result<CaseSource> {
    discover(std::path::Path::new(&dataset.path))
        .cases
        .into_iter()
        .find(|c| c.id == case)
        .ok_or_else(|| Error::NotFound(format!("case {case:?} in dataset {}", dataset.name)))
}

/// MSD Task01 channel order inside the 4-D image: FLAIR, T1w, T1gd, T2w.
fn msd_frame(modality: Modality) -> usize {
    match modality {
        Modality::Flair => 0,
        Modality::T1 => 1,
        Modality::T1ce => 2,
        Modality::T2 => 3,
    }
}

/// A case's file by role (`flair`, `t1ce`, `t1`, `t2`, `4d`, `seg`).
fn case_file(case: &CaseSource, role: &str) -> Option<PathBuf> {
    match (&case.files, role) {
        (CaseFiles::Separate { label, .. } | CaseFiles::Msd4d { label, .. }, "seg") => {
            label.clone()
        }
        (CaseFiles::Msd4d { image, .. }, "4d") => Some(image.clone()),
        (CaseFiles::Separate { images, .. }, m) => {
            let modality = Modality::parse(m)?;
            Some(images[Modality::ALL.iter().position(|x| *x == modality)?].clone())
        }
        _ => None,
    }
}

fn case_convention(case: &CaseSource) -> LabelConvention {
    match case.files {
        CaseFiles::Separate { .. } => LabelConvention::Brats,
        CaseFiles::Msd4d { .. } => LabelConvention::Msd,
    }
}

async fn case_nifti(
    State(state): State<AppState>,
    Path((id, case, file)): Path<(i64, String, String)>,
) -> Result<Response> {
    let dataset = db::dataset(&state.pool, id).await?;
    let source = dataset_case(&dataset, &case)?;
    let path = case_file(&source, &file)
        .ok_or_else(|| Error::NotFound(format!("file {file:?} of case {case}")))?;
    nifti_response(&path).await
}

#[derive(Debug, Serialize)]
pub struct CaseEntry {
    pub case: String,
    pub has_label: bool,
}

async fn dataset_cases(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<CaseEntry>>> {
    let dataset = db::dataset(&state.pool, id).await?;
    Ok(Json(case_entries(&dataset)))
}

pub fn case_entries(dataset: &Dataset) -> Vec<CaseEntry> {
    discover(std::path::Path::new(&dataset.path))
        .cases
        .into_iter()
        .map(|c| CaseEntry {
            has_label: c.label_path().is_some(),
            case: c.id,
        })
        .collect()
}

// ---------------------------------------------------------------------------- manifests

fn study_images(study: &StudyView) -> Vec<ImageSource> {
    let id = study.study.id;
    Modality::ALL
        .iter()
        .filter_map(|m| {
            let (role, frame) = if study.files.contains_key("4d") {
                ("4d", msd_frame(*m))
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
                CaseFiles::Msd4d { .. } => ("4d", msd_frame(*m)),
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
    let seg = prediction_seg(&job).ok();
    if let Some(path) = &seg {
        overlays.push(overlay(
            "prediction",
            "Prediction",
            format!("/api/predictions/{id}/nifti"),
            path,
        ));
    }
    let truth = study_file(&study, "seg").ok();
    if let Some(path) = &truth {
        overlays.push(overlay(
            "truth",
            "Ground truth",
            format!("/api/studies/{}/nifti/seg", study.study.id),
            path,
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
    }))
}

/// [X, Y, Z] of a case from its first image's header.
fn case_shape(case: &CaseSource) -> Vec<usize> {
    case.paths()
        .first()
        .and_then(|p| cggm_trainer::data::read_header(p).ok())
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
    let cases: Vec<cggm_trainer::eval::CaseScores> =
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
    nifti_response(&RunDir::new(&job.out_dir).test_prediction(&case)).await
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
    }))
}

// ---------------------------------------------------------------------------- scores

/// Internal classes (0 background, 1 NCR, 2 ED, 3 ET) of a decoded label volume.
fn internal_labels(labels: &volume::Volume, convention: LabelConvention) -> ndarray::Array3<u8> {
    let s = labels.shape3();
    ndarray::Array3::from_shape_fn((s[0], s[1], s[2]), |(x, y, z)| {
        let value = labels.data[ndarray::IxDyn(&[x, y, z])]
            .round()
            .clamp(0.0, 255.0) as u8;
        match convention.class_of(value) {
            Some(TumourClass::Ncr) => 1,
            Some(TumourClass::Ed) => 2,
            Some(TumourClass::Et) => 3,
            None => 0,
        }
    })
}

/// Dice and the official HD95 of a prediction against a ground truth on the same voxel grid.
pub fn score_against_truth(
    prediction: &volume::Volume,
    truth: &volume::Volume,
    truth_convention: LabelConvention,
) -> Result<CaseScores, String> {
    if prediction.shape3() != truth.shape3() {
        return Err(format!(
            "the prediction is {:?} voxels but the ground truth is {:?}: they are not on the \
             same grid",
            prediction.shape3(),
            truth.shape3()
        ));
    }
    let pred = internal_labels(prediction, LabelConvention::Brats);
    let truth = internal_labels(truth, truth_convention);
    let flat = |a: &ndarray::Array3<u8>| a.iter().copied().collect::<Vec<u8>>();
    let spacing = truth_spacing(prediction);
    Ok(CaseScores {
        dice: cggm_trainer::metrics::dice_scores(&flat(&pred), &flat(&truth)),
        hd95: cggm_trainer::metrics::hd95_scores(&pred.view(), &truth.view(), spacing),
    })
}

fn truth_spacing(v: &volume::Volume) -> [f64; 3] {
    v.spacing.map(f64::from)
}

/// Scores of a prediction whose study came with a label: computed once, kept beside the
/// segmentation in `scores.json`.
async fn prediction_scores(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<CaseScores>> {
    let job = db::job(&state.pool, id).await?;
    let seg = prediction_seg(&job)?;
    let study: StudyView = db::study(&state.pool, job.study_id.unwrap_or_default())
        .await?
        .into();
    let truth_path = study_file(&study, "seg").map_err(|_| {
        Error::NotFound(format!(
            "a ground truth for prediction {id} (upload the study with its *_seg.nii.gz to \
             compare)"
        ))
    })?;
    let stored = seg.with_file_name("scores.json");
    if let Some(scores) = std::fs::read_to_string(&stored)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        return Ok(Json(scores));
    }
    let prediction = state
        .volumes
        .get(&seg)
        .await
        .map_err(Error::Unprocessable)?;
    let truth = state
        .volumes
        .get(&truth_path)
        .await
        .map_err(Error::Unprocessable)?;
    let scores = tokio::task::spawn_blocking(move || {
        score_against_truth(&prediction, &truth, LabelConvention::Brats)
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(Error::Unprocessable)?;
    if let Ok(text) = serde_json::to_string(&scores) {
        let _ = std::fs::write(&stored, text);
    }
    Ok(Json(scores))
}

// ---------------------------------------------------------------------------- thumbnails

/// The FLAIR (or first) image of a case and its channel.
fn thumbnail_image(case: &CaseSource) -> Option<(PathBuf, usize)> {
    match &case.files {
        CaseFiles::Separate { images, .. } => Some((images[0].clone(), 0)),
        CaseFiles::Msd4d { image, .. } => Some((image.clone(), msd_frame(Modality::Flair))),
    }
}

async fn thumbnail(
    state: &AppState,
    image: (PathBuf, usize),
    labels: Option<(PathBuf, LabelConvention)>,
) -> Result<Response> {
    let volume = state
        .volumes
        .get(&image.0)
        .await
        .map_err(Error::Unprocessable)?;
    let labels = match labels {
        Some((path, convention)) => Some((
            state
                .volumes
                .get(&path)
                .await
                .map_err(Error::Unprocessable)?,
            convention,
        )),
        None => None,
    };
    let bytes = tokio::task::spawn_blocking(move || {
        let index = labels.as_ref().map_or(volume.shape3()[2] / 2, |(l, _)| {
            volume::most_labelled_axial_slice(l)
        });
        volume::render_thumbnail(
            &volume,
            image.1,
            labels.as_ref().map(|(l, c)| (l.as_ref(), *c)),
            index,
        )
    })
    .await
    .map_err(anyhow::Error::from)?
    .map_err(Error::Unprocessable)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

async fn case_thumbnail(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Response> {
    let dataset = db::dataset(&state.pool, id).await?;
    let source = dataset_case(&dataset, &case)?;
    let image = thumbnail_image(&source)
        .ok_or_else(|| Error::NotFound(format!("an image of case {case}")))?;
    let labels = source
        .label_path()
        .map(|p| (p.clone(), case_convention(&source)));
    thumbnail(&state, image, labels).await
}

/// A test case with its saved prediction over the FLAIR (the ground truth when none was saved).
async fn test_case_thumbnail(
    State(state): State<AppState>,
    Path((id, case)): Path<(i64, String)>,
) -> Result<Response> {
    let (job, dataset, test) = test_case(&state, id, &case).await?;
    let source = dataset_case(&dataset, &case)?;
    let image = thumbnail_image(&source)
        .ok_or_else(|| Error::NotFound(format!("an image of case {case}")))?;
    let labels = if test.prediction_saved {
        Some((
            RunDir::new(&job.out_dir).test_prediction(&case),
            LabelConvention::Brats,
        ))
    } else {
        source
            .label_path()
            .map(|p| (p.clone(), case_convention(&source)))
    };
    thumbnail(&state, image, labels).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn labels(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> volume::Volume {
        volume::Volume {
            data: ArrayD::from_shape_fn(IxDyn(&shape), |i| f(i[0], i[1], i[2])),
            spacing: [1.0, 1.0, 1.0],
            windows: vec![(0.0, 1.0)],
        }
    }

    #[test]
    fn a_prediction_equal_to_its_truth_scores_dice_one_and_hd95_zero() {
        let truth = labels([8, 8, 8], |x, y, z| {
            if (2..6).contains(&x) && (2..6).contains(&y) && (2..6).contains(&z) {
                if x < 4 {
                    4.0
                } else {
                    2.0
                }
            } else {
                0.0
            }
        });
        let same = labels([8, 8, 8], |x, y, z| truth.data[IxDyn(&[x, y, z])]);
        let scores = score_against_truth(&same, &truth, LabelConvention::Brats).unwrap();
        assert_eq!(scores.dice.wt, 1.0);
        assert_eq!(scores.dice.et, 1.0);
        assert_eq!(scores.hd95.wt, 0.0);
    }

    #[test]
    fn msd_truth_is_read_in_its_own_numbering() {
        // MSD 3 (enhancing) is BraTS 4; MSD 1 (oedema) is BraTS 2.
        let truth = labels([4, 4, 4], |x, _, _| [0.0, 3.0, 1.0, 0.0][x]);
        let prediction = labels([4, 4, 4], |x, _, _| [0.0, 4.0, 2.0, 0.0][x]);
        let scores = score_against_truth(&prediction, &truth, LabelConvention::Msd).unwrap();
        assert_eq!(scores.dice.et, 1.0);
        assert_eq!(scores.dice.wt, 1.0);
        let shifted = labels([4, 4, 4], |x, _, _| [0.0, 2.0, 4.0, 0.0][x]);
        let worse = score_against_truth(&shifted, &truth, LabelConvention::Msd).unwrap();
        assert_eq!(worse.dice.et, 0.0);
        assert!(score_against_truth(
            &labels([4, 4, 2], |_, _, _| 0.0),
            &truth,
            LabelConvention::Msd
        )
        .is_err());
    }

    #[test]
    fn volumes_over_the_limit_are_refused_with_the_reason() {
        assert!(too_large(&[240, 240, 155]).is_none());
        let message = too_large(&[1024, 1024, 512]).unwrap();
        assert!(message.contains("server-rendered slices"), "{message}");
    }
}
