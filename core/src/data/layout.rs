//! Dataset discovery, the one place that decides what a folder is: BraTS 2021 or 2023+ (one folder
//! per case, one file per modality), the Medical Segmentation Decathlon Task01 (`imagesTr/` 4-D
//! images, `labelsTr/`, its `dataset.json`) or nnU-Net v2 raw data (`imagesTr/CASE_000X`,
//! `labelsTr/`, `dataset.json` with `channel_names`). Discovery only looks at names and the
//! description; [`super::validate_dataset`] opens the volumes. A bad case is reported in
//! `problems` and never stops the others from being found; a file that leads outside the dataset
//! folder through a link is one.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::description::{MsdDescription, NnUnetDescription, TaskDescription, DESCRIPTION_FILE};
use super::{CaseFiles, CaseProblem, CaseSource, DataError, LabelValues, Modality, MSD_CHANNELS};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `CASE/CASE_{flair,t1,t1ce,t2,seg}.nii.gz` (BraTS 2021 and earlier).
    BraTS2021,
    /// `CASE/CASE-{t2f,t1c,t1n,t2w,seg}.nii.gz` (BraTS 2023+: GLI, MEN, MET, PED, SSA).
    BraTS2023,
    /// `imagesTr/CASE.nii.gz` (4-D, channels as `dataset.json`'s `modality` says) and
    /// `labelsTr/CASE.nii.gz`.
    MsdTask01,
    /// `imagesTr/CASE_000X.nii.gz` (one file per channel, named by `channel_names`) and
    /// `labelsTr/CASE.nii.gz`.
    NnUnetV2,
    /// Nothing recognisable.
    Empty,
}

impl Layout {
    /// A stable key for APIs and the database.
    pub fn key(self) -> &'static str {
        match self {
            Layout::BraTS2021 => "brats2021",
            Layout::BraTS2023 => "brats2023",
            Layout::MsdTask01 => "msd",
            Layout::NnUnetV2 => "nnunet-v2",
            Layout::Empty => "empty",
        }
    }

    /// What a user reads (`cggm validate`, the datasets page).
    pub fn describe(self) -> &'static str {
        match self {
            Layout::BraTS2021 => "BraTS 2021 (one folder per case: _flair, _t1ce, _t1, _t2, _seg)",
            Layout::BraTS2023 => "BraTS 2023+ (one folder per case: -t2f, -t1c, -t1n, -t2w, -seg)",
            Layout::MsdTask01 => "MSD Task01 (imagesTr/ 4-D images, labelsTr/, dataset.json)",
            Layout::NnUnetV2 => "nnU-Net v2 raw (imagesTr/CASE_000X, labelsTr/, dataset.json)",
            Layout::Empty => "none recognised",
        }
    }
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
        files: CaseFiles::Separate {
            images,
            label,
            label_values: LabelValues::Brats,
        },
    })
}

/// The folder holding `imagesTr/`: `dir` itself, or its one sub-folder that has one (an MSD or
/// nnU-Net download unpacked into a parent folder).
fn task_root(dir: &Path) -> Option<PathBuf> {
    if dir.join("imagesTr").is_dir() {
        return Some(dir.to_path_buf());
    }
    let tasks: Vec<PathBuf> = sorted_entries(dir)
        .into_iter()
        .filter(|p| p.join("imagesTr").is_dir())
        .collect();
    (tasks.len() == 1).then(|| tasks[0].clone())
}

fn empty_report(layout: Layout) -> DiscoveryReport {
    DiscoveryReport {
        layout,
        cases: Vec::new(),
        problems: Vec::new(),
    }
}

/// A problem with the dataset as a whole (its `dataset.json`), reported under the file's name.
fn dataset_problem(layout: Layout, file: &Path, detail: String) -> DiscoveryReport {
    let mut report = empty_report(layout);
    report.problems.push(CaseProblem {
        case: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        error: DataError::DatasetDescription {
            file: file.to_path_buf(),
            detail,
        },
    });
    report
}

/// Decides between MSD and nnU-Net v2 for a folder with `imagesTr/` by what its description
/// says (`channel_names` is nnU-Net v2's, `modality` MSD's), or without one by the file names
/// (nnU-Net's `CASE_0000` channel files).
fn discover_task(root: &Path) -> DiscoveryReport {
    match TaskDescription::read(root) {
        Ok(TaskDescription::NnUnet(description)) => discover_nnunet(root, &description),
        Ok(TaskDescription::Msd(description)) => discover_msd(root, &description),
        Ok(TaskDescription::Missing) if has_nnunet_channel_files(root) => dataset_problem(
            Layout::NnUnetV2,
            &root.join(DESCRIPTION_FILE),
            "imagesTr/ holds nnU-Net v2 channel files (CASE_0000…) but there is no dataset.json \
             to say which channel is which modality; add it with \"channel_names\""
                .into(),
        ),
        Ok(TaskDescription::Missing) => discover_msd(root, &MsdDescription::default()),
        Err((layout, detail)) => {
            dataset_problem(layout, &root.join(DESCRIPTION_FILE), detail.to_string())
        }
    }
}

fn has_nnunet_channel_files(root: &Path) -> bool {
    nifti_files(&root.join("imagesTr"))
        .iter()
        .any(|f| split_channel_suffix(&nifti_stem(f)).is_some())
}

/// `BraTS_001_0002` -> (`BraTS_001`, 2): nnU-Net's four-digit channel suffix.
fn split_channel_suffix(stem: &str) -> Option<(&str, usize)> {
    let (case, digits) = stem.rsplit_once('_')?;
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) && !case.is_empty())
        .then(|| (case, digits.parse().expect("four digits")))
}

fn discover_msd(root: &Path, description: &MsdDescription) -> DiscoveryReport {
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
                    channels: description.channels,
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

fn discover_nnunet(root: &Path, description: &NnUnetDescription) -> DiscoveryReport {
    let mut report = empty_report(Layout::NnUnetV2);
    let channels_of = nnunet_channel_files(root, description, &mut report.problems);
    for (case, files) in channels_of {
        if let Some(case) = nnunet_case(root, description, case, &files, &mut report.problems) {
            report.cases.push(case);
        }
    }
    report
}

/// `imagesTr`'s files by case: each case's `(channel, file)` pairs from the `CASE_XXXX` names; a
/// name without a channel number is a problem.
fn nnunet_channel_files(
    root: &Path,
    description: &NnUnetDescription,
    problems: &mut Vec<CaseProblem>,
) -> std::collections::BTreeMap<String, Vec<(usize, PathBuf)>> {
    let ending = description.file_ending.to_ascii_lowercase();
    let mut channels_of: std::collections::BTreeMap<String, Vec<(usize, PathBuf)>> =
        Default::default();
    for file in sorted_entries(&root.join("imagesTr")) {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !file.is_file() {
            continue;
        }
        let Some(stem) = name
            .to_ascii_lowercase()
            .ends_with(&ending)
            .then(|| &name[..name.len() - ending.len()])
        else {
            continue;
        };
        match split_channel_suffix(stem) {
            Some((case, channel)) => channels_of
                .entry(case.to_string())
                .or_default()
                .push((channel, file.clone())),
            None => problems.push(CaseProblem {
                case: stem.to_string(),
                error: DataError::UnrecognisedInput {
                    file: file.clone(),
                    detail: "nnU-Net v2 images are named CASE_XXXX with a four-digit channel \
                             number (CASE_0000, CASE_0001, …)"
                        .into(),
                },
            }),
        }
    }
    channels_of
}

/// One nnU-Net case from its channel files (in the project's modality order, by
/// `dataset.json`'s channel names) and its label in `labelsTr` when there is one; a case missing
/// a channel is a problem instead.
fn nnunet_case(
    root: &Path,
    description: &NnUnetDescription,
    case: String,
    files: &[(usize, PathBuf)],
    problems: &mut Vec<CaseProblem>,
) -> Option<CaseSource> {
    let mut images: [Option<PathBuf>; 4] = Default::default();
    let mut missing = Vec::new();
    for (channel, modality) in description.channels.iter().enumerate() {
        match files.iter().find(|(c, _)| *c == channel) {
            Some((_, file)) => images[modality.index()] = Some(file.clone()),
            None => missing.push(*modality),
        }
    }
    if let Some(&modality) = missing.first() {
        problems.push(CaseProblem {
            case: case.clone(),
            error: DataError::MissingModality {
                case,
                modality,
                dir: root.join("imagesTr"),
            },
        });
        return None;
    }
    let label = root
        .join("labelsTr")
        .join(format!("{case}{}", description.file_ending));
    Some(CaseSource {
        id: case,
        files: CaseFiles::Separate {
            images: images.map(|p| p.expect("checked above")),
            label: label.is_file().then_some(label),
            label_values: description.label_values,
        },
    })
}

fn discover_brats(dir: &Path, depth: usize) -> DiscoveryReport {
    let mut report = empty_report(Layout::Empty);
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
        report.layout = if report.cases.iter().any(uses_brats2023_names) {
            Layout::BraTS2023
        } else {
            Layout::BraTS2021
        };
    }
    report
}

/// BraTS 2023+ releases (GLI, MEN, MET, PED, SSA) name the modalities t1c, t1n, t2f and t2w.
fn uses_brats2023_names(case: &CaseSource) -> bool {
    case.paths().iter().any(|p| {
        let stem = nifti_stem(p).to_ascii_lowercase();
        ["t1c", "t1n", "t2f", "t2w"]
            .iter()
            .any(|s| stem.ends_with(&format!("-{s}")) || stem.ends_with(&format!("_{s}")))
    })
}

/// Moves every case with a file that resolves (through links) outside `root` to the problems:
/// a dataset folder never gives access to anything outside it.
fn confine(report: &mut DiscoveryReport, root: &Path) {
    let Ok(root) = root.canonicalize() else {
        return;
    };
    let (inside, outside): (Vec<CaseSource>, Vec<CaseSource>) = std::mem::take(&mut report.cases)
        .into_iter()
        .partition(|case| case.paths().iter().all(|p| is_inside(p, &root)));
    report.cases = inside;
    for case in outside {
        let file = case
            .paths()
            .into_iter()
            .find(|p| !is_inside(p, &root))
            .expect("partitioned on it");
        report.problems.push(CaseProblem {
            case: case.id.clone(),
            error: DataError::OutsideDataset {
                case: case.id,
                file,
                root: root.clone(),
            },
        });
    }
}

/// Whether `path` resolves, after every link, to a place inside `root` (already canonical).
fn is_inside(path: &Path, root: &Path) -> bool {
    path.canonicalize().is_ok_and(|p| p.starts_with(root))
}

/// Finds the cases under `dir` by their layout: nnU-Net v2 raw or MSD (`imagesTr/`, told apart by
/// their `dataset.json`), else BraTS (one folder per case). Only names and the description are
/// read here; [`super::validate_dataset`] opens the volumes. Files that lead outside `dir`
/// through links are never used. Cases are sorted by id.
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
    let mut report = match task_root(dir) {
        Some(root) => discover_task(&root),
        None => discover_brats(dir, 0),
    };
    confine(&mut report, dir);
    report.cases.sort_by(|a, b| a.id.cmp(&b.id));
    report.problems.sort_by(|a, b| a.case.cmp(&b.case));
    report
}

/// Builds one case for inference from what a user uploads or names: a BraTS case folder, four
/// modality files (recognised by their name suffix, e.g. `_flair`, `_t1ce`/`_t1gd`/`_t1c`, `_t1`,
/// `_t2`, BraTS 2023 `_t2f`/`_t1n`/`_t2w`), or one 4-D MSD image; optionally a label (`_seg`, or a
/// file in a `labelsTr` folder).
pub fn case_from_paths(paths: &[PathBuf]) -> Result<CaseSource, DataError> {
    if paths.len() == 1 && paths[0].is_dir() {
        return case_from_folder(&paths[0]);
    }
    if paths.is_empty() {
        return Err(DataError::UnrecognisedInput {
            file: PathBuf::new(),
            detail: "no file given".into(),
        });
    }
    let files = GivenFiles::sort(paths);
    if files.has_modality_files {
        if let Some(extra) = files.unknown.first() {
            return Err(DataError::UnrecognisedInput {
                file: extra.clone(),
                detail:
                    "its name does not end in a modality suffix (_flair, _t1ce, _t1, _t2) or _seg"
                        .into(),
            });
        }
        let id = files.id.unwrap_or_default();
        let dir = paths[0].parent().unwrap_or(Path::new(".")).to_path_buf();
        return brats_case(&id, &dir, paths);
    }
    match files.unknown.as_slice() {
        [image] => Ok(CaseSource {
            id: nifti_stem(image),
            files: CaseFiles::Msd4d {
                image: image.clone(),
                label: files.label,
                channels: MSD_CHANNELS,
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

/// A case folder: a BraTS case, or (at most two files, none a modality file) an MSD image and
/// its label.
fn case_from_folder(dir: &Path) -> Result<CaseSource, DataError> {
    let files = nifti_files(dir);
    if files.is_empty() {
        return Err(DataError::UnrecognisedInput {
            file: dir.to_path_buf(),
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
    brats_case(&id, dir, &files)
}

/// Given files sorted by their names' role.
struct GivenFiles {
    /// Neither a modality file nor a label.
    unknown: Vec<PathBuf>,
    /// `_seg`, or a file in a `label*` folder (the last one given).
    label: Option<PathBuf>,
    has_modality_files: bool,
    /// The case id: the first modality file's name before its suffix.
    id: Option<String>,
}

impl GivenFiles {
    fn sort(paths: &[PathBuf]) -> Self {
        let mut files = GivenFiles {
            unknown: Vec::new(),
            label: None,
            has_modality_files: false,
            id: None,
        };
        for path in paths {
            let (role, prefix) = file_role(path);
            match role {
                FileRole::Label => files.label = Some(path.clone()),
                FileRole::Image(_) => {
                    files.has_modality_files = true;
                    files.id.get_or_insert(prefix);
                }
                FileRole::Unknown if in_label_folder(path) => files.label = Some(path.clone()),
                FileRole::Unknown => files.unknown.push(path.clone()),
            }
        }
        files
    }
}

/// The file lies in a folder whose name starts with "label" (`labelsTr`).
fn in_label_folder(p: &Path) -> bool {
    p.parent()
        .and_then(|d| d.file_name())
        .map(|n| {
            n.to_string_lossy()
                .to_ascii_lowercase()
                .starts_with("label")
        })
        .unwrap_or(false)
}
