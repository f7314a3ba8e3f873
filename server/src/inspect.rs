//! Checks of what users hand us: dataset folders (BraTS 2021 or MSD layout) and uploaded studies.
//! Every problem names the case or file and says what is wrong.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Modality order inside the project (never file order).
pub const MODALITIES: [&str; 4] = ["flair", "t1ce", "t1", "t2"];

/// `BraTS2021_00000_t1ce.nii.gz` -> `t1ce`, `BraTS-GLI-00000-000-t2f.nii.gz` -> `flair`: the
/// project's modality name by the trainer's own suffixes (BraTS 2021, 2023+ and common
/// spellings); `seg` for labels; `None` for anything else.
pub fn modality_of(file_name: &str) -> Option<&'static str> {
    let lower = file_name.to_ascii_lowercase();
    let stem = lower
        .strip_suffix(".nii.gz")
        .or_else(|| lower.strip_suffix(".nii"))?;
    let last = stem.rsplit(['_', '-', '.']).next().unwrap_or(stem);
    if matches!(last, "seg" | "label" | "labels" | "mask" | "gt") {
        return Some("seg");
    }
    cggm_core::data::Modality::parse(last).map(|m| m.name())
}

/// `.nii.gz` or `.nii`, as a stored NIfTI's name (or path) ends: the suffix a copy keeps.
pub fn nifti_extension(name: impl AsRef<std::path::Path>) -> &'static str {
    if name
        .as_ref()
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".gz")
    {
        ".nii.gz"
    } else {
        ".nii"
    }
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

/// Case counts of the trainer's default split (15 % validation, 15 % test).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SplitSizes {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DatasetReport {
    /// [`cggm_core::data::Layout::key`]: "brats2021", "brats2023", "msd", "nnunet-v2" or "empty"
    pub layout: String,
    pub cases: usize,
    pub valid_cases: usize,
    pub modalities: Vec<String>,
    /// Volume shape of the first valid case, e.g. [240, 240, 155].
    pub shape: Option<Vec<usize>>,
    pub split: SplitSizes,
    /// true when every case was fully decoded (`validate`), false for the quick header check.
    pub full_check: bool,
    pub problems: Vec<CaseProblem>,
}

/// Checks a dataset folder the way the trainer sees it (`cggm_core::data::discover`). The quick
/// check (on registration) reads NIfTI headers only, fast even for a full BraTS release; the full
/// check decodes every case like `cggm validate`.
pub fn inspect_dataset(dir: &Path, full: bool) -> DatasetReport {
    use cggm_core::data::{discover, split_cases, validate_dataset};
    let found = if full {
        validate_dataset(dir)
    } else {
        discover(dir)
    };
    let layout = found.layout.key();
    let mut problems: Vec<CaseProblem> = found
        .problems
        .iter()
        .map(|p| CaseProblem {
            case: p.case.clone(),
            error: within_dataset(&p.error.to_string(), dir),
        })
        .collect();
    let mut valid = Vec::new();
    let mut shape = None;
    for case in &found.cases {
        match header_shapes_agree(&case.paths()) {
            Ok(s) => {
                shape.get_or_insert(s);
                valid.push(case.clone());
            }
            Err(error) => problems.push(CaseProblem {
                case: case.id.clone(),
                error: within_dataset(&error.to_string(), dir),
            }),
        }
    }
    problems.sort_by(|a, b| a.case.cmp(&b.case));
    let split = split_cases(&valid, 0, 0.15, 0.15);
    DatasetReport {
        layout: layout.into(),
        cases: valid.len() + problems.len(),
        valid_cases: valid.len(),
        modalities: if valid.is_empty() {
            Vec::new()
        } else {
            MODALITIES.iter().map(|m| m.to_string()).collect()
        },
        shape,
        split: SplitSizes {
            train: split.train.len(),
            val: split.val.len(),
            test: split.test.len(),
        },
        full_check: full,
        problems,
    }
}

/// Why uploaded files are not one study (answered 422 with this message), or a dataset case's
/// files do not agree.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("no files uploaded: send the four modalities (flair, t1ce, t1, t2) or one 4-D NIfTI")]
    NoFiles,
    #[error("{0}: not a NIfTI file name (expected .nii or .nii.gz)")]
    NotNifti(String),
    /// The header reader or the trainer's loader refused a file (named, without its folder).
    #[error("{0}")]
    Unreadable(String),
    #[error("{file}: a 4-D file must have 4 channels (FLAIR, T1w, T1gd, T2w), found {channels}")]
    Channels { file: String, channels: usize },
    #[error(
        "{0}: cannot tell the modality; name it *_flair, *_t1ce, *_t1, *_t2 (or *_seg) .nii.gz"
    )]
    UnknownModality(String),
    #[error("{file}: expected a 3-D volume, found shape {shape:?}")]
    NotThreeD { file: String, shape: Vec<usize> },
    #[error("{first} and {second} are both {role}")]
    SameRole {
        first: String,
        second: String,
        role: String,
    },
    #[error(
        "a 4-D image holds all four modalities: send it alone (with its label in the \
         `label` field), not with a separate {0} file"
    )]
    FourDWith(String),
    #[error("missing modalities: {} (need flair, t1ce, t1, t2)", .0.join(", "))]
    Missing(Vec<String>),
    #[error("missing seg: a training case needs its label file (*_seg.nii.gz)")]
    NoLabels,
    #[error(
        "{file} has shape {shape:?} but {other} has {other_shape:?}: all modalities must be \
         co-registered to one grid"
    )]
    Grid {
        file: String,
        shape: Vec<usize>,
        other: String,
        other_shape: Vec<usize>,
    },
    /// A case's files differ in shape (a dataset report).
    #[error("{file} has shape {shape:?} but {other} has {other_shape:?}")]
    Shapes {
        file: String,
        shape: Vec<usize>,
        other: String,
        other_shape: Vec<usize>,
    },
    #[error("{file}: {error}")]
    File { file: String, error: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The spatial shape shared by all files of a case (from their headers), or what differs.
fn header_shapes_agree(paths: &[PathBuf]) -> Result<Vec<usize>, UploadError> {
    let mut first: Option<(String, Vec<usize>)> = None;
    for path in paths {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let header = cggm_core::data::read_header(path)
            .map_err(|e| UploadError::Unreadable(format!("{name}: {e}")))?;
        let dims: Vec<usize> = header.dims.iter().take(3).copied().collect();
        match &first {
            None => first = Some((name, dims)),
            Some((other, s)) if *s != dims => {
                return Err(UploadError::Shapes {
                    file: name,
                    shape: dims,
                    other: other.clone(),
                    other_shape: s.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(first.map(|f| f.1).unwrap_or_default())
}

/// One uploaded file: the name the client gave, the form field and where it was saved.
#[derive(Clone, Debug)]
pub struct UploadedFile {
    pub file_name: String,
    pub field: String,
    pub path: PathBuf,
}

/// The validated content of an upload: modality (or "4d", "seg") -> index into `files`.
pub struct CheckedUpload {
    pub roles: BTreeMap<String, usize>,
    pub shape: Vec<usize>,
    /// The uploaded files; one whose name did not say its modality is renamed `upload_<modality>`.
    pub files: Vec<UploadedFile>,
}

/// Checks that the files form one study: four modalities of one shape, or one 4-D file with four
/// channels (MSD), from their headers (bounded: a header is a few hundred bytes, whatever the file
/// claims); then the trainer's loader decodes the case once. `need_labels` also requires a `seg`
/// file of the same shape.
pub fn check_upload(
    mut files: Vec<UploadedFile>,
    need_labels: bool,
) -> Result<CheckedUpload, UploadError> {
    if files.is_empty() {
        return Err(UploadError::NoFiles);
    }
    let mut roles: BTreeMap<String, usize> = BTreeMap::new();
    let mut shapes: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let (role, shape) = role_of(file)?;
        if let Some(previous) = roles.insert(role.clone(), i) {
            return Err(UploadError::SameRole {
                first: files[previous].file_name.clone(),
                second: file.file_name.clone(),
                role,
            });
        }
        shapes.push((i, shape));
    }
    check_roles(&roles, need_labels)?;
    let reference = one_grid(&files, &shapes)?;
    rename_to_roles(&mut files, &roles)?;
    // The trainer's own loader as the final word: whatever passes here, `cggm infer` can read.
    let paths: Vec<PathBuf> = roles.values().map(|i| files[*i].path.clone()).collect();
    let folder = paths.first().cloned().unwrap_or_default();
    let unreadable = |e: cggm_core::data::DataError| {
        UploadError::Unreadable(without_folder(&e.to_string(), &folder))
    };
    let case = cggm_core::data::case_from_paths(&paths).map_err(unreadable)?;
    cggm_core::data::load_study(&case).map_err(unreadable)?;
    Ok(CheckedUpload {
        roles,
        shape: reference,
        files,
    })
}

/// What an uploaded file is (a modality, `seg`, or `4d` for an MSD image), from its form field or
/// its name, and its shape from its header.
fn role_of(file: &UploadedFile) -> Result<(String, Vec<usize>), UploadError> {
    if !is_nifti_name(&file.file_name) {
        return Err(UploadError::NotNifti(file.file_name.clone()));
    }
    let shape = cggm_core::data::read_header(&file.path)
        .map_err(|e| UploadError::Unreadable(without_folder(&e.to_string(), &file.path)))?
        .dims;
    let labelled_field = matches!(file.field.as_str(), "seg" | "label");
    let role = if shape.len() == 4 && !labelled_field {
        if shape[3] != 4 {
            return Err(UploadError::Channels {
                file: file.file_name.clone(),
                channels: shape[3],
            });
        }
        "4d".to_string()
    } else {
        let from_field = MODALITIES
            .iter()
            .chain(["seg"].iter())
            .find(|m| **m == file.field)
            .copied()
            .or(labelled_field.then_some("seg"));
        match from_field.or_else(|| modality_of(&file.file_name)) {
            Some(m) => m.to_string(),
            None => return Err(UploadError::UnknownModality(file.file_name.clone())),
        }
    };
    if shape.len() != 3 && role != "4d" {
        return Err(UploadError::NotThreeD {
            file: file.file_name.clone(),
            shape,
        });
    }
    Ok((role, shape))
}

/// The roles make one study: a 4-D image alone, or all four modalities; and a label when
/// `need_labels`.
fn check_roles(roles: &BTreeMap<String, usize>, need_labels: bool) -> Result<(), UploadError> {
    if roles.contains_key("4d") {
        if let Some(extra) = MODALITIES.iter().find(|m| roles.contains_key(**m)) {
            return Err(UploadError::FourDWith(extra.to_string()));
        }
    } else {
        let missing: Vec<String> = MODALITIES
            .iter()
            .filter(|m| !roles.contains_key(**m))
            .map(|m| m.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(UploadError::Missing(missing));
        }
    }
    if need_labels && !roles.contains_key("seg") && !roles.contains_key("4d") {
        return Err(UploadError::NoLabels);
    }
    Ok(())
}

/// The spatial shape every file shares (the first file's), or which two differ.
fn one_grid(
    files: &[UploadedFile],
    shapes: &[(usize, Vec<usize>)],
) -> Result<Vec<usize>, UploadError> {
    let reference = shapes[0].1[..3].to_vec();
    for (i, shape) in shapes {
        if shape[..3] != reference[..] {
            return Err(UploadError::Grid {
                file: files[*i].file_name.clone(),
                shape: shape[..3].to_vec(),
                other: files[shapes[0].0].file_name.clone(),
                other_shape: reference,
            });
        }
    }
    Ok(reference)
}

/// Renames a file whose name does not say its role (it came by its form field) to
/// `upload_<role>.nii[.gz]`: a name the trainer recognises.
fn rename_to_roles(
    files: &mut [UploadedFile],
    roles: &BTreeMap<String, usize>,
) -> Result<(), UploadError> {
    for (role, index) in roles {
        let file = &mut files[*index];
        if role != "4d" && modality_of(&file.file_name) != Some(role.as_str()) {
            let ext = if file.file_name.to_ascii_lowercase().ends_with(".gz") {
                "nii.gz"
            } else {
                "nii"
            };
            let renamed = file.path.with_file_name(format!("upload_{role}.{ext}"));
            std::fs::rename(&file.path, &renamed).map_err(|error| UploadError::File {
                file: file.file_name.clone(),
                error,
            })?;
            file.file_name = format!("upload_{role}.{ext}");
            file.path = renamed;
        }
    }
    Ok(())
}

/// An error message about an uploaded file without the server's temporary folder in it: the
/// client knows the file by its name, and the data directory's layout is none of its business.
/// A dataset report's message with the files named relative to the dataset folder: the report
/// reaches every client of the server, the server's folder layout is none of their business.
fn within_dataset(message: &str, dir: &Path) -> String {
    let mut message = message.to_string();
    let canonical = dir.canonicalize().ok();
    for folder in canonical.iter().map(PathBuf::as_path).chain([dir]) {
        message = message.replace(&format!("{}/", folder.display()), "");
    }
    message
}

pub(crate) fn without_folder(message: &str, file: &Path) -> String {
    match file.parent() {
        Some(dir) => message.replace(&format!("{}/", dir.display()), ""),
        None => message.to_string(),
    }
}

/// A user-supplied name [`safe_name`] refuses.
#[derive(Debug, thiserror::Error)]
#[error("invalid name {0:?}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'")]
pub struct UnsafeName(pub String);

/// Safe single path component from a user-supplied name: letters, digits, `-`, `_`, `.`; no
/// leading dot, no separators. Everything else is rejected rather than rewritten.
pub fn safe_name(name: &str) -> Result<String, UnsafeName> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(UnsafeName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_comes_from_the_last_name_part() {
        assert_eq!(modality_of("BraTS2021_00000_t1ce.nii.gz"), Some("t1ce"));
        assert_eq!(modality_of("BraTS2021_00000_t1.nii"), Some("t1"));
        assert_eq!(modality_of("case-seg.NII.GZ"), Some("seg"));
        assert_eq!(modality_of("t2.nii.gz"), Some("t2"));
        assert_eq!(modality_of("BraTS2021_00000_t1ce.txt"), None);
        assert_eq!(modality_of("scan.nii.gz"), None);
        // BraTS 2023+ names, as the trainer reads them.
        assert_eq!(modality_of("BraTS-GLI-00000-000-t1c.nii.gz"), Some("t1ce"));
        assert_eq!(modality_of("BraTS-PED-00001-000-t1n.nii.gz"), Some("t1"));
        assert_eq!(modality_of("BraTS-MEN-00002-000-t2f.nii"), Some("flair"));
        assert_eq!(modality_of("BraTS-SSA-00003-000-t2w.nii.gz"), Some("t2"));
    }

    #[test]
    fn unsafe_names_are_rejected_not_rewritten() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "a b",
            "caf\u{e9}",
        ] {
            assert!(safe_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            safe_name("BraTS2021_00000_t1.nii.gz").unwrap(),
            "BraTS2021_00000_t1.nii.gz"
        );
    }
}
