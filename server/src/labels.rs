//! The labels of a study, every version kept: a label corrected in the viewer, one saved by a
//! MONAI Label client (3D Slicer, OHIF) and the one uploaded with the study all land here. The
//! study's ground truth is its newest `final` version, else the uploaded `*_seg` file; viewing,
//! scoring and "add to a dataset" all read it through [`ground_truth`]. A new version never
//! replaces an older file (`<study dir>/labels/<tag>-v<N>.nii[.gz]`).

use crate::db::{self, Study};
use crate::error::{Error, Result};
use crate::inspect::{is_nifti_name, nifti_extension, without_folder, UploadedFile};
use crate::AppState;
use cggm_core::data::LabelValues;
use serde::Serialize;
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// MONAI Label's tag for a corrected ground truth; anything else is a draft.
pub const GROUND_TRUTH_TAG: &str = "final";

/// Longest author name kept (it is shown on pages, never trusted).
const MAX_AUTHOR_CHARS: usize = 200;

/// One stored label version.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct LabelVersion {
    pub study_id: i64,
    pub tag: String,
    pub version: i64,
    /// The file's name inside `<study dir>/labels/`.
    #[serde(skip)]
    pub file: String,
    /// Who saved it: the name given in the viewer, or a MONAI Label client's `client_id`.
    #[serde(rename = "author")]
    pub client_id: Option<String>,
    pub created_at: f64,
}

/// Where a study's ground truth comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TruthSource {
    /// The `*_seg` file uploaded with the study.
    Uploaded,
    /// A saved `final` version.
    Version(i64),
}

/// A study's current ground truth: its file and where it came from.
#[derive(Clone, Debug)]
pub struct GroundTruth {
    pub path: PathBuf,
    pub source: TruthSource,
}

impl GroundTruth {
    /// A name that changes whenever the truth does (cache keys, file names).
    pub fn key(&self) -> String {
        match self.source {
            TruthSource::Uploaded => "uploaded".into(),
            TruthSource::Version(v) => format!("{GROUND_TRUTH_TAG}-v{v}"),
        }
    }
}

fn labels_dir(study: &Study) -> PathBuf {
    PathBuf::from(&study.dir).join("labels")
}

/// The stored file of a version.
pub fn version_path(study: &Study, version: &LabelVersion) -> PathBuf {
    labels_dir(study).join(&version.file)
}

/// Every version of every tag of a study, oldest first.
pub async fn versions(pool: &SqlitePool, study_id: i64) -> Result<Vec<LabelVersion>> {
    Ok(sqlx::query_as(
        "SELECT study_id, tag, version, file, client_id, created_at FROM study_labels
         WHERE study_id = ? ORDER BY tag, version",
    )
    .bind(study_id)
    .fetch_all(pool)
    .await?)
}

/// Version `version` of `tag` (the newest when None).
pub async fn version(
    pool: &SqlitePool,
    study_id: i64,
    tag: &str,
    version: Option<i64>,
) -> Result<Option<LabelVersion>> {
    Ok(sqlx::query_as(
        "SELECT study_id, tag, version, file, client_id, created_at FROM study_labels
         WHERE study_id = ? AND tag = ? AND (? IS NULL OR version = ?)
         ORDER BY version DESC LIMIT 1",
    )
    .bind(study_id)
    .bind(tag)
    .bind(version)
    .bind(version)
    .fetch_optional(pool)
    .await?)
}

/// The study's ground truth: the newest `final` version, else the uploaded `seg` file, else None.
pub async fn ground_truth(pool: &SqlitePool, study: &Study) -> Result<Option<GroundTruth>> {
    if let Some(v) = version(pool, study.id, GROUND_TRUTH_TAG, None).await? {
        return Ok(Some(GroundTruth {
            path: version_path(study, &v),
            source: TruthSource::Version(v.version),
        }));
    }
    let files: BTreeMap<String, String> = serde_json::from_str(&study.files).unwrap_or_default();
    Ok(files.get("seg").map(|file| GroundTruth {
        path: PathBuf::from(&study.dir).join(file),
        source: TruthSource::Uploaded,
    }))
}

/// The one label file of an upload, else what to send instead.
pub fn the_label_file(files: &[UploadedFile]) -> Result<UploadedFile> {
    match files {
        [one] => Ok(one.clone()),
        [] => Err(Error::Unprocessable(
            "no label file: send it in the `label` field".into(),
        )),
        _ => Err(Error::Unprocessable(
            "send one label file per request, in the `label` field".into(),
        )),
    }
}

/// A label file for a study of `shape`: a NIfTI of that grid (from its header, before any voxel
/// is read) whose values are BraTS labels (the trainer's reader and numbering).
pub fn check_label(file: &UploadedFile, shape: &[usize]) -> Result<()> {
    let name = &file.file_name;
    let refuse = |message: String| Err(Error::Unprocessable(message));
    if !is_nifti_name(name) {
        return refuse(format!(
            "{name}: not a NIfTI file name (expected .nii or .nii.gz)"
        ));
    }
    let header = cggm_core::data::read_header(&file.path)
        .map_err(|e| Error::Unprocessable(without_folder(&e.to_string(), &file.path)))?;
    let dims = &header.dims;
    let one_channel = dims.len() == 3 || (dims.len() == 4 && dims[3] == 1);
    if !one_channel || dims[..3] != shape[..] {
        return refuse(format!(
            "{name} has shape {dims:?} but the image has {shape:?}: a label is one 3-D volume on \
             the image's grid"
        ));
    }
    let (_, data) = cggm_core::data::read_volume(&file.path)
        .map_err(|e| Error::Unprocessable(without_folder(&e.to_string(), &file.path)))?;
    if let Some(bad) = data.iter().find(|&&v| {
        !(v.fract() == 0.0 && (0.0..=255.0).contains(&v))
            || LabelValues::Brats.class_of(v as u8).is_none()
    }) {
        let (numbering, values) = LabelValues::Brats.describe();
        return refuse(format!(
            "{name}: label value {bad} is not a {numbering} label ({values})"
        ));
    }
    Ok(())
}

/// Checks `file` against the study's grid and stores it as the next version of `tag`, with who
/// saved it; returns the version. The file is moved into the study's `labels/` folder only once
/// its row is written, in one transaction: a refused or failed save leaves nothing behind.
pub async fn store(
    state: &AppState,
    study: &Study,
    tag: &str,
    file: UploadedFile,
    author: Option<&str>,
) -> Result<i64> {
    let shape: Vec<usize> = serde_json::from_str(&study.shape).unwrap_or_default();
    {
        let _slot = state.volumes.decode_slot().await;
        let checked = file.clone();
        tokio::task::spawn_blocking(move || check_label(&checked, &shape))
            .await
            .map_err(anyhow::Error::from)??;
    }
    let author = author
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.chars().take(MAX_AUTHOR_CHARS).collect::<String>());
    let folder = labels_dir(study);
    std::fs::create_dir_all(&folder)?;
    let mut tx = state.pool.begin().await?;
    let (version,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM study_labels WHERE study_id = ? AND tag = ?",
    )
    .bind(study.id)
    .bind(tag)
    .fetch_one(&mut *tx)
    .await?;
    let stored = format!("{tag}-v{version}{}", nifti_extension(&file.file_name));
    sqlx::query(
        "INSERT INTO study_labels (study_id, tag, version, file, client_id, created_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(study.id)
    .bind(tag)
    .bind(version)
    .bind(&stored)
    .bind(author)
    .bind(db::now())
    .execute(&mut *tx)
    .await?;
    std::fs::rename(&file.path, folder.join(&stored))?;
    tx.commit().await?;
    Ok(version)
}
