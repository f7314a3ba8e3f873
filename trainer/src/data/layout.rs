//! Dataset discovery: the BraTS 2021 layout (one folder per case, one file per modality) and the
//! Medical Segmentation Decathlon Task01 layout (`imagesTr/` 4-D images, `labelsTr/`). Discovery
//! only looks at names; [`super::validate_dataset`] opens the files. A bad case is reported in
//! `problems` and never stops the others from being found.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{CaseFiles, CaseProblem, CaseSource, DataError, Modality};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `CASE/CASE_{flair,t1,t1ce,t2,seg}.nii.gz` (BraTS 2021; BraTS 2023 suffixes also accepted).
    BraTS2021,
    /// `imagesTr/CASE.nii.gz` (4-D: FLAIR, T1w, T1gd, T2w) and `labelsTr/CASE.nii.gz`.
    MsdTask01,
    /// Nothing recognisable.
    Empty,
}

#[derive(Clone, Debug)]
pub struct DiscoveryReport {
    pub layout: Layout,
    /// Cases that look complete, sorted by id.
    pub cases: Vec<CaseSource>,
    /// Cases that were skipped, and why.
    pub problems: Vec<CaseProblem>,
}

fn is_nifti_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && (lower.ends_with(".nii") || lower.ends_with(".nii.gz"))
}

/// File name without `.nii` / `.nii.gz`.
pub(crate) fn nifti_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    for ext in [".nii.gz", ".nii"] {
        if lower.ends_with(ext) {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    name
}

/// What a file is, judged by the suffix of its name after the last `_` or `-`.
#[derive(Debug, PartialEq)]
enum FileRole {
    Image(Modality),
    Label,
    Unknown,
}

/// Returns the role and the name part before the suffix (the case id for BraTS names).
fn file_role(path: &Path) -> (FileRole, String) {
    let stem = nifti_stem(path);
    let Some(cut) = stem.rfind(['_', '-']) else {
        return (FileRole::Unknown, stem);
    };
    let (prefix, suffix) = (&stem[..cut], &stem[cut + 1..]);
    let lower = suffix.to_ascii_lowercase();
    if matches!(lower.as_str(), "seg" | "label" | "labels" | "mask" | "gt") {
        (FileRole::Label, prefix.to_string())
    } else if let Some(m) = Modality::parse(&lower) {
        (FileRole::Image(m), prefix.to_string())
    } else {
        (FileRole::Unknown, stem)
    }
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

fn nifti_files(dir: &Path) -> Vec<PathBuf> {
    sorted_entries(dir)
        .into_iter()
        .filter(|p| {
            p.is_file() && is_nifti_name(&p.file_name().unwrap_or_default().to_string_lossy())
        })
        .collect()
}

/// Groups the files of one BraTS case folder by modality.
fn brats_case(id: &str, dir: &Path, files: &[PathBuf]) -> Result<CaseSource, DataError> {
    let mut images: [Option<PathBuf>; 4] = Default::default();
    let mut label: Option<PathBuf> = None;
    for file in files {
        match file_role(file).0 {
            FileRole::Image(m) => {
                if let Some(first) = &images[m.index()] {
                    return Err(DataError::DuplicateModality {
                        case: id.to_string(),
                        modality: m,
                        first: first.clone(),
                        second: file.clone(),
                    });
                }
                images[m.index()] = Some(file.clone());
            }
            FileRole::Label => {
                if let Some(first) = &label {
                    return Err(DataError::UnrecognisedInput {
                        file: file.clone(),
                        detail: format!(
                            "case {id} has two label files ({} and this one); keep one",
                            first.display()
                        ),
                    });
                }
                label = Some(file.clone());
            }
            FileRole::Unknown => {}
        }
    }
    for m in Modality::ALL {
        if images[m.index()].is_none() {
            return Err(DataError::MissingModality {
                case: id.to_string(),
                modality: m,
                dir: dir.to_path_buf(),
            });
        }
    }
    let images = images.map(|p| p.expect("checked above"));
    Ok(CaseSource {
        id: id.to_string(),
        files: CaseFiles::Separate { images, label },
    })
}

fn msd_root(dir: &Path) -> Option<PathBuf> {
    if dir.join("imagesTr").is_dir() {
        return Some(dir.to_path_buf());
    }
    let tasks: Vec<PathBuf> = sorted_entries(dir)
        .into_iter()
        .filter(|p| p.join("imagesTr").is_dir())
        .collect();
    (tasks.len() == 1).then(|| tasks[0].clone())
}

fn discover_msd(root: &Path) -> DiscoveryReport {
    let cases = nifti_files(&root.join("imagesTr"))
        .into_iter()
        .map(|image| {
            let label = root
                .join("labelsTr")
                .join(image.file_name().expect("a file"));
            CaseSource {
                id: nifti_stem(&image),
                files: CaseFiles::Msd4d {
                    image,
                    label: label.is_file().then_some(label),
                },
            }
        })
        .collect();
    DiscoveryReport {
        layout: Layout::MsdTask01,
        cases,
        problems: Vec::new(),
    }
}

fn discover_brats(dir: &Path, depth: usize) -> DiscoveryReport {
    let mut report = DiscoveryReport {
        layout: Layout::Empty,
        cases: Vec::new(),
        problems: Vec::new(),
    };
    let subdirs: Vec<PathBuf> = sorted_entries(dir)
        .into_iter()
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .starts_with('.')
        })
        .collect();
    for sub in &subdirs {
        let files = nifti_files(sub);
        if files.is_empty() {
            continue;
        }
        let id = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match brats_case(&id, sub, &files) {
            Ok(case) => report.cases.push(case),
            Err(error) => report.problems.push(CaseProblem { case: id, error }),
        }
    }
    // The folder may itself be one case, or wrap the case folders once more
    // (e.g. `BraTS2021_Training_Data/`).
    if report.cases.is_empty() && report.problems.is_empty() {
        let files = nifti_files(dir);
        if files
            .iter()
            .any(|f| matches!(file_role(f).0, FileRole::Image(_)))
        {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match brats_case(&id, dir, &files) {
                Ok(case) => report.cases.push(case),
                Err(error) => report.problems.push(CaseProblem { case: id, error }),
            }
        } else if depth == 0 && subdirs.len() == 1 {
            return discover_brats(&subdirs[0], depth + 1);
        }
    }
    if !report.cases.is_empty() || !report.problems.is_empty() {
        report.layout = Layout::BraTS2021;
    }
    report
}

/// Finds the cases under `dir` by file names only (see [`super::validate_dataset`] for the full
/// check). Cases are sorted by id.
pub fn discover(dir: &Path) -> DiscoveryReport {
    if !dir.is_dir() {
        let error = match std::fs::metadata(dir) {
            Err(e) => DataError::io(dir, &e),
            Ok(_) => DataError::UnrecognisedInput {
                file: dir.to_path_buf(),
                detail: "a dataset must be a folder".into(),
            },
        };
        return DiscoveryReport {
            layout: Layout::Empty,
            cases: Vec::new(),
            problems: vec![CaseProblem {
                case: dir.display().to_string(),
                error,
            }],
        };
    }
    let mut report = match msd_root(dir) {
        Some(root) => discover_msd(&root),
        None => discover_brats(dir, 0),
    };
    report.cases.sort_by(|a, b| a.id.cmp(&b.id));
    report
}

/// Builds one case for inference from what a user uploads or names: a BraTS case folder, four
/// modality files (recognised by their name suffix, e.g. `_flair`, `_t1ce`/`_t1gd`/`_t1c`, `_t1`,
/// `_t2`, BraTS 2023 `_t2f`/`_t1n`/`_t2w`), or one 4-D MSD image; optionally a label (`_seg`, or a
/// file in a `labelsTr` folder).
pub fn case_from_paths(paths: &[PathBuf]) -> Result<CaseSource, DataError> {
    if paths.len() == 1 && paths[0].is_dir() {
        let dir = &paths[0];
        let files = nifti_files(dir);
        if files.is_empty() {
            return Err(DataError::UnrecognisedInput {
                file: dir.clone(),
                detail: "the folder holds no .nii or .nii.gz file".into(),
            });
        }
        if files.len() <= 2
            && !files
                .iter()
                .any(|f| matches!(file_role(f).0, FileRole::Image(_)))
        {
            return case_from_paths(&files);
        }
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return brats_case(&id, dir, &files);
    }
    if paths.is_empty() {
        return Err(DataError::UnrecognisedInput {
            file: PathBuf::new(),
            detail: "no file given".into(),
        });
    }
    let in_label_folder = |p: &Path| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| {
                n.to_string_lossy()
                    .to_ascii_lowercase()
                    .starts_with("label")
            })
            .unwrap_or(false)
    };
    let mut unknown = Vec::new();
    let mut label = None;
    let mut has_modality_files = false;
    let mut id = None;
    for path in paths {
        let (role, prefix) = file_role(path);
        match role {
            FileRole::Label => label = Some(path.clone()),
            FileRole::Image(_) => {
                has_modality_files = true;
                id.get_or_insert(prefix);
            }
            FileRole::Unknown if in_label_folder(path) => label = Some(path.clone()),
            FileRole::Unknown => unknown.push(path.clone()),
        }
    }
    if has_modality_files {
        if let Some(extra) = unknown.first() {
            return Err(DataError::UnrecognisedInput {
                file: extra.clone(),
                detail:
                    "its name does not end in a modality suffix (_flair, _t1ce, _t1, _t2) or _seg"
                        .into(),
            });
        }
        let id = id.unwrap_or_default();
        let dir = paths[0].parent().unwrap_or(Path::new(".")).to_path_buf();
        return brats_case(&id, &dir, paths);
    }
    match unknown.as_slice() {
        [image] => Ok(CaseSource {
            id: nifti_stem(image),
            files: CaseFiles::Msd4d {
                image: image.clone(),
                label,
            },
        }),
        [] => Err(DataError::UnrecognisedInput {
            file: paths[0].clone(),
            detail: "only a label was given, no image".into(),
        }),
        [_, second, ..] => Err(DataError::UnrecognisedInput {
            file: second.clone(),
            detail: "several files without a modality suffix; name them CASE_flair/_t1ce/_t1/_t2, or give one 4-D MSD image".into(),
        }),
    }
}
