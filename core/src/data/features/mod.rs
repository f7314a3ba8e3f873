//! Feature datasets: pre-extracted features per modality (the paper's input for CMU-MOSI, IEMOCAP
//! and UPMC-Food 101), for classification and regression.
//!
//! A feature dataset is a folder:
//! - `dataset.json` ([`DatasetSpec`]): the task kind, the modalities with their feature dimension
//!   and sequence length, the class names (classification) or the label range (regression);
//! - `train.safetensors`, `valid.safetensors`, `test.safetensors`: per modality a float tensor
//!   named after it, `[N, T, D]` (a sequence) or `[N, D]` (one vector, read as T = 1), optionally
//!   `<modality>.lengths` `[N]` integers (valid time steps, the rest is padding), and `labels`
//!   `[N]` (integers for classification, floats for regression).
//!
//! Headers are read first; tensors are read only when needed, in chunks (see [`safetensors`]).

pub mod safetensors;
pub mod synth;

use crate::task::TaskKind;
use safetensors::SafetensorsFile;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file that marks a folder as a feature dataset.
pub const SPEC_FILE: &str = "dataset.json";
/// The split names, in order, and their files.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];
/// The tensor holding the labels in every split file.
pub const LABELS: &str = "labels";

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
}

/// Why a `dataset.json` contradicts itself (see [`DatasetSpec::check`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("task \"segmentation\" is for NIfTI datasets; a feature dataset is \"classification\" or \"regression\"")]
    Segmentation,
    #[error("a classification dataset needs at least 2 class names in \"classes\", got {0}")]
    TooFewClasses(usize),
    #[error("label_range [{lo}, {hi}] must be two finite numbers, low < high")]
    LabelRange { lo: f64, hi: f64 },
    #[error("\"modalities\" is empty: list at least one {{\"name\", \"dim\", \"seq_len\"}}")]
    NoModalities,
    #[error(
        "{what} name {name:?} is not usable: use 1-{max} letters, digits, spaces (not at either \
         end) and {}",
        .punctuation.chars().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(" ")
    )]
    UnsafeName {
        what: &'static str,
        name: String,
        max: usize,
        punctuation: &'static str,
    },
    #[error("modality name {LABELS:?} is taken by the labels tensor: rename the modality")]
    LabelsName,
    #[error("modality {0:?} is listed twice")]
    Twice(String),
    #[error("modality {0:?}: dim and seq_len must be at least 1")]
    EmptyModality(String),
}

fn file_error(path: &Path, problem: impl Into<String>) -> FeatureError {
    FeatureError::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// One modality of a feature dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureModality {
    pub name: String,
    /// Feature dimension D.
    pub dim: usize,
    /// Sequence length T; `None` (or 1) for one vector per sample (`[N, D]`).
    #[serde(default)]
    pub seq_len: Option<usize>,
}

impl FeatureModality {
    pub fn steps(&self) -> usize {
        self.seq_len.unwrap_or(1)
    }
}

/// `dataset.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Always "cggm-features" (lets tools tell this file from other dataset.json files).
    #[serde(default = "format_name")]
    pub format: String,
    /// `classification` or `regression`.
    pub task: TaskKind,
    pub modalities: Vec<FeatureModality>,
    /// Classification: one name per class; labels are 0..classes.len().
    #[serde(default)]
    pub classes: Vec<String>,
    /// Regression: the range labels lie in (MOSI: [-3, 3]); values outside are an error.
    #[serde(default)]
    pub label_range: Option<[f64; 2]>,
    /// Free text: where the features came from.
    #[serde(default)]
    pub description: String,
}

fn format_name() -> String {
    "cggm-features".into()
}

impl DatasetSpec {
    pub fn read(dir: &Path) -> Result<Self, FeatureError> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| file_error(&path, format!("cannot read it: {e}")))?;
        let spec: Self = serde_json::from_str(&text).map_err(|e| {
            file_error(&path, format!("not a valid feature dataset description ({e}); see README \"Feature datasets\" for the fields"))
        })?;
        spec.check().map_err(|p| file_error(&path, p.to_string()))?;
        Ok(spec)
    }

    /// Internal consistency of the description itself.
    pub fn check(&self) -> Result<(), SpecError> {
        match self.task {
            TaskKind::Segmentation => return Err(SpecError::Segmentation),
            TaskKind::Classification if self.classes.len() < 2 => {
                return Err(SpecError::TooFewClasses(self.classes.len()))
            }
            _ => {}
        }
        if let Some([lo, hi]) = self.label_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(SpecError::LabelRange { lo, hi });
            }
        }
        if self.modalities.is_empty() {
            return Err(SpecError::NoModalities);
        }
        for class in &self.classes {
            safe_name("class", class, 64, NAME_PUNCTUATION)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.modalities {
            // No '.' or '/': `<modality>.lengths` names a tensor in the split files.
            safe_name("modality", &m.name, 32, MODALITY_PUNCTUATION)?;
            if m.name == LABELS {
                return Err(SpecError::LabelsName);
            }
            if !seen.insert(&m.name) {
                return Err(SpecError::Twice(m.name.clone()));
            }
            if m.dim == 0 || m.seq_len == Some(0) {
                return Err(SpecError::EmptyModality(m.name.clone()));
            }
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.modalities.iter().map(|m| m.name.clone()).collect()
    }

    /// Output width of the model: the number of classes, or 1 for regression.
    pub fn outputs(&self) -> i64 {
        match self.task {
            TaskKind::Classification => self.classes.len() as i64,
            _ => 1,
        }
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(SPEC_FILE),
            serde_json::to_vec_pretty(self).expect("spec serialises"),
        )
    }
}

/// Punctuation a class name may hold besides letters, digits and spaces.
const NAME_PUNCTUATION: &str = "-_.+/()";
/// The same for a modality name.
const MODALITY_PUNCTUATION: &str = "-_+()";

/// Names from `dataset.json` end up in pages, charts and file names: letters, digits, spaces and
/// a little punctuation only (no `<`, `>`, `&`, quotes or `=`, so no name can be read as markup),
/// 1 to `max` characters, no space at either end.
fn safe_name(
    what: &'static str,
    name: &str,
    max: usize,
    punctuation: &'static str,
) -> Result<(), SpecError> {
    let length = name.chars().count();
    let allowed = |c: char| c.is_alphanumeric() || c == ' ' || punctuation.contains(c);
    if (1..=max).contains(&length) && name.trim() == name && name.chars().all(allowed) {
        return Ok(());
    }
    Err(SpecError::UnsafeName {
        what,
        name: name.to_string(),
        max,
        punctuation,
    })
}

/// Whether `dir` is a feature dataset: its `dataset.json` says `"format": "cggm-features"`, or (as
/// files written before the marker) carries no format and lists feature `modalities` with a
/// `task`. MSD and nnU-Net folders have a `dataset.json` too; theirs is none of these.
pub fn is_feature_dataset(dir: &Path) -> bool {
    let path = dir.join(SPEC_FILE);
    let small = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() < 16 * 1024 * 1024);
    let Some(json) = small
        .then(|| std::fs::read_to_string(&path).ok())
        .flatten()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    else {
        return false;
    };
    match json.get("format") {
        Some(format) => format == "cggm-features",
        None => {
            json.get("task").is_some_and(serde_json::Value::is_string)
                && json
                    .get("modalities")
                    .is_some_and(serde_json::Value::is_array)
        }
    }
}

pub fn split_path(dir: &Path, split: &str) -> PathBuf {
    dir.join(format!("{split}.safetensors"))
}

/// What `validate` found: samples per split (problems are errors).
#[derive(Clone, Debug, Serialize)]
pub struct FeatureReport {
    pub spec: DatasetSpec,
    pub samples: Vec<(String, usize)>,
}

/// Checks one split file against the description without loading it whole: tensors present,
/// shapes and dtypes, lengths, label kind and range, every feature value finite (streamed).
pub fn check_split(spec: &DatasetSpec, path: &Path) -> Result<usize, FeatureError> {
    let file = SafetensorsFile::open(path)?;
    let n = check_label_tensor(spec, &file, path)?;
    check_label_values(spec, &file, path)?;
    for m in &spec.modalities {
        check_modality(m, n, &file, path)?;
        check_lengths(m, n, &file, path)?;
    }
    Ok(n)
}

/// The labels tensor's presence, shape and dtype; its sample count.
fn check_label_tensor(
    spec: &DatasetSpec,
    file: &SafetensorsFile,
    path: &Path,
) -> Result<usize, FeatureError> {
    let bad = |p: String| file_error(path, p);
    let labels = file.info(LABELS).ok_or_else(|| {
        bad(format!(
            "it holds no \"{LABELS}\" tensor: add the labels [N] under that name"
        ))
    })?;
    if labels.shape.len() != 1 && !(labels.shape.len() == 2 && labels.shape[1] == 1) {
        return Err(bad(format!(
            "\"{LABELS}\" has shape {:?}; it must be [N]",
            labels.shape
        )));
    }
    let n = labels.shape[0];
    if n == 0 {
        return Err(bad("the split holds zero samples: put samples in it, or re-split the data (scripts/import-features.py --valid-fraction)".into()));
    }
    match spec.task {
        TaskKind::Classification if labels.dtype.is_float() => {
            return Err(bad(format!("\"{LABELS}\" are floats ({:?}) but the task is classification: store class indices 0..{} as I64", labels.dtype, spec.classes.len() - 1)));
        }
        _ => {}
    }
    Ok(n)
}

/// Every label is a class index (classification) or a finite value in `label_range`.
fn check_label_values(
    spec: &DatasetSpec,
    file: &SafetensorsFile,
    path: &Path,
) -> Result<(), FeatureError> {
    let classes = spec.classes.len() as f64;
    let range = spec.label_range;
    file.for_each_chunk(LABELS, |start, values| {
        for (k, v) in values.iter().enumerate() {
            let ok = match spec.task {
                TaskKind::Classification => *v >= 0.0 && *v < classes && v.fract() == 0.0,
                _ => v.is_finite() && range.is_none_or(|[lo, hi]| *v >= lo && *v <= hi),
            };
            if !ok {
                let expect = match (spec.task, range) {
                    (TaskKind::Classification, _) => {
                        format!("a class index in 0..{}", classes as usize - 1)
                    }
                    (_, Some([lo, hi])) => format!("a finite value in label_range [{lo}, {hi}]"),
                    _ => "a finite value".into(),
                };
                return Err(file_error(
                    path,
                    format!(
                        "label {} is {v}, expected {expect}: fix the labels or dataset.json",
                        start + k
                    ),
                ));
            }
        }
        Ok(())
    })
}

/// A modality's tensor: present, floats, the shape dataset.json and the `n` labels give, finite.
fn check_modality(
    m: &FeatureModality,
    n: usize,
    file: &SafetensorsFile,
    path: &Path,
) -> Result<(), FeatureError> {
    let bad = |p: String| file_error(path, p);
    let info = file.info(&m.name).ok_or_else(|| {
        bad(format!("modality {:?} is missing: add a tensor named {:?} ([N, T, D] or [N, D]) or remove it from dataset.json", m.name, m.name))
    })?;
    if !info.dtype.is_float() {
        return Err(bad(format!(
            "modality {:?} has dtype {:?}; features must be floats (F32)",
            m.name, info.dtype
        )));
    }
    let expected: Vec<usize> = match m.seq_len {
        Some(t) => vec![n, t, m.dim],
        None => vec![n, m.dim],
    };
    let vector_ok = m.steps() == 1 && info.shape == [n, m.dim];
    if info.shape != expected && !vector_ok {
        return Err(bad(format!(
            "modality {:?} has shape {:?} but dataset.json and the {n} labels say {:?}: fix dim/seq_len in dataset.json or the tensor",
            m.name, info.shape, expected
        )));
    }
    let row = m.steps() * m.dim;
    file.for_each_chunk(&m.name, |start, values| {
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            let at = start + k;
            return Err(bad(format!(
                "modality {:?} holds a non-finite value ({}) at sample {}: replace NaN/inf (scripts/import-features.py does) and write the file again",
                m.name, values[k], at / row
            )));
        }
        Ok(())
    })
}

/// A modality's optional `<name>.lengths`: `n` integers in 1..=steps.
fn check_lengths(
    m: &FeatureModality,
    n: usize,
    file: &SafetensorsFile,
    path: &Path,
) -> Result<(), FeatureError> {
    let len_name = format!("{}.lengths", m.name);
    let Some(info) = file.info(&len_name) else {
        return Ok(());
    };
    if info.shape != [n] || info.dtype.is_float() {
        return Err(file_error(
            path,
            format!(
                "{len_name:?} must be [N] integers, got {:?} {:?}",
                info.shape, info.dtype
            ),
        ));
    }
    let steps = m.steps() as f64;
    file.for_each_chunk(&len_name, |start, values| {
        if let Some(k) = values.iter().position(|v| *v < 1.0 || *v > steps) {
            return Err(file_error(
                path,
                format!(
                    "{len_name:?}[{}] is {}, must be 1..={steps}",
                    start + k,
                    values[k]
                ),
            ));
        }
        Ok(())
    })
}

/// Checks a whole feature dataset: the description and every split.
pub fn validate_features(dir: &Path) -> Result<FeatureReport, FeatureError> {
    let spec = DatasetSpec::read(dir)?;
    let mut samples = Vec::new();
    for split in SPLITS {
        let path = split_path(dir, split);
        if !path.is_file() {
            return Err(file_error(&path, format!("the {split} split is missing: write {split}.safetensors (a feature dataset needs train, valid and test)")));
        }
        samples.push((split.to_string(), check_split(&spec, &path)?));
    }
    Ok(FeatureReport { spec, samples })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(modality: &str, classes: &[&str]) -> DatasetSpec {
        DatasetSpec {
            format: format_name(),
            task: TaskKind::Classification,
            modalities: vec![FeatureModality {
                name: modality.into(),
                dim: 4,
                seq_len: None,
            }],
            classes: classes.iter().map(|c| c.to_string()).collect(),
            label_range: None,
            description: String::new(),
        }
    }

    #[test]
    fn names_in_dataset_json_are_limited_to_a_safe_character_set() {
        let good = [
            "neutral",
            "apple_pie",
            "Acc-2 (pos/neg)",
            "T1+Gd",
            "v1.2",
            "Ödem",
        ];
        assert_eq!(spec("text", &good).check(), Ok(()));
        assert_eq!(spec("audio (MFCC+delta)", &["a", "b"]).check(), Ok(()));

        let payload = "<img src=x onerror=alert(1)>";
        let err = spec("text", &["a", payload])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{payload:?}")), "{err}");
        assert!(err.contains("class name") && err.contains("'('"), "{err}");
        for bad in [
            "",
            " a",
            "a ",
            "x\"y",
            "a&b",
            "a=b",
            "a'b",
            "a\nb",
            &"c".repeat(65),
        ] {
            assert!(spec("text", &["a", bad]).check().is_err(), "class {bad:?}");
        }
        assert_eq!(spec("text", &["a", &"c".repeat(64)]).check(), Ok(()));

        let err = spec("<b>x</b>", &["a", "b"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("modality name \"<b>x</b>\""), "{err}");
        for bad in [
            "",
            "a.lengths",
            "a/b",
            "a:b",
            "a=b",
            LABELS,
            &"m".repeat(33),
        ] {
            assert!(spec(bad, &["a", "b"]).check().is_err(), "modality {bad:?}");
        }
    }
}
