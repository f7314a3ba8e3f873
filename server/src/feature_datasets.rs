//! What the application needs to know about a dataset to offer runs on it: its task kind, how
//! many samples it can train on, and its modalities. NIfTI datasets (segmentation) take these
//! from their validation report; feature datasets (classification, regression: a folder with a
//! `dataset.json`) from `dataset.json` and the safetensors *headers* of their split files; no
//! tensor is read, so a feature file of gigabytes costs a few kilobytes here.

use crate::db::Dataset;
use crate::inspect::DatasetReport;
use cggm_trainer::task::TaskKind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The file that marks a folder as a feature dataset (the trainer's format; README "Feature
/// datasets").
pub const SPEC_FILE: &str = "dataset.json";
/// The split files of a feature dataset, in order.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];
/// A safetensors header larger than this is refused (real headers are kilobytes).
const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;

/// One modality of a feature dataset: its name and the shape of one sample (`[T, D]` or `[D]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FeatureModality {
    pub name: String,
    pub dim: usize,
    pub seq_len: Option<usize>,
}

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
        if dir.join(SPEC_FILE).is_file() {
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

/// Reads `dataset.json` and the split files' headers. Never fails: problems are listed.
pub fn read_feature_dataset(dir: &Path) -> (TaskKind, FeatureSummary) {
    let mut summary = FeatureSummary::default();
    let spec_path = dir.join(SPEC_FILE);
    let spec: serde_json::Value = match std::fs::read_to_string(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            summary.problems.push(format!(
                "{}: not readable JSON ({e}); see README \"Feature datasets\" for the fields",
                spec_path.display()
            ));
            return (TaskKind::Classification, summary);
        }
    };
    let task = match serde_json::from_value::<TaskKind>(spec["task"].clone()) {
        Ok(t @ (TaskKind::Classification | TaskKind::Regression)) => t,
        _ => {
            summary.problems.push(format!(
                "{}: \"task\" is {}; a feature dataset's task is \"classification\" or \"regression\"",
                spec_path.display(),
                spec["task"]
            ));
            TaskKind::Classification
        }
    };
    for m in spec["modalities"].as_array().into_iter().flatten() {
        summary.modalities.push(FeatureModality {
            name: m["name"].as_str().unwrap_or_default().to_string(),
            dim: m["dim"].as_u64().unwrap_or(0) as usize,
            seq_len: m["seq_len"].as_u64().map(|n| n as usize),
        });
    }
    if summary.modalities.is_empty() {
        summary.problems.push(format!(
            "{}: \"modalities\" is missing or empty: list each as {{\"name\", \"dim\", \"seq_len\"}}",
            spec_path.display()
        ));
    }
    summary.classes = spec["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    summary.label_range = serde_json::from_value(spec["label_range"].clone()).ok();
    for split in SPLITS {
        let path = dir.join(format!("{split}.safetensors"));
        match tensor_shapes(&path) {
            Ok(shapes) => {
                match shapes.get("labels").and_then(|s| s.first()) {
                    Some(n) => {
                        summary.samples.insert(split.to_string(), *n);
                    }
                    None => summary.problems.push(format!(
                        "{}: no \"labels\" tensor: add the labels [N] under that name",
                        path.display()
                    )),
                }
                for m in &summary.modalities {
                    if !shapes.contains_key(&m.name) {
                        summary.problems.push(format!(
                            "{}: modality {:?} of dataset.json is missing: add it, or remove it from dataset.json",
                            path.display(),
                            m.name
                        ));
                    }
                }
            }
            Err(e) => summary.problems.push(format!("{}: {e}", path.display())),
        }
    }
    (task, summary)
}

/// Tensor name -> shape, from a safetensors file's header (8-byte little-endian length, then
/// JSON). Reads the header only.
pub fn tensor_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open it ({e})"))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "shorter than a safetensors header: the file is truncated".to_string())?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(format!(
            "its header claims {len} bytes: not a safetensors file (or a corrupt one)"
        ));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|_| "the safetensors header is truncated: copy the file again".to_string())?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format!("the safetensors header is not JSON ({e})"))?;
    let mut shapes = BTreeMap::new();
    for (name, info) in header.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        let shape = info["shape"]
            .as_array()
            .map(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().unwrap_or(0) as usize)
                    .collect()
            })
            .unwrap_or_default();
        shapes.insert(name.clone(), shape);
    }
    Ok(shapes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with the given F32 tensors (zeros).
    pub fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, shape) in tensors {
            let bytes = shape.iter().product::<usize>() * 4;
            header.insert(
                name.to_string(),
                serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes] }),
            );
            offset += bytes;
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(vec![0u8; offset]);
        std::fs::write(path, out).unwrap();
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
            all.contains("valid.safetensors: shorter than a safetensors header"),
            "{all}"
        );
        assert!(all.contains("test.safetensors: cannot open it"), "{all}");
    }
}
