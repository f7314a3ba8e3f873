//! The stored NIfTI files streamed as they are, and finding a study's, a prediction's or a
//! dataset case's files by role.

use super::*;

// ---------------------------------------------------------------------------- streaming

/// A stored NIfTI file as it is on disk (gzip or not), shown inline; patient data, never cached.
/// Only a file that resolves (links followed) inside `root` is opened: a link planted in a dataset
/// or data folder never serves what lies outside it.
pub(super) async fn nifti_response(
    path: &std::path::Path,
    root: &std::path::Path,
) -> Result<Response> {
    let inside = crate::contained_path(path, &[root.to_path_buf()])
        .ok_or_else(|| Error::NotFound("that file".into()))?;
    let file = tokio::fs::File::open(&inside).await?;
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
pub(super) fn study_file(study: &StudyView, role: &str) -> Result<PathBuf> {
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

pub(super) async fn study_nifti(
    State(state): State<AppState>,
    Path((id, file)): Path<(i64, String)>,
) -> Result<Response> {
    let study = db::study(&state.pool, id).await?;
    // `truth`: the current ground truth (the newest corrected version, else the uploaded label).
    let path = if file == "truth" {
        crate::labels::ground_truth(&state.pool, &study)
            .await?
            .ok_or_else(|| Error::NotFound(format!("a ground truth of study {id}")))?
            .path
    } else {
        study_file(&StudyView::from(study), &file)?
    };
    nifti_response(&path, state.data_dir()).await
}

pub(super) async fn prediction_nifti(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response> {
    let job = db::job(&state.pool, id).await?;
    nifti_response(&job.segmentation()?, state.data_dir()).await
}

/// The case `case` of a registered or uploaded dataset (found by name, never by path).
pub(super) fn dataset_case(dataset: &Dataset, case: &str) -> Result<CaseSource> {
    discover(std::path::Path::new(&dataset.path))
        .cases
        .into_iter()
        .find(|c| c.id == case)
        .ok_or_else(|| Error::NotFound(format!("case {case:?} in dataset {}", dataset.name)))
}

/// The channel of `modality` inside a 4-D image whose channels are `channels` (an uploaded MSD
/// study: [`MSD_CHANNELS`]; a dataset case: what its `dataset.json` says).
pub(super) fn msd_frame(channels: &[Modality; 4], modality: Modality) -> usize {
    channels
        .iter()
        .position(|m| *m == modality)
        .expect("the four channels are the four modalities")
}

/// A case's file by role (`flair`, `t1ce`, `t1`, `t2`, `4d`, `seg`).
pub(super) fn case_file(case: &CaseSource, role: &str) -> Option<PathBuf> {
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

pub(super) fn case_convention(case: &CaseSource) -> LabelConvention {
    match case.label_values() {
        LabelValues::Brats => LabelConvention::Brats,
        LabelValues::Msd => LabelConvention::Msd,
    }
}

pub(super) async fn case_nifti(
    State(state): State<AppState>,
    Path((id, case, file)): Path<(i64, String, String)>,
) -> Result<Response> {
    let dataset = db::dataset(&state.pool, id).await?;
    let source = dataset_case(&dataset, &case)?;
    let path = case_file(&source, &file)
        .ok_or_else(|| Error::NotFound(format!("file {file:?} of case {case}")))?;
    nifti_response(&path, std::path::Path::new(&dataset.path)).await
}

#[derive(Debug, Serialize)]
pub struct CaseEntry {
    pub case: String,
    pub has_label: bool,
}

pub(super) async fn dataset_cases(
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
