//! Studies (uploaded MRI scans to segment), predictions (inference jobs) and the viewer's slices.

use super::jobs::{insert_job, job_view, JobView};
use super::save_upload;
use crate::db::{self, JobKind, JobState, Study};
use crate::error::{Error, Result};
use crate::inspect::{check_upload, CheckedUpload, MODALITIES};
use crate::provenance::PredictionSource;
use crate::volume::{self, Plane, RegionVolumes};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studies", get(list).post(upload))
        .route("/studies/{id}", get(show))
        .route("/studies/{id}/slice", get(study_slice))
        .route("/predictions", get(list_predictions).post(predict))
        .route("/predictions/{id}", get(show_prediction))
        .route("/predictions/{id}/seg.nii.gz", get(download_seg))
        .route("/predictions/{id}/slice", get(label_slice))
}

#[derive(Debug, Serialize)]
pub struct StudyView {
    #[serde(flatten)]
    pub study: Study,
    /// modality (or "4d") -> stored file name
    pub files: BTreeMap<String, String>,
    pub shape: Vec<usize>,
    pub modalities: Vec<String>,
}

impl From<Study> for StudyView {
    fn from(study: Study) -> Self {
        let files: BTreeMap<String, String> =
            serde_json::from_str(&study.files).unwrap_or_default();
        let shape = serde_json::from_str(&study.shape).unwrap_or_default();
        Self {
            files,
            shape,
            modalities: MODALITIES.iter().map(|m| m.to_string()).collect(),
            study,
        }
    }
}

impl StudyView {
    /// The file and channel that hold `modality`.
    pub(crate) fn source(&self, modality: &str) -> Option<(PathBuf, usize)> {
        let dir = PathBuf::from(&self.study.dir);
        if let Some(file) = self.files.get("4d") {
            // MSD channel order: FLAIR, T1w, T1gd, T2w.
            let channel = ["flair", "t1", "t1ce", "t2"]
                .iter()
                .position(|m| *m == modality)?;
            return Some((dir.join(file), channel));
        }
        self.files.get(modality).map(|f| (dir.join(f), 0))
    }

    /// `--case` arguments for `cggm infer`.
    fn case_paths(&self) -> Vec<String> {
        let dir = PathBuf::from(&self.study.dir);
        match self.files.get("4d") {
            Some(file) => vec![dir.join(file).display().to_string()],
            None => MODALITIES
                .iter()
                .filter_map(|m| self.files.get(*m))
                .map(|f| dir.join(f).display().to_string())
                .collect(),
        }
    }
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<StudyView>>> {
    Ok(Json(
        db::studies(&state.pool)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

async fn show(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<StudyView>> {
    Ok(Json(db::study(&state.pool, id).await?.into()))
}

/// Four modality files (named `*_flair.nii.gz` ... or sent in fields `flair`, `t1ce`, `t1`, `t2`)
/// or one 4-D MSD file; optional text field `name`.
async fn upload(
    State(state): State<AppState>,
    multipart: Multipart,
) -> Result<(StatusCode, Json<StudyView>)> {
    let upload = save_upload(&state, multipart).await?;
    let checked = check_study_files(&state, upload.files.clone()).await?;
    let name = upload
        .fields
        .get("name")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let first = &checked.files[*checked.roles.values().next().unwrap_or(&0)].file_name;
            first
                .split(['_', '.'])
                .next()
                .unwrap_or("study")
                .to_string()
        });
    let staged = upload.dir.keep();
    let id = store_study(&state, &name, &checked, staged).await?;
    Ok((
        StatusCode::CREATED,
        Json(db::study(&state.pool, id).await?.into()),
    ))
}

/// [`check_upload`] of a study's files (no label needed) in a decode slot, off the async runtime;
/// 422 with the reason.
pub(crate) async fn check_study_files(
    state: &AppState,
    files: Vec<crate::inspect::UploadedFile>,
) -> Result<CheckedUpload> {
    let _slot = state.volumes.decode_slot().await;
    tokio::task::spawn_blocking(move || check_upload(files, false))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| Error::Unprocessable(e.to_string()))
}

/// Records a checked study and moves its folder `staged` (on the data directory's file system)
/// into place; the database row commits only after the move, and the folder is removed on failure.
pub(crate) async fn store_study(
    state: &AppState,
    name: &str,
    checked: &CheckedUpload,
    staged: PathBuf,
) -> Result<i64> {
    let files: BTreeMap<&String, &String> = checked
        .roles
        .iter()
        .map(|(role, i)| (role, &checked.files[*i].file_name))
        .collect();
    let mut tx = state.pool.begin().await?;
    let id = sqlx::query(
        "INSERT INTO studies (name, dir, files, shape, created_at) VALUES (?, '', ?, ?, ?)",
    )
    .bind(name)
    .bind(serde_json::to_string(&files).map_err(anyhow::Error::from)?)
    .bind(serde_json::to_string(&checked.shape).map_err(anyhow::Error::from)?)
    .bind(db::now())
    .execute(&mut *tx)
    .await?
    .last_insert_rowid();
    let target = state.data_dir().join("studies").join(format!("study-{id}"));
    sqlx::query("UPDATE studies SET dir = ? WHERE id = ?")
        .bind(target.display().to_string())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Only a checked upload reaches its final place.
    if let Err(e) = std::fs::rename(&staged, &target) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e.into());
    }
    tx.commit().await?;
    Ok(id)
}

/// Renders one slice of a cached volume as a PNG response, off the async runtime; the index
/// defaults to the middle slice of the plane.
async fn render_png(
    state: &AppState,
    path: &std::path::Path,
    q: &SliceQuery,
    render: impl FnOnce(&volume::Volume, Plane, usize) -> Result<Vec<u8>, volume::VolumeError>
        + Send
        + 'static,
) -> Result<Response> {
    let volume = state
        .volumes
        .get(path)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    let plane = q.plane;
    let index = q.index.unwrap_or(plane.depth(volume.shape3()) / 2);
    let bytes = tokio::task::spawn_blocking(move || render(&volume, plane, index))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    Ok(png(bytes))
}

#[derive(Debug, Deserialize)]
pub struct SliceQuery {
    #[serde(default = "axial")]
    pub plane: Plane,
    pub index: Option<usize>,
    pub modality: Option<String>,
    /// Comma-separated labels to show (default 1,2,4).
    pub labels: Option<String>,
}

fn axial() -> Plane {
    Plane::Axial
}

fn png(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            // Patient data: never kept by the browser or a proxy.
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

async fn study_slice(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<SliceQuery>,
) -> Result<Response> {
    let study: StudyView = db::study(&state.pool, id).await?.into();
    let modality = q.modality.as_deref().unwrap_or("flair");
    let (path, channel) = study.source(modality).ok_or_else(|| {
        Error::BadRequest(format!(
            "unknown modality {modality:?}; use flair, t1ce, t1 or t2"
        ))
    })?;
    render_png(&state, &path, &q, move |v, plane, index| {
        volume::render_slice(v, plane, index, channel)
    })
    .await
}

#[derive(Debug, Deserialize, Serialize)]
pub struct PredictRequest {
    pub study_id: i64,
    /// The training job whose checkpoint to use.
    pub checkpoint_job_id: i64,
    pub device: Option<String>,
}

async fn predict(
    State(state): State<AppState>,
    Json(request): Json<PredictRequest>,
) -> Result<(StatusCode, Json<JobView>)> {
    let study: StudyView = db::study(&state.pool, request.study_id).await?.into();
    let id = queue_prediction(
        &state,
        &study,
        Some(study.study.id),
        request.checkpoint_job_id,
        request.device,
    )
    .await?;
    let job = db::job(&state.pool, id).await?;
    Ok((StatusCode::CREATED, Json(job_view(&state, job).await?)))
}

/// Queues `cggm infer` of `study` with the checkpoint of the training job `checkpoint_job_id`
/// (422 when it left none); the prediction's job id. `study_id` links the prediction to a stored
/// study (`None` for images that are not stored studies, such as MONAI Label sessions).
pub(crate) async fn queue_prediction(
    state: &AppState,
    study: &StudyView,
    study_id: Option<i64>,
    checkpoint_job_id: i64,
    device: Option<String>,
) -> Result<i64> {
    if let Some(device) = &device {
        super::jobs::check_device(state, device)?;
    }
    let run = db::job(&state.pool, checkpoint_job_id).await?;
    let run_dir = PathBuf::from(&run.out_dir);
    let chosen = (run.kind == JobKind::Train)
        .then(|| crate::provenance::chosen_checkpoint(&run.run_dir()))
        .flatten();
    let Some(chosen) = chosen else {
        return Err(Error::Unprocessable(format!(
            "job {} has no checkpoint (is it a finished training run?)",
            run.id
        )));
    };
    let mut params = serde_json::json!({
        "checkpoint": run_dir.display().to_string(),
        "cases": study.case_paths(),
        "device": device,
        "study": study.study.name,
    });
    // Which checkpoint `cggm infer` will read, so the prediction can name it later.
    chosen.record(&mut params);
    let id = insert_job(
        state,
        JobKind::Infer,
        &params,
        run.dataset_id,
        study_id,
        Some(run.id),
    )
    .await?;
    state.runner.enqueue(id);
    Ok(id)
}

#[derive(Debug, Serialize)]
pub struct PredictionView {
    #[serde(flatten)]
    pub job: JobView,
    pub study: Option<StudyView>,
    /// Present once the segmentation exists.
    pub volumes: Option<RegionVolumes>,
    pub seg_url: Option<String>,
    /// Present once the segmentation exists, for a study imported from DICOM.
    pub dicom_seg_url: Option<String>,
    /// The run, checkpoint and method the prediction came from.
    pub source: Option<PredictionSource>,
}

/// Region volumes of a finished segmentation: computed once (one decode) and kept beside it in
/// `volumes.json`; listing predictions reads only those files (`decode: false`).
async fn region_volumes_of(
    state: &AppState,
    seg: &std::path::Path,
    decode: bool,
) -> Option<RegionVolumes> {
    let stored = seg.with_file_name("volumes.json");
    if let Some(volumes) = std::fs::read_to_string(&stored)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
    {
        return Some(volumes);
    }
    if !decode {
        return None;
    }
    let decoded = state.volumes.get(seg).await.ok()?;
    let volumes = volume::region_volumes(&decoded);
    if let Ok(text) = serde_json::to_string(&volumes) {
        let _ = std::fs::write(&stored, text);
    }
    Some(volumes)
}

async fn prediction_view(state: &AppState, id: i64) -> Result<PredictionView> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Infer {
        return Err(Error::NotFound(format!("prediction {id}")));
    }
    let source = PredictionSource::of(&state.pool, &job).await;
    prediction_view_of(state, job, source, true).await
}

/// The view of prediction `job` (an inference job) whose source is already read.
async fn prediction_view_of(
    state: &AppState,
    job: db::Job,
    source: Option<PredictionSource>,
    decode: bool,
) -> Result<PredictionView> {
    let id = job.id;
    let study: Option<StudyView> = match job.study_id {
        Some(s) => db::study(&state.pool, s).await.ok().map(Into::into),
        None => None,
    };
    let seg = PathBuf::from(&job.out_dir).join("seg.nii.gz");
    let finished = seg.is_file() && job.state == JobState::Succeeded;
    let volumes = if finished {
        region_volumes_of(state, &seg, decode).await
    } else {
        None
    };
    let seg_url = finished.then(|| format!("/api/predictions/{id}/seg.nii.gz"));
    let has_dicom = super::dicom_seg::reference_series(study.as_ref().map(|s| &s.study)).is_ok();
    let dicom_seg_url = (finished && has_dicom).then(|| format!("/api/predictions/{id}/dicom-seg"));
    Ok(PredictionView {
        source,
        job: job_view(state, job).await?,
        study,
        volumes,
        seg_url,
        dicom_seg_url,
    })
}

/// Every prediction, newest first; their runs are read in one query.
pub async fn list_predictions(State(state): State<AppState>) -> Result<Json<Vec<PredictionView>>> {
    let jobs = db::jobs(&state.pool, Some(JobKind::Infer)).await?;
    let sources = PredictionSource::of_all(&state.pool, &jobs).await?;
    let mut out = Vec::new();
    for (job, source) in jobs.into_iter().zip(sources) {
        out.push(prediction_view_of(&state, job, source, false).await?);
    }
    Ok(Json(out))
}

async fn show_prediction(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<PredictionView>> {
    Ok(Json(prediction_view(&state, id).await?))
}

async fn download_seg(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let job = db::job(&state.pool, id).await?;
    let path = job.segmentation()?;
    let study = job.params_json()["study"]
        .as_str()
        .unwrap_or("case")
        .to_string();
    // The file names the run it came from, as the DICOM SEG download does.
    let stem = match job.checkpoint_job_id {
        Some(run) => format!("{study}-run{run}"),
        None => study,
    };
    let file = tokio::fs::File::open(&path).await?;
    let body = Body::from_stream(file_stream(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    crate::security::download_name(&stem, "_seg.nii.gz")
                ),
            ),
        ],
        body,
    )
        .into_response())
}

/// A file as a stream of chunks (without pulling in tokio-util for one use).
pub(crate) fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    // Fused: the gzip layer polls once more after the end, which a bare `unfold` answers with a
    // panic (and a truncated response) for every plain .nii it compresses.
    futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
    .fuse()
}

async fn label_slice(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<SliceQuery>,
) -> Result<Response> {
    let job = db::job(&state.pool, id).await?;
    let path = job.segmentation()?;
    let shown: Vec<u8> = match &q.labels {
        Some(text) => text
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        None => vec![1, 2, 4],
    };
    render_png(&state, &path, &q, move |v, plane, index| {
        volume::render_labels(v, plane, index, &shown)
    })
    .await
}
