//! A study's label versions over HTTP: the viewer saves a corrected label here (a new version of
//! the ground truth; the old ones stay), lists who saved which version when, and downloads any.

use super::save_upload;
use crate::db;
use crate::error::{Error, Result};
use crate::inspect::nifti_extension;
use crate::labels::{self, GROUND_TRUTH_TAG};
use crate::AppState;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studies/{id}/labels", get(list).post(save))
        .route("/studies/{id}/labels/{version}", get(download))
}

#[derive(Debug, Serialize)]
struct LabelHistory {
    /// Where the study's ground truth comes from now: `uploaded`, `final-v<N>`, or null.
    truth: Option<String>,
    /// Every saved version, oldest first, with its download URL.
    versions: Vec<VersionView>,
}

#[derive(Debug, Serialize)]
struct VersionView {
    #[serde(flatten)]
    version: labels::LabelVersion,
    url: String,
}

/// `GET /api/studies/{id}/labels`
async fn list(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<LabelHistory>> {
    let study = db::study(&state.pool, id).await?;
    let truth = labels::ground_truth(&state.pool, &study).await?;
    let versions = labels::versions(&state.pool, id)
        .await?
        .into_iter()
        .map(|v| VersionView {
            url: if v.tag == GROUND_TRUTH_TAG {
                format!("/api/studies/{id}/labels/{}", v.version)
            } else {
                format!(
                    "/monailabel/datastore/label?image=study-{id}&tag={}&version={}",
                    v.tag, v.version
                )
            },
            version: v,
        })
        .collect();
    Ok(Json(LabelHistory {
        truth: truth.map(|t| t.key()),
        versions,
    }))
}

#[derive(Debug, Serialize)]
struct Saved {
    study_id: i64,
    tag: &'static str,
    version: i64,
    url: String,
}

/// `POST /api/studies/{id}/labels` (multipart: the NIfTI in `label`, the saver's name in
/// `author`): stores it as the next version of the study's ground truth.
async fn save(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    multipart: Multipart,
) -> Result<(StatusCode, Json<Saved>)> {
    let study = db::study(&state.pool, id).await?;
    let upload = save_upload(&state, multipart).await?;
    let file = labels::the_label_file(&upload.files)?;
    let author = upload.fields.get("author").map(String::as_str);
    let version = labels::store(&state, &study, GROUND_TRUTH_TAG, file, author).await?;
    tracing::info!(study = id, version, "corrected label saved");
    Ok((
        StatusCode::CREATED,
        Json(Saved {
            study_id: id,
            tag: GROUND_TRUTH_TAG,
            version,
            url: format!("/api/studies/{id}/labels/{version}"),
        }),
    ))
}

/// `GET /api/studies/{id}/labels/{version}`: a saved ground-truth version as a download;
/// version 0 is the label uploaded with the study.
async fn download(
    State(state): State<AppState>,
    Path((id, version)): Path<(i64, i64)>,
) -> Result<Response> {
    let study = db::study(&state.pool, id).await?;
    let path = if version == 0 {
        uploaded_label(&study)?
    } else {
        let stored = labels::version(&state.pool, id, GROUND_TRUTH_TAG, Some(version))
            .await?
            .ok_or_else(|| Error::NotFound(format!("label version {version} of study {id}")))?;
        labels::version_path(&study, &stored)
    };
    let suffix = format!("_label-v{version}{}", nifti_extension(&path));
    super::download_response(&path, &crate::security::download_name(&study.name, &suffix)).await
}

fn uploaded_label(study: &db::Study) -> Result<std::path::PathBuf> {
    let files: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&study.files).unwrap_or_default();
    files
        .get("seg")
        .map(|f| std::path::PathBuf::from(&study.dir).join(f))
        .ok_or_else(|| Error::NotFound(format!("an uploaded label of study {}", study.id)))
}
