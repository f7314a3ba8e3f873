//! `GET /api/predictions/N/dicom-seg`: a finished prediction of a study imported from DICOM, as a
//! DICOM Segmentation object referring to the study's kept series (`crate::dicom_seg`).

use crate::db;
use crate::dicom_seg::{self, SegmentationSource};
use crate::error::{Error, Result};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;

pub fn router() -> Router<AppState> {
    Router::new().route("/predictions/{id}/dicom-seg", get(download))
}

/// Why a prediction can have no DICOM SEG (answered 409).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoReferenceSeries {
    #[error(
        "this prediction belongs to no stored study: a DICOM SEG needs the DICOM \
                    series it refers to; import the study from DICOM and segment it"
    )]
    NoStudy,
    #[error(
        "this study was uploaded as NIfTI: a DICOM SEG needs the DICOM series it refers to; \
         import the study from DICOM (the Segment page, or POST /api/studies/dicom) and segment \
         it"
    )]
    Nifti,
}

/// The series a SEG of the prediction of `study` refers to, or why it can have none.
pub(crate) fn reference_series(study: Option<&db::Study>) -> Result<PathBuf, NoReferenceSeries> {
    let study = study.ok_or(NoReferenceSeries::NoStudy)?;
    dicom_seg::reference_series_of(std::path::Path::new(&study.dir)).ok_or(NoReferenceSeries::Nifti)
}

/// A prediction written as a DICOM SEG, with the job, study and run it came from (for names).
pub(crate) struct PredictionSeg {
    pub bytes: Vec<u8>,
    pub job: db::Job,
    pub study: Option<db::Study>,
    pub run: Option<db::Job>,
}

/// Prediction `id` as a DICOM SEG referring to the series its study was imported from: 409 for
/// a study uploaded as NIfTI, 422 when the prediction does not fit that series. The download and
/// the PACS's STOW both send this.
pub(crate) async fn prediction_seg(state: &AppState, id: i64) -> Result<PredictionSeg> {
    let job = db::job(&state.pool, id).await?;
    let prediction = job.segmentation()?;
    let study = match job.study_id {
        Some(s) => Some(db::study(&state.pool, s).await?),
        None => None,
    };
    let series = reference_series(study.as_ref()).map_err(|e| Error::Conflict(e.to_string()))?;
    let run = match job.checkpoint_job_id {
        Some(run) => db::job(&state.pool, run).await.ok(),
        None => None,
    };
    // The segment's algorithm names the run, its method and the checkpoint used.
    let algorithm = crate::provenance::PredictionSource::new(&job, run.as_ref())
        .map_or_else(|| "CGGM Studio".to_string(), |s| s.algorithm());
    // Decoding the prediction and encoding every frame: one of the bounded decode slots, off the
    // async runtime.
    let bytes = {
        let _slot = state.volumes.decode_slot().await;
        tokio::task::spawn_blocking(move || {
            dicom_seg::write_segmentation(&SegmentationSource {
                prediction: &prediction,
                reference_series: &series,
                algorithm: &algorithm,
            })
        })
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| Error::Unprocessable(e.to_string()))?
    };
    Ok(PredictionSeg {
        bytes,
        job,
        study,
        run,
    })
}

async fn download(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response> {
    let PredictionSeg {
        bytes, study, run, ..
    } = prediction_seg(&state, id).await?;
    let stem = format!(
        "{}-run{}",
        study.as_ref().map(|s| s.name.as_str()).unwrap_or("study"),
        run.as_ref().map(|r| r.id).unwrap_or_default()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/dicom".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    crate::security::download_name(&stem, "-seg.dcm")
                ),
            ),
            // Patient data: never kept by the browser or a proxy.
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}
