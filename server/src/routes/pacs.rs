//! The PACS through DICOMweb: `GET /api/pacs/studies` (a QIDO-RS search), `GET
//! /api/pacs/studies/{uid}/series`, and `POST /api/pacs/studies/{uid}/import`, which retrieves the
//! four chosen series (WADO-RS) and makes a study of them exactly as the DICOM upload does (the
//! same checks, dcm2niix, the same study checks); `POST /api/predictions/{id}/pacs` sends a
//! finished segmentation back as a DICOM Segmentation object (STOW-RS). Without `--pacs` each
//! answers 503 with the fix.

use super::dicom::study_from_series;
use super::studies::StudyView;
use crate::db;
use crate::error::{Error, Result};
use crate::inspect::MODALITIES;
use crate::pacs::model::{SeriesSummary, StudySummary};
use crate::pacs::{client::check_uid, DicomWebClient, PacsError, StudyQuery, NOT_CONFIGURED};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/pacs", get(status))
        .route("/pacs/studies", get(studies))
        .route("/pacs/studies/{uid}/series", get(series))
        .route("/pacs/studies/{uid}/import", post(import))
        .route("/predictions/{id}/pacs", post(send_prediction))
}

impl From<PacsError> for Error {
    fn from(e: PacsError) -> Self {
        match e {
            PacsError::Unreachable { .. } => Error::Unavailable(e.to_string()),
            PacsError::Status { .. } | PacsError::Invalid { .. } => {
                Error::BadGateway(e.to_string())
            }
            PacsError::Refused(message) => Error::Unprocessable(message),
        }
    }
}

/// The configured PACS's client, or 503 saying how to configure one.
pub(crate) fn client(state: &AppState) -> Result<DicomWebClient> {
    let settings = state
        .config
        .pacs
        .clone()
        .ok_or_else(|| Error::Unavailable(NOT_CONFIGURED.to_string()))?;
    Ok(DicomWebClient::new(settings)?)
}

/// `GET /api/pacs`: whether a PACS is configured, and where (the page's first question).
async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(match &state.config.pacs {
        Some(pacs) => serde_json::json!({ "configured": true, "url": pacs.root }),
        None => serde_json::json!({ "configured": false, "how": NOT_CONFIGURED }),
    })
}

async fn studies(
    State(state): State<AppState>,
    Query(query): Query<StudyQuery>,
) -> Result<Json<Vec<StudySummary>>> {
    Ok(Json(client(&state)?.studies(&query).await?))
}

async fn series(
    State(state): State<AppState>,
    Path(uid): Path<String>,
) -> Result<Json<Vec<SeriesSummary>>> {
    Ok(Json(client(&state)?.series(&uid).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    /// modality (flair, t1ce, t1, t2) -> SeriesInstanceUID
    series: BTreeMap<String, String>,
    name: Option<String>,
}

#[derive(Debug, Serialize)]
struct Imported {
    study_id: i64,
    study: StudyView,
    pacs_url: String,
    study_uid: String,
}

/// The four series of `request`, in the project's modality order, or 422 naming what is wrong.
fn chosen_series(
    request: &ImportRequest,
    available: &[SeriesSummary],
    study_uid: &str,
) -> Result<Vec<(&'static str, String)>> {
    if let Some(other) = request
        .series
        .keys()
        .find(|k| !MODALITIES.contains(&k.as_str()))
    {
        return Err(Error::Unprocessable(format!(
            "series given for {other:?}: the modalities are flair, t1ce, t1 and t2"
        )));
    }
    let missing: Vec<&str> = MODALITIES
        .iter()
        .copied()
        .filter(|m| request.series.get(*m).is_none_or(|s| s.trim().is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Unprocessable(format!(
            "no series chosen for {}: choose one series each for flair, t1ce, t1 and t2",
            missing.join(", ")
        )));
    }
    let mut chosen: Vec<(&'static str, String)> = Vec::new();
    for modality in MODALITIES {
        let uid = request.series[modality].trim().to_string();
        check_uid(modality, &uid)?;
        if let Some((other, _)) = chosen.iter().find(|(_, u)| *u == uid) {
            return Err(Error::Unprocessable(format!(
                "{other} and {modality} are the same series ({uid}); choose a different series \
                 for each modality"
            )));
        }
        if !available.iter().any(|s| s.series_uid == uid) {
            return Err(Error::Unprocessable(format!(
                "{modality}: series {uid} is not a series of study {study_uid} at the PACS; \
                 choose one of the study's series"
            )));
        }
        chosen.push((modality, uid));
    }
    Ok(chosen)
}

/// Retrieves one series into `folder` and checks its files like an uploaded series; errors
/// name the modality.
async fn retrieve_checked(
    pacs: &DicomWebClient,
    study_uid: &str,
    modality: &'static str,
    series_uid: &str,
    folder: &std::path::Path,
) -> Result<()> {
    pacs.retrieve_series(study_uid, series_uid, folder)
        .await
        .map_err(|e| match Error::from(e) {
            Error::Unprocessable(m) => Error::Unprocessable(format!("{modality}: {m}")),
            other => other,
        })?;
    let checked = folder.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let display = |path: &std::path::Path| {
            path.file_name()
                .map(|n| format!("instance {}", n.to_string_lossy()))
                .unwrap_or_default()
        };
        crate::dicom::check_dicom_files(modality, &checked, &display)
    })
    .await
    .map_err(anyhow::Error::from)??;
    Ok(())
}

/// Records where study `id` came from: the PACS, the study and each modality's series.
async fn record_import(
    state: &AppState,
    id: i64,
    pacs_url: &str,
    study_uid: &str,
    chosen: &[(&'static str, String)],
) -> Result<()> {
    let series: BTreeMap<&str, &str> = chosen.iter().map(|(m, uid)| (*m, uid.as_str())).collect();
    sqlx::query(
        "INSERT INTO pacs_imports (study_id, pacs_url, study_uid, series, imported_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(pacs_url)
    .bind(study_uid)
    .bind(serde_json::to_string(&series).map_err(anyhow::Error::from)?)
    .bind(db::now())
    .execute(&state.pool)
    .await?;
    Ok(())
}

/// Retrieves the chosen series into a temporary folder of the data directory, checks each like an
/// uploaded series and imports them like the DICOM upload; 201 with the new study.
async fn import(
    State(state): State<AppState>,
    Path(study_uid): Path<String>,
    Json(request): Json<ImportRequest>,
) -> Result<(StatusCode, Json<Imported>)> {
    let pacs = client(&state)?;
    check_uid("study", &study_uid)?;
    let name = crate::limits::check_name("name", request.name.as_deref().unwrap_or("PACS import"))?;
    let name = if name.is_empty() {
        "PACS import".to_string()
    } else {
        name
    };
    let available = pacs.series(&study_uid).await?;
    let chosen = chosen_series(&request, &available, &study_uid)?;
    let work = state.temp_dir()?;
    let mut inputs = Vec::new();
    for (modality, series_uid) in &chosen {
        let folder = work.path().join("series").join(modality);
        retrieve_checked(&pacs, &study_uid, modality, series_uid, &folder).await?;
        inputs.push((*modality, folder));
    }
    let id = {
        let _slot = state.volumes.decode_slot().await;
        study_from_series(&state, work.path(), inputs, &name).await?
    };
    record_import(&state, id, pacs.root(), &study_uid, &chosen).await?;
    drop(work);
    Ok((
        StatusCode::CREATED,
        Json(Imported {
            study_id: id,
            study: db::study(&state.pool, id).await?.into(),
            pacs_url: pacs.root().to_string(),
            study_uid,
        }),
    ))
}

#[derive(Debug, Serialize)]
struct Sent {
    sop_instance_uid: String,
    pacs_url: String,
    /// The PACS study the segmentation belongs to, when the study was imported from this page.
    study_uid: Option<String>,
}

/// Writes the prediction as a DICOM SEG (`crate::dicom_seg`, referring to the series the study was
/// imported from) and stores it at the PACS with STOW-RS; its SOP Instance UID. 409 for a study
/// uploaded as NIfTI (a SEG needs the DICOM series it refers to).
async fn send_prediction(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Sent>> {
    let pacs = client(&state)?;
    let super::dicom_seg::PredictionSeg { bytes, job, .. } =
        super::dicom_seg::prediction_seg(&state, id).await?;
    let stored = pacs.store(&[bytes]).await?;
    let study_uid: Option<(String,)> =
        sqlx::query_as("SELECT study_uid FROM pacs_imports WHERE study_id = ?")
            .bind(job.study_id)
            .fetch_optional(&state.pool)
            .await?;
    Ok(Json(Sent {
        sop_instance_uid: stored.into_iter().next().unwrap_or_default(),
        pacs_url: pacs.root().to_string(),
        study_uid: study_uid.map(|(uid,)| uid),
    }))
}
