//! HTTP routes. Each module exposes its own `router()`; [`api_router`] merges the JSON API.

pub mod comparisons;
pub mod datasets;
pub mod deletion;
pub mod dicom;
pub mod dicom_seg;
pub mod jobs;
pub mod labels;
pub mod monailabel;
pub mod pacs;
pub mod pages;
pub mod studies;
pub mod viewer;
pub mod viewer_pages;

use crate::error::{Error, Result};
use crate::inspect::{safe_name, UploadedFile};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap;
use tokio::io::AsyncWriteExt;

pub fn api_router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/options", get(options))
        .merge(datasets::router())
        .merge(jobs::router())
        .merge(studies::router())
        .merge(labels::router())
        .merge(dicom::router())
        .merge(pacs::router())
        .merge(dicom_seg::router())
        .merge(deletion::router())
        .merge(comparisons::router())
        .merge(viewer::router())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// The choices of a segmentation run, as flat lists (kept for scripts written against it;
/// `GET /api/vocabulary` has everything, per task).
async fn options(State(state): State<AppState>) -> Json<serde_json::Value> {
    let v = cggm_core::request::Vocabulary::current(state.config.cuda_devices);
    let mut methods: Vec<String> = v.methods.iter().map(|m| m.name.clone()).collect();
    let segmentation = cggm_core::task::TaskKind::Segmentation;
    for m in v.modalities.get(segmentation.name()).into_iter().flatten() {
        methods.push(format!("{}{m}", v.unimodal_prefix));
    }
    let presets: Vec<&str> = v
        .presets
        .iter()
        .filter(|p| p.task == segmentation)
        .map(|p| p.name.as_str())
        .collect();
    Json(serde_json::json!({ "methods": methods, "presets": presets, "devices": v.devices }))
}

/// An upload saved to a temporary folder: the files and the plain text fields.
pub struct SavedUpload {
    pub dir: tempfile::TempDir,
    pub files: Vec<UploadedFile>,
    pub fields: HashMap<String, String>,
}

/// Streams every file of a multipart request into a fresh temporary folder under the data
/// directory. Nothing stored is touched; the caller renames the folder into place once the
/// content is checked, and the folder disappears on any error. At most
/// [`MAX_UPLOAD_PARTS`](crate::limits::MAX_UPLOAD_PARTS) parts; text fields are read within
/// their limits, never whole first.
pub async fn save_upload(state: &AppState, mut multipart: Multipart) -> Result<SavedUpload> {
    let dir = state.temp_dir()?;
    let mut files = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut fields = HashMap::new();
    let mut parts = 0;
    while let Some(mut field) = multipart.next_field().await? {
        parts += 1;
        check_part_count(parts, crate::limits::MAX_UPLOAD_PARTS)?;
        let name = field.name().unwrap_or_default().to_string();
        let Some(file_name) = field.file_name().map(str::to_string) else {
            let text = read_text(&mut field).await?;
            fields.insert(name, text);
            continue;
        };
        // Browsers may send a path; only its last component is a file name.
        let base = file_name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or_default()
            .to_string();
        let base = safe_name(&base).map_err(|e| Error::Unprocessable(format!("file name: {e}")))?;
        // A label sent in its own field may share its image's name (MSD: imagesTr/X.nii.gz and
        // labelsTr/X.nii.gz): it is kept under a name of its own.
        let base = if matches!(name.as_str(), "seg" | "label") {
            format!("label-{base}")
        } else {
            base
        };
        if !names.insert(base.clone()) {
            return Err(Error::Unprocessable(format!("{base}: sent twice")));
        }
        let path = dir.path().join(&base);
        write_field(&mut field, &path).await?;
        files.push(UploadedFile {
            file_name: base,
            field: name,
            path,
        });
    }
    Ok(SavedUpload { dir, files, fields })
}

/// Refuses the `count`th part of a multipart request past `max` (422, before it is read).
pub fn check_part_count(count: usize, max: usize) -> Result<()> {
    if count > max {
        return Err(Error::Unprocessable(format!(
            "the upload has more than {max} parts, the most one request may send; send fewer \
             files per request"
        )));
    }
    Ok(())
}

/// A multipart text field: a `name` is at most [`MAX_NAME_CHARS`](crate::limits::MAX_NAME_CHARS)
/// characters (422), any other text field at most
/// [`MAX_TEXT_FIELD_BYTES`](crate::limits::MAX_TEXT_FIELD_BYTES) (413), each refused as soon as
/// it passes its limit.
pub async fn read_text(field: &mut axum::extract::multipart::Field<'_>) -> Result<String> {
    use crate::limits::{read_text_field, MAX_NAME_CHARS, MAX_TEXT_FIELD_BYTES};
    if field.name() == Some("name") {
        // UTF-8 takes at most 4 bytes a character; the character count is checked after.
        let text = read_text_field(field, MAX_NAME_CHARS * 4)
            .await
            .map_err(|e| match e {
                Error::PayloadTooLarge(_) => Error::Unprocessable(format!(
                    "name is longer than {MAX_NAME_CHARS} characters; use a shorter name"
                )),
                other => other,
            })?;
        return crate::limits::check_name("name", &text);
    }
    read_text_field(field, MAX_TEXT_FIELD_BYTES).await
}

/// Streams one multipart file field into `path` (a stalled one ends through the body's idle
/// timeout, see `crate::limits`).
pub async fn write_field(
    field: &mut axum::extract::multipart::Field<'_>,
    path: &std::path::Path,
) -> Result<()> {
    let mut out = tokio::fs::File::create(path).await?;
    while let Some(chunk) = field.chunk().await? {
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    Ok(())
}

/// Parses `?ids=1,2,3`-style lists.
pub fn parse_ids(text: &str) -> Vec<i64> {
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A file as a download.
pub(crate) async fn download_response(path: &std::path::Path, download: &str) -> Result<Response> {
    let file = tokio::fs::File::open(path).await?;
    let content_type = if download.ends_with(".gz") {
        "application/gzip"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{download}\""),
            ),
        ],
        Body::from_stream(studies::file_stream(file)),
    )
        .into_response())
}
