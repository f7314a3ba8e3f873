//! Datasets: register a folder, create an empty one and upload cases into it, validation reports,
//! and the synthetic demo dataset made on first start.

use super::save_upload;
use crate::db::{self, Dataset};
use crate::error::{Error, Result};
use crate::inspect::{check_upload, inspect_dataset, nifti_extension, safe_name, DatasetReport};
use crate::{contained_path, AppState};
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets", get(list).post(create))
        .route("/datasets/{id}", get(show))
        .route("/datasets/{id}/validate", post(revalidate))
        .route("/datasets/{id}/cases", post(upload_case))
        .route("/datasets/{id}/cases/from-study", post(add_study_case))
}

#[derive(Debug, Serialize)]
pub struct DatasetView {
    #[serde(flatten)]
    pub dataset: Dataset,
    pub report: DatasetReport,
    /// What the dataset trains (a feature dataset's own task, else segmentation).
    pub task: cggm_core::task::TaskKind,
    /// A feature dataset's modalities, splits and problems (`report` describes NIfTI cases only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<crate::feature_datasets::FeatureSummary>,
    /// A full check ("Validate again") is running; `report` is replaced when it ends.
    pub validating: bool,
}

impl From<Dataset> for DatasetView {
    fn from(dataset: Dataset) -> Self {
        let report = serde_json::from_str(&dataset.report).unwrap_or_default();
        let facts = crate::feature_datasets::DatasetFacts::of(&dataset);
        Self {
            dataset,
            report,
            task: facts.task,
            features: facts.features,
            validating: false,
        }
    }
}

fn view(state: &AppState, dataset: Dataset) -> DatasetView {
    let validating = state.is_validating(dataset.id);
    DatasetView {
        validating,
        ..dataset.into()
    }
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<DatasetView>>> {
    Ok(Json(
        db::datasets(&state.pool)
            .await?
            .into_iter()
            .map(|d| view(&state, d))
            .collect(),
    ))
}

async fn show(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<DatasetView>> {
    Ok(Json(view(&state, db::dataset(&state.pool, id).await?)))
}

#[derive(Debug, Deserialize)]
pub struct CreateDataset {
    pub name: String,
    /// A folder to register (relative paths are taken inside the data directory). Without it, an
    /// empty dataset is created for uploads.
    pub path: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    Json(body): Json<CreateDataset>,
) -> Result<(StatusCode, Json<DatasetView>)> {
    let name = safe_name(&body.name).map_err(|e| Error::BadRequest(e.to_string()))?;
    let (path, source) = match body.path.as_deref().filter(|p| !p.trim().is_empty()) {
        Some(requested) => {
            let requested = PathBuf::from(requested.trim());
            let full = if requested.is_absolute() {
                requested
            } else {
                state.data_dir().join(requested)
            };
            let mut roots = vec![state.data_dir().to_path_buf()];
            roots.extend(state.config.dataset_roots.iter().cloned());
            let resolved = contained_path(&full, &roots).ok_or_else(|| {
                Error::Unprocessable(format!(
                    "{}: not an existing folder inside the data directory or a --dataset-root",
                    full.display()
                ))
            })?;
            if !resolved.is_dir() {
                return Err(Error::Unprocessable(format!(
                    "{}: not a folder",
                    resolved.display()
                )));
            }
            refuse_internal_folder(state.data_dir(), &resolved)?;
            (resolved, "registered")
        }
        None => {
            let dir = state.data_dir().join("datasets").join(&name);
            if dir.exists() {
                return Err(Error::Conflict(format!(
                    "a folder named {name} already exists in datasets/"
                )));
            }
            std::fs::create_dir_all(&dir)?;
            (dir, "uploaded")
        }
    };
    let dataset = insert(&state, &name, &path, source).await?;
    Ok((StatusCode::CREATED, Json(dataset.into())))
}

/// Inside the data directory only `datasets/` holds datasets: the directory itself, a folder that
/// contains it, or its `studies/`, `runs/`, `predictions/`, `logs/` and `tmp/` (patient uploads
/// and the server's own files) are never registered and served as a dataset.
fn refuse_internal_folder(data_dir: &std::path::Path, folder: &std::path::Path) -> Result<()> {
    let data_dir = data_dir.canonicalize()?;
    let datasets = data_dir.join("datasets");
    let internal = if folder.starts_with(&data_dir) {
        !folder.starts_with(&datasets) || folder == datasets
    } else {
        data_dir.starts_with(folder)
    };
    if internal {
        return Err(Error::Unprocessable(
            "that folder is (or holds) the server's own data (uploads, runs, the database): \
             register a dataset folder inside datasets/ of the data directory or under a \
             --dataset-root"
                .into(),
        ));
    }
    Ok(())
}

async fn insert(
    state: &AppState,
    name: &str,
    path: &std::path::Path,
    source: &str,
) -> Result<Dataset> {
    let scan_path = path.to_path_buf();
    let report = tokio::task::spawn_blocking(move || inspect_dataset(&scan_path, false))
        .await
        .map_err(anyhow::Error::from)?;
    let id = sqlx::query(
        "INSERT INTO datasets (name, path, source, created_at, report) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(name)
    .bind(path.display().to_string())
    .bind(source)
    .bind(db::now())
    .bind(serde_json::to_string(&report).map_err(anyhow::Error::from)?)
    .execute(&state.pool)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            Error::Conflict(format!("a dataset named {name} exists"))
        }
        other => other.into(),
    })?
    .last_insert_rowid();
    db::dataset(&state.pool, id).await
}

/// Starts a full check that decodes every case, like `cggm validate` (slow for a full BraTS
/// release), in the background, and answers 202 at once: the request never holds a decode, and a
/// second click while one runs starts nothing. The dataset reads `validating: true` until the new
/// report is stored.
async fn revalidate(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<DatasetView>)> {
    let dataset = db::dataset(&state.pool, id).await?;
    if state.start_validating(id) {
        let background = state.clone();
        tokio::spawn(async move {
            let result = {
                let _slot = background.volumes.decode_slot().await;
                rescan(&background, id, true).await
            };
            background.stop_validating(id);
            if let Err(e) = result {
                tracing::warn!(dataset = id, error = %e, "validation failed");
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(view(&state, dataset))))
}

pub(crate) async fn rescan(state: &AppState, id: i64, full: bool) -> Result<Json<DatasetView>> {
    let dataset = db::dataset(&state.pool, id).await?;
    let path = PathBuf::from(&dataset.path);
    let report = tokio::task::spawn_blocking(move || inspect_dataset(&path, full))
        .await
        .map_err(anyhow::Error::from)?;
    sqlx::query("UPDATE datasets SET report = ? WHERE id = ?")
        .bind(serde_json::to_string(&report).map_err(anyhow::Error::from)?)
        .bind(id)
        .execute(&state.pool)
        .await?;
    Ok(Json(db::dataset(&state.pool, id).await?.into()))
}

/// Adds one case (four modalities and `seg`) to an uploaded dataset, as
/// `<case>/<case>_<modality>.nii.gz`. An existing case is never replaced.
async fn upload_case(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    multipart: Multipart,
) -> Result<(StatusCode, Json<DatasetView>)> {
    let dataset = db::dataset(&state.pool, id).await?;
    if dataset.source != "uploaded" {
        return Err(Error::Conflict(format!(
            "dataset {} is a registered folder: add cases to it on disk",
            dataset.name
        )));
    }
    let upload = save_upload(&state, multipart).await?;
    let case = upload.fields.get("case").cloned().unwrap_or_default();
    let case = safe_name(&case).map_err(|e| Error::BadRequest(format!("field `case`: {e}")))?;
    let staged = upload.dir.path().join(".case");
    let files = upload.files.clone();
    let slot = state.volumes.decode_slot().await;
    let checked = tokio::task::spawn_blocking(move || check_upload(files, true))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    drop(slot);
    if checked.roles.contains_key("4d") {
        return Err(Error::Unprocessable(
            "a dataset case needs separate modality files and a seg file (BraTS layout)".into(),
        ));
    }
    std::fs::create_dir(&staged)?;
    for (role, index) in &checked.roles {
        let file = &checked.files[*index];
        let ext = if file.file_name.to_ascii_lowercase().ends_with(".gz") {
            "nii.gz"
        } else {
            "nii"
        };
        std::fs::rename(&file.path, staged.join(format!("{case}_{role}.{ext}")))?;
    }
    let target = PathBuf::from(&dataset.path).join(&case);
    if target.exists() {
        return Err(Error::Conflict(format!(
            "case {case} already exists in {}",
            dataset.name
        )));
    }
    std::fs::rename(&staged, &target)?;
    rescan(&state, id, false)
        .await
        .map(|j| (StatusCode::CREATED, j))
}

#[derive(Debug, Deserialize)]
struct StudyCase {
    study_id: i64,
    /// The case's folder name; `study-<id>` when missing.
    case: Option<String>,
}

/// Copies the study's modalities and its ground truth `truth` into `target` as case `case`
/// (BraTS names), staged beside it and renamed in one step: a failed copy leaves no half case.
fn copy_case(
    dataset: &db::Dataset,
    study: &db::Study,
    view: &super::studies::StudyView,
    truth: &std::path::Path,
    case: &str,
    target: &std::path::Path,
) -> Result<()> {
    let staging = tempfile::Builder::new()
        .prefix(".adding-")
        .tempdir_in(&dataset.path)?;
    let nifti_name =
        |role: &str, source: &std::path::Path| format!("{case}_{role}{}", nifti_extension(source));
    let study_dir = PathBuf::from(&study.dir);
    for modality in crate::inspect::MODALITIES {
        let file = view.files.get(modality).ok_or_else(|| {
            Error::Unprocessable(format!("study {} has no {modality} file", study.name))
        })?;
        let source = study_dir.join(file);
        std::fs::copy(&source, staging.path().join(nifti_name(modality, &source)))?;
    }
    std::fs::copy(truth, staging.path().join(nifti_name("seg", truth)))?;
    std::fs::rename(staging.keep(), target)?;
    Ok(())
}

/// `POST /api/datasets/{id}/cases/from-study` `{"study_id": N, "case": "name"}`: adds a study with
/// its current ground truth (a corrected label, else the uploaded one) to an uploaded dataset as
/// a case, copied in the BraTS layout, so that a run can be trained on corrected cases (and
/// fine-tuned from a finished run with `init_from`). The study keeps its files; an existing case
/// is never replaced.
async fn add_study_case(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<StudyCase>,
) -> Result<(StatusCode, Json<DatasetView>)> {
    let dataset = db::dataset(&state.pool, id).await?;
    if dataset.source != "uploaded" {
        return Err(Error::Conflict(format!(
            "dataset {} is a registered folder, which the server never writes to: add the case \
             to a dataset created here (POST /api/datasets with a name only)",
            dataset.name
        )));
    }
    let study = db::study(&state.pool, body.study_id).await?;
    let truth = crate::labels::ground_truth(&state.pool, &study)
        .await?
        .ok_or_else(|| {
            Error::Unprocessable(format!(
                "study {} has no ground truth: correct its prediction in the viewer and save \
                 it (or upload the study with its seg file) before adding it to a dataset",
                study.name
            ))
        })?;
    let view = super::studies::StudyView::from(study.clone());
    if view.files.contains_key("4d") {
        return Err(Error::Unprocessable(format!(
            "study {} was uploaded as one 4-D file; a dataset case holds one file per modality \
             (BraTS layout): upload the study's four modalities as separate files",
            study.name
        )));
    }
    let case = body.case.unwrap_or_else(|| format!("study-{}", study.id));
    let case = safe_name(&case).map_err(|e| Error::BadRequest(format!("field `case`: {e}")))?;
    let target = PathBuf::from(&dataset.path).join(&case);
    if target.exists() {
        return Err(Error::Conflict(format!(
            "case {case} already exists in {}: choose another name",
            dataset.name
        )));
    }
    copy_case(&dataset, &study, &view, &truth.path, &case, &target)?;
    tracing::info!(dataset = id, study = study.id, case = %case, truth = %truth.key(), "study added to a dataset");
    rescan(&state, id, false)
        .await
        .map(|j| (StatusCode::CREATED, j))
}

/// On first start (no dataset yet), makes the synthetic demo dataset with `cggm synth` in the
/// background, so that a newcomer can launch a run at once. The dataset appears when ready.
pub async fn ensure_demo_dataset(state: AppState) -> anyhow::Result<()> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM datasets")
        .fetch_one(&state.pool)
        .await?;
    if count > 0 {
        return Ok(());
    }
    tokio::spawn(async move {
        if let Err(e) = make_demo(&state).await {
            tracing::warn!(error = %format!("{e:#}"), "could not create the demo dataset");
        }
    });
    Ok(())
}

async fn make_demo(state: &AppState) -> anyhow::Result<()> {
    let target = state.data_dir().join("datasets").join("demo");
    if !target.exists() {
        let staging = state.temp_dir()?;
        let out = staging.path().join("demo");
        tracing::info!("creating the synthetic demo dataset (first start)");
        let status = tokio::process::Command::new(&state.config.cggm_bin)
            .args(["synth", "--out"])
            .arg(&out)
            .args(["--cases", "12", "--seed", "2024", "--size", "96x96x48"])
            .env_remove("CGGM_TOKEN")
            .env_remove("CGGM_TOKEN_FILE")
            .stdin(std::process::Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "`cggm synth` exited with {status}");
        std::fs::rename(&out, &target)?;
    }
    insert(state, "demo", &target, "demo")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!("demo dataset ready");
    Ok(())
}
