//! Checks of what users hand us: dataset folders (BraTS 2021 or MSD layout) and uploaded studies.
//! Every problem names the case or file and says what is wrong.

use crate::volume::read_volume;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Modality order inside the project (never file order).
pub const MODALITIES: [&str; 4] = ["flair", "t1ce", "t1", "t2"];

/// `BraTS2021_00000_t1ce.nii.gz` -> `t1ce`; `seg` for labels; `None` for anything else.
pub fn modality_of(file_name: &str) -> Option<&'static str> {
    let lower = file_name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".nii.gz").or_else(|| lower.strip_suffix(".nii"))?;
    let last = stem.rsplit(['_', '-', '.']).next().unwrap_or(stem);
    ["flair", "t1ce", "t1", "t2", "seg"].into_iter().find(|m| *m == last)
}

pub fn is_nifti_name(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    lower.ends_with(".nii") || lower.ends_with(".nii.gz")
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CaseProblem {
    pub case: String,
    pub error: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DatasetReport {
    /// "brats", "msd" or "empty"
    pub layout: String,
    pub cases: usize,
    pub valid_cases: usize,
    pub modalities: Vec<String>,
    /// Volume shape of the first valid case, e.g. [240, 240, 155].
    pub shape: Option<Vec<usize>>,
    pub problems: Vec<CaseProblem>,
}

/// Scans a dataset folder reading NIfTI headers only (fast even for a full BraTS release).
pub fn inspect_dataset(dir: &Path) -> DatasetReport {
    if dir.join("imagesTr").is_dir() {
        return inspect_msd(dir);
    }
    let mut report = DatasetReport { layout: "brats".into(), ..Default::default() };
    let mut case_dirs: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect(),
        Err(e) => {
            report.layout = "empty".into();
            report.problems.push(CaseProblem { case: dir.display().to_string(), error: format!("cannot read folder: {e}") });
            return report;
        }
    };
    case_dirs.sort();
    for case_dir in case_dirs {
        let case = case_dir.file_name().unwrap_or_default().to_string_lossy().to_string();
        if case.starts_with('.') {
            continue;
        }
        report.cases += 1;
        match inspect_brats_case(&case_dir) {
            Ok(shape) => {
                report.valid_cases += 1;
                report.shape.get_or_insert(shape);
            }
            Err(error) => report.problems.push(CaseProblem { case, error }),
        }
    }
    if report.cases == 0 {
        report.layout = "empty".into();
    } else {
        report.modalities = MODALITIES.iter().map(|m| m.to_string()).collect();
    }
    report
}

fn inspect_brats_case(case_dir: &Path) -> Result<Vec<usize>, String> {
    let mut found: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for entry in std::fs::read_dir(case_dir).map_err(|e| format!("cannot read folder: {e}"))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if let Some(m) = modality_of(&name) {
            found.insert(m, path);
        }
    }
    let missing: Vec<&str> =
        MODALITIES.iter().chain(["seg"].iter()).copied().filter(|m| !found.contains_key(m)).collect();
    if !missing.is_empty() {
        return Err(format!("missing {}", missing.join(", ")));
    }
    let mut shape: Option<(String, Vec<usize>)> = None;
    for (m, path) in &found {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let header = nifti::NiftiHeader::from_file(path).map_err(|e| format!("{name}: {e}"))?;
        let dims: Vec<usize> = header.dim[1..=header.dim[0].clamp(1, 7) as usize].iter().map(|d| *d as usize).collect();
        match &shape {
            None => shape = Some((name, dims)),
            Some((first, s)) if *s != dims => {
                return Err(format!("{name} ({m}) has shape {dims:?} but {first} has {s:?}"));
            }
            _ => {}
        }
    }
    Ok(shape.map(|s| s.1).unwrap_or_default())
}

fn inspect_msd(dir: &Path) -> DatasetReport {
    let mut report = DatasetReport { layout: "msd".into(), ..Default::default() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("imagesTr"))
        .map(|e| e.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| is_nifti_name(&p.file_name().unwrap_or_default().to_string_lossy()) && !p.file_name().unwrap_or_default().to_string_lossy().starts_with('.'));
    files.sort();
    for path in files {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        report.cases += 1;
        let check = || -> Result<Vec<usize>, String> {
            let header = nifti::NiftiHeader::from_file(&path).map_err(|e| e.to_string())?;
            if header.dim[0] != 4 || header.dim[4] != 4 {
                return Err(format!("expected a 4-D volume with 4 channels, found dim {:?}", &header.dim[..5]));
            }
            if !dir.join("labelsTr").join(&name).exists() {
                return Err("missing label file in labelsTr".into());
            }
            Ok(header.dim[1..4].iter().map(|d| *d as usize).collect())
        };
        match check() {
            Ok(shape) => {
                report.valid_cases += 1;
                report.shape.get_or_insert(shape);
            }
            Err(error) => report.problems.push(CaseProblem { case: name, error }),
        }
    }
    report.modalities = MODALITIES.iter().map(|m| m.to_string()).collect();
    report
}

/// One uploaded file: the name the client gave, the form field and where it was saved.
#[derive(Clone, Debug)]
pub struct UploadedFile {
    pub file_name: String,
    pub field: String,
    pub path: PathBuf,
}

/// The validated content of an upload: modality (or "4d", "seg") -> uploaded file index.
pub struct CheckedUpload {
    pub roles: BTreeMap<String, usize>,
    pub shape: Vec<usize>,
}

/// Decodes every file and checks that they form one study: four modalities of one shape, or one
/// 4-D file with four channels (MSD). `need_labels` also requires a `seg` file of the same shape.
pub fn check_upload(files: &[UploadedFile], need_labels: bool) -> Result<CheckedUpload, String> {
    if files.is_empty() {
        return Err("no files uploaded: send the four modalities (flair, t1ce, t1, t2) or one 4-D NIfTI".into());
    }
    let mut roles: BTreeMap<String, usize> = BTreeMap::new();
    let mut shapes: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if !is_nifti_name(&file.file_name) {
            return Err(format!("{}: not a NIfTI file name (expected .nii or .nii.gz)", file.file_name));
        }
        let volume = read_volume(&file.path).map_err(|e| format!("{}: {e}", file.file_name))?;
        let shape = volume.data.shape().to_vec();
        let role = if files.len() == 1 && shape.len() == 4 {
            if shape[3] != 4 {
                return Err(format!("{}: a 4-D file must have 4 channels (FLAIR, T1w, T1gd, T2w), found {}", file.file_name, shape[3]));
            }
            "4d".to_string()
        } else {
            let from_field = MODALITIES.iter().chain(["seg"].iter()).find(|m| **m == file.field);
            match from_field.copied().or_else(|| modality_of(&file.file_name)) {
                Some(m) => m.to_string(),
                None => {
                    return Err(format!(
                        "{}: cannot tell the modality; name it *_flair, *_t1ce, *_t1, *_t2 (or *_seg) .nii.gz",
                        file.file_name
                    ))
                }
            }
        };
        if shape.len() != 3 && role != "4d" {
            return Err(format!("{}: expected a 3-D volume, found shape {shape:?}", file.file_name));
        }
        if let Some(previous) = roles.insert(role.clone(), i) {
            return Err(format!("{} and {} are both {role}", files[previous].file_name, file.file_name));
        }
        shapes.push((i, shape));
    }
    if !roles.contains_key("4d") {
        let missing: Vec<&str> = MODALITIES.iter().copied().filter(|m| !roles.contains_key(*m)).collect();
        if !missing.is_empty() {
            return Err(format!("missing modalities: {} (need flair, t1ce, t1, t2)", missing.join(", ")));
        }
    }
    if need_labels && !roles.contains_key("seg") && !roles.contains_key("4d") {
        return Err("missing seg: a training case needs its label file (*_seg.nii.gz)".into());
    }
    let reference = shapes[0].1[..3].to_vec();
    for (i, shape) in &shapes {
        if shape[..3] != reference[..] {
            return Err(format!(
                "{} has shape {:?} but {} has {:?}: all modalities must be co-registered to one grid",
                files[*i].file_name, &shape[..3], files[shapes[0].0].file_name, reference
            ));
        }
    }
    Ok(CheckedUpload { roles, shape: reference })
}

/// Safe single path component from a user-supplied name: letters, digits, `-`, `_`, `.`; no
/// leading dot, no separators. Everything else is rejected rather than rewritten.
pub fn safe_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!("invalid name {name:?}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'"))
    }
}
