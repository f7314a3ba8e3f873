//! What the application needs to know about a dataset to offer runs on it: its task kind, how
//! many samples it can train on, and its modalities. NIfTI datasets (segmentation) take these
//! from their validation report; feature datasets (classification, regression: a folder with a
//! `dataset.json`) from `dataset.json` and the safetensors *headers* of their split files; no
//! tensor is read, so a feature file of gigabytes costs a few kilobytes here.

use crate::db::Dataset;
use crate::inspect::DatasetReport;
use cggm_core::data::features::safetensors::SafetensorsFile;
use cggm_core::data::features::{split_path, DatasetSpec, LABELS};
use cggm_core::task::TaskKind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The trainer's format, read by the trainer's own reader (one reader for both): the file that
/// marks a folder as a feature dataset, the split names, and one modality's shape.
pub use cggm_core::data::features::{FeatureModality, SPEC_FILE, SPLITS};

/// A feature dataset's description and sample counts, or what is wrong with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FeatureSummary {
    pub modalities: Vec<FeatureModality>,
    /// Class names (classification).
    pub classes: Vec<String>,
    /// Label range (regression).
    pub label_range: Option<[f64; 2]>,
    /// Samples per split file (`train`, `valid`, `test`), from the `labels` tensor's header.
    pub samples: BTreeMap<String, usize>,
    /// Problems found in `dataset.json` or the headers, each naming the file and the fix.
    pub problems: Vec<String>,
}

/// The facts the new-run form and the run request need about one dataset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetFacts {
    pub task: TaskKind,
    /// Usable training material: valid cases (segmentation) or training samples (features).
    pub samples: usize,
    pub modalities: Vec<String>,
    /// Feature datasets only.
    pub features: Option<FeatureSummary>,
}

impl DatasetFacts {
    pub fn of(dataset: &Dataset) -> Self {
        let dir = Path::new(&dataset.path);
        if cggm_core::data::features::is_feature_dataset(dir) {
            let (task, summary) = read_feature_dataset(dir);
            let samples = if summary.problems.is_empty() {
                summary.samples.get("train").copied().unwrap_or(0)
            } else {
                0
            };
            return Self {
                task,
                samples,
                modalities: summary.modalities.iter().map(|m| m.name.clone()).collect(),
                features: Some(summary),
            };
        }
        let report: DatasetReport = serde_json::from_str(&dataset.report).unwrap_or_default();
        Self {
            task: TaskKind::Segmentation,
            samples: report.valid_cases,
            modalities: report.modalities,
            features: None,
        }
    }
}

/// Reads `dataset.json` (the trainer's [`DatasetSpec`]) and the split files' safetensors headers
/// (the trainer's [`SafetensorsFile::open`], which reads the header only and checks it against
/// the file's size; headers are bounded). Never fails: problems are listed, each naming its file.
pub fn read_feature_dataset(dir: &Path) -> (TaskKind, FeatureSummary) {
    let mut summary = FeatureSummary::default();
    let spec = match DatasetSpec::read(dir) {
        Ok(spec) => spec,
        Err(e) => {
            summary.problems.push(e.to_string());
            return (stated_task(dir), summary);
        }
    };
    summary.modalities = spec.modalities.clone();
    summary.classes = spec.classes.clone();
    summary.label_range = spec.label_range;
    for split in SPLITS {
        let path = split_path(dir, split);
        let file = match SafetensorsFile::open(&path) {
            Ok(file) => file,
            Err(e) => {
                summary.problems.push(e.to_string());
                continue;
            }
        };
        match file.info(LABELS).and_then(|l| l.shape.first()) {
            Some(n) => {
                summary.samples.insert(split.to_string(), *n);
            }
            None => summary.problems.push(format!(
                "{}: no \"{LABELS}\" tensor: add the labels [N] under that name",
                path.display()
            )),
        }
        for m in &spec.modalities {
            if file.info(&m.name).is_none() {
                summary.problems.push(format!(
                    "{}: modality {:?} of dataset.json is missing: add it, or remove it from dataset.json",
                    path.display(),
                    m.name
                ));
            }
        }
    }
    (spec.task, summary)
}

/// The task a `dataset.json` the trainer refuses still states, so the page files the dataset
/// under the right kind while it lists the problem (classification when even that is unreadable).
fn stated_task(dir: &Path) -> TaskKind {
    std::fs::read_to_string(dir.join(SPEC_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| serde_json::from_value::<TaskKind>(v["task"].clone()).ok())
        .filter(|t| *t != TaskKind::Segmentation)
        .unwrap_or(TaskKind::Classification)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with the given F32 tensors (zeros), through the core's writer.
    pub fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
        use cggm_core::data::features::safetensors::{write_safetensors, Values};
        let zeros: Vec<Vec<f32>> = tensors
            .iter()
            .map(|(_, shape)| vec![0.0; shape.iter().product()])
            .collect();
        let named: Vec<(&str, &[usize], Values)> = tensors
            .iter()
            .zip(&zeros)
            .map(|((name, shape), z)| (*name, shape.as_slice(), Values::F32(z)))
            .collect();
        write_safetensors(path, &named).unwrap();
    }

    #[test]
    fn a_feature_dataset_is_summarised_from_its_description_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SPEC_FILE),
            r#"{"task": "regression", "modalities": [{"name": "text", "dim": 8, "seq_len": 5},
               {"name": "audio", "dim": 3}], "label_range": [-3, 3]}"#,
        )
        .unwrap();
        for (split, n) in [("train", 12), ("valid", 4), ("test", 3)] {
            write_safetensors(
                &dir.path().join(format!("{split}.safetensors")),
                &[
                    ("text", vec![n, 5, 8]),
                    ("audio", vec![n, 3]),
                    ("labels", vec![n]),
                ],
            );
        }
        let (task, summary) = read_feature_dataset(dir.path());
        assert_eq!(task, TaskKind::Regression);
        assert_eq!(summary.problems, Vec::<String>::new());
        assert_eq!(summary.samples["train"], 12);
        assert_eq!(summary.samples["test"], 3);
        assert_eq!(summary.modalities[0].seq_len, Some(5));
        assert_eq!(summary.label_range, Some([-3.0, 3.0]));
    }

    #[test]
    fn a_missing_modality_and_a_truncated_header_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SPEC_FILE),
            r#"{"task": "classification", "classes": ["a", "b"],
               "modalities": [{"name": "text", "dim": 8}, {"name": "vision", "dim": 4}]}"#,
        )
        .unwrap();
        write_safetensors(
            &dir.path().join("train.safetensors"),
            &[("text", vec![6, 8]), ("labels", vec![6])],
        );
        std::fs::write(dir.path().join("valid.safetensors"), [200u8, 0, 0]).unwrap();
        let (task, summary) = read_feature_dataset(dir.path());
        assert_eq!(task, TaskKind::Classification);
        let all = summary.problems.join("\n");
        assert!(
            all.contains("train.safetensors: modality \"vision\""),
            "{all}"
        );
        assert!(
            all.contains("valid.safetensors: it is shorter than a safetensors header"),
            "{all}"
        );
        assert!(all.contains("test.safetensors: cannot open it"), "{all}");
    }

    #[test]
    fn a_description_the_trainer_refuses_is_named_and_keeps_its_stated_task() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SPEC_FILE),
            r#"{"task": "regression", "modalities": [], "label_range": [-3, 3]}"#,
        )
        .unwrap();
        let (task, summary) = read_feature_dataset(dir.path());
        assert_eq!(task, TaskKind::Regression);
        let all = summary.problems.join("\n");
        assert!(
            all.contains("dataset.json: \"modalities\" is empty"),
            "{all}"
        );
        assert!(summary.samples.is_empty());
    }
}
