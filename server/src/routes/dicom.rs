//! `POST /api/studies/dicom`: a study from one DICOM series per modality, converted with dcm2niix
//! in a temporary folder of the data directory and moved into place only when all four pass.

use super::studies::{store_study, StudyView};
use super::{check_part_count, read_text, write_field};
use crate::db;
use crate::dicom::{self, DicomSettings, ImportError};
use crate::error::{Error, Result};
use crate::inspect::{check_upload, UploadedFile, MODALITIES};
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub fn router() -> Router<AppState> {
    Router::new().route("/studies/dicom", post(import))
}

impl From<ImportError> for Error {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Refused(message) => Error::Unprocessable(message),
            ImportError::Converter(missing) => Error::Unavailable(missing.to_string()),
            ImportError::Io(e) => Error::Internal(e.into()),
        }
    }
}

/// One modality's upload: the files as the client named them, and where they were saved.
type SentFiles = Vec<(String, PathBuf)>;

struct SeriesUpload {
    dir: tempfile::TempDir,
    series: BTreeMap<&'static str, SentFiles>,
    fields: HashMap<String, String>,
}

/// Fields `flair`, `t1ce`, `t1`, `t2`: each the series as one zip, or as its files (a folder picked
/// in the browser); optional text field `name`. Answers like `POST /api/studies`.
async fn import(
    State(state): State<AppState>,
    multipart: Multipart,
) -> Result<(StatusCode, Json<StudyView>)> {
    let upload = save_series(&state, multipart).await?;
    let missing: Vec<&str> = MODALITIES
        .iter()
        .copied()
        .filter(|m| !upload.series.contains_key(m))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Unprocessable(format!(
            "missing series: {} (send one series each for flair, t1ce, t1 and t2)",
            missing.join(", ")
        )));
    }
    let settings = state.config.dicom.clone();
    let work = upload.dir.path().to_path_buf();
    let name = upload
        .fields
        .get("name")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "DICOM import".to_string());
    let _slot = state.volumes.decode_slot().await;
    let mut inputs = Vec::new();
    for modality in MODALITIES {
        let sent = upload.series[modality].clone();
        let limits = settings.zip;
        let folder = work.clone();
        let input =
            tokio::task::spawn_blocking(move || series_folder(&folder, modality, &sent, limits))
                .await
                .map_err(anyhow::Error::from)??;
        inputs.push((modality, input));
    }
    let id = study_from_series(&state, &work, inputs, &name).await?;
    // The uploaded zips and the converter's output go with the temporary folder.
    drop(upload);
    Ok((
        StatusCode::CREATED,
        Json(db::study(&state.pool, id).await?.into()),
    ))
}

/// The checked DICOM series of each modality (folders inside `work`, a temporary folder of the
/// data directory) converted with dcm2niix, checked as one co-registered study and stored under
/// `name`, each series kept in `<study dir>/dicom/<modality>/` (what a DICOM SEG refers to); the
/// study's id. The upload and the PACS import both end here. The caller holds a decode slot.
pub(crate) async fn study_from_series(
    state: &AppState,
    work: &Path,
    inputs: Vec<(&'static str, PathBuf)>,
    name: &str,
) -> Result<i64> {
    let settings = state.config.dicom.clone();
    let study_dir = work.join("study");
    let mut volumes = Vec::new();
    for (modality, input) in &inputs {
        let nifti = dicom::convert_series(
            &settings,
            modality,
            input,
            &work.join("nifti").join(modality),
        )
        .await?;
        volumes.push((modality.to_string(), nifti));
    }
    let dir = study_dir.clone();
    let checked = tokio::task::spawn_blocking(move || check_volumes(&dir, volumes))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    keep_series(&study_dir, &inputs)?;
    store_study(state, name, &checked, study_dir).await
}

/// Streams each file into `input/<modality>/` of a fresh temporary folder, under a name of our own
/// (DICOM files are often named by UIDs or numbers, and two series may use the same names).
async fn save_series(state: &AppState, mut multipart: Multipart) -> Result<SeriesUpload> {
    let dir = state.temp_dir()?;
    let mut series: BTreeMap<&'static str, SentFiles> = BTreeMap::new();
    let mut fields = HashMap::new();
    let mut parts = 0;
    while let Some(mut field) = multipart.next_field().await? {
        parts += 1;
        check_part_count(parts, crate::limits::MAX_DICOM_PARTS)?;
        let name = field.name().unwrap_or_default().to_string();
        let Some(file_name) = field.file_name().map(str::to_string) else {
            fields.insert(name, read_text(&mut field).await?);
            continue;
        };
        let Some(modality) = MODALITIES.iter().copied().find(|m| *m == name) else {
            return Err(Error::Unprocessable(format!(
                "{file_name}: sent in field {name:?}; send each series in the field of its \
                 modality: flair, t1ce, t1 or t2"
            )));
        };
        let folder = dir.path().join("input").join(modality);
        tokio::fs::create_dir_all(&folder).await?;
        let files = series.entry(modality).or_default();
        let path = folder.join(format!("{:06}", files.len()));
        write_field(&mut field, &path).await?;
        files.push((file_name, path));
    }
    Ok(SeriesUpload {
        dir,
        series,
        fields,
    })
}

/// The folder that holds `modality`'s DICOM files: the zip unpacked, or the files as sent; every
/// file checked to be a DICOM image.
fn series_folder(
    work: &Path,
    modality: &str,
    sent: &SentFiles,
    limits: dicom::ZipLimits,
) -> Result<PathBuf, ImportError> {
    let zips: Vec<&(String, PathBuf)> = sent.iter().filter(|(_, p)| dicom::is_zip(p)).collect();
    let folder = match (zips.as_slice(), sent.len()) {
        ([(name, path)], 1) => {
            let folder = work.join("series").join(modality);
            dicom::unpack_zip(path, &format!("{modality} ({name})"), &folder, limits)?;
            folder
        }
        ([], _) => work.join("input").join(modality),
        _ => {
            return Err(ImportError::Refused(format!(
                "{modality}: send the series as one zip or as its DICOM files, not a zip among \
                 other files"
            )))
        }
    };
    let display = |path: &Path| -> String {
        sent.iter()
            .find(|(_, saved)| saved == path)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| {
                path.strip_prefix(&folder)
                    .unwrap_or(path)
                    .display()
                    .to_string()
            })
    };
    dicom::check_dicom_files(modality, &folder, &display)?;
    Ok(folder)
}

/// The converted volumes as one study in `study_dir`, checked like a NIfTI upload: one shape, and the
/// trainer's loader as the final word (it refuses volumes whose affines differ: not co-registered).
fn check_volumes(
    study_dir: &Path,
    volumes: Vec<(String, PathBuf)>,
) -> Result<crate::inspect::CheckedUpload, crate::inspect::UploadError> {
    std::fs::create_dir_all(study_dir)?;
    let mut files = Vec::new();
    for (modality, path) in &volumes {
        let file_name = format!("dicom_{modality}.nii.gz");
        let target = study_dir.join(&file_name);
        std::fs::rename(path, &target)?;
        files.push(UploadedFile {
            file_name,
            field: modality.clone(),
            path: target,
        });
    }
    check_upload(files, false)
}

/// Keeps each modality's checked DICOM files in `<study>/dicom/<modality>/` (moved, on the same
/// file system), the series a DICOM SEG of the study refers to (`crate::dicom_seg`).
fn keep_series(study_dir: &Path, series: &[(&str, PathBuf)]) -> Result<()> {
    let kept = study_dir.join(crate::dicom_seg::DICOM_FOLDER);
    std::fs::create_dir_all(&kept)?;
    for (modality, folder) in series {
        std::fs::rename(folder, kept.join(modality))?;
    }
    Ok(())
}

/// Whether the converter is installed, for the start-up warning.
pub fn converter_warning(settings: &DicomSettings) -> Option<String> {
    (!settings.converter_found()).then(|| {
        format!(
            "{} not found: DICOM import will answer 503 until it is installed (scripts/setup-dicom.sh)",
            settings.dcm2niix.display()
        )
    })
}
