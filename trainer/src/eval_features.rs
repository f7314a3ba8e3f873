//! Scoring a feature model (classification or regression) on a whole split: the run's validation
//! and test reports, `cggm eval` and `cggm infer` on a finished feature run (a report, or one
//! prediction per sample as CSV or JSON).

use crate::checkpoint::{self, write_json_atomic};
use crate::data::features::{DatasetSpec, SPLITS};
use crate::device::parse_device;
use crate::features_data::{FeatureBatch, FeatureSplit};
use crate::model::features::{FeatureInput, FeatureNet};
use crate::model::network::{ModalityClassifierSet, MultimodalNetwork};
use crate::model::Model;
use crate::task::metrics::{
    classification_report, regression_report, ClassificationReport, RegressionReport,
};
use crate::task::TaskKind;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

pub use crate::task::metrics::FeatureEvalReport;

pub fn input_of(batch: &FeatureBatch) -> FeatureInput {
    FeatureInput {
        features: batch.features.iter().map(|t| t.shallow_clone()).collect(),
        padding: batch
            .padding
            .iter()
            .map(|p| p.as_ref().map(|p| p.shallow_clone()))
            .collect(),
    }
}

fn class_indices(t: &Tensor) -> Vec<usize> {
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64))
        .unwrap_or_default()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.flatten(0, -1).to_kind(Kind::Double)).unwrap_or_default()
}

fn scores(
    task: TaskKind,
    logits: &Tensor,
    labels: &Tensor,
    classes: &[String],
) -> (
    BTreeMap<String, f64>,
    Option<ClassificationReport>,
    Option<RegressionReport>,
) {
    match task {
        TaskKind::Classification => {
            let pred = class_indices(&logits.argmax(1, false));
            let report = classification_report(&class_indices(labels), &pred, classes);
            (report.metrics(), Some(report), None)
        }
        _ => {
            let report = regression_report(&values(logits), &values(labels));
            (report.metrics(), None, Some(report))
        }
    }
}

/// The model's and every classifier's outputs on a whole split (no gradients, eval mode), on the
/// CPU: (fused [N, outputs], per modality [N, outputs]; empty without classifiers).
fn outputs(model: &Model<FeatureNet>, split: &FeatureSplit) -> (Tensor, Vec<Tensor>) {
    let _guard = tch::no_grad_guard();
    let mut fused = Vec::new();
    let mut per_modality: Vec<Vec<Tensor>> = (0..model.modality_names.len())
        .map(|_| Vec::new())
        .collect();
    let bs = model.cfg.eval_batch.max(1);
    let idx: Vec<i64> = (0..split.n as i64).collect();
    for chunk in idx.chunks(bs) {
        let batch = split.batch(chunk, model.device);
        let out = model.network.forward_t(&input_of(&batch), false);
        if let Some(cls) = &model.classifiers {
            for (acc, l) in per_modality.iter_mut().zip(cls.logits_t(&out, false)) {
                acc.push(l.to_device(tch::Device::Cpu));
            }
        }
        fused.push(out.logits.to_device(tch::Device::Cpu));
    }
    let per_modality = per_modality
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|l| Tensor::cat(&l, 0))
        .collect();
    (Tensor::cat(&fused, 0), per_modality)
}

/// Scores the model and every classifier on a whole split.
pub fn evaluate_features(
    model: &Model<FeatureNet>,
    split: &FeatureSplit,
    spec: &DatasetSpec,
) -> FeatureEvalReport {
    let (fused, per_modality) = outputs(model, split);
    let labels = &split.labels;
    let (metrics, classification, regression) = scores(spec.task, &fused, labels, &spec.classes);
    let modality_metrics = model
        .modality_names
        .iter()
        .zip(&per_modality)
        .map(|(name, l)| (name.clone(), scores(spec.task, l, labels, &spec.classes).0))
        .collect();
    FeatureEvalReport {
        samples: split.n,
        metrics,
        modality_metrics,
        classification,
        regression,
    }
}

/// A finished (or running) feature run opened for evaluation: its model with the best weights
/// (last if no best exists yet; no optimiser), the dataset's spec, and the loaded split.
pub struct OpenFeatureRun {
    pub model: Model<FeatureNet>,
    pub spec: DatasetSpec,
    pub split: FeatureSplit,
    /// The split's name (train, valid or test).
    pub split_name: String,
}

/// Opens `run_dir` and loads `split` (test, valid or train; `val` is accepted) of its own dataset
/// or of `data` (a feature dataset with the same modalities).
pub fn open_feature_run(
    run_dir: &Path,
    split: &str,
    data: Option<&Path>,
    device: Option<&str>,
) -> Result<OpenFeatureRun> {
    let mut cfg = checkpoint::read_config(run_dir)?;
    if cfg.task == TaskKind::Segmentation {
        bail!(
            "{} is a segmentation run: evaluate it with `cggm eval --checkpoint {}` (no --features)",
            run_dir.display(),
            run_dir.display()
        );
    }
    if let Some(d) = data {
        cfg.data = d.to_path_buf();
    }
    let split = match split.to_ascii_lowercase().as_str() {
        "val" | "validation" => "valid".to_string(),
        s => s.to_string(),
    };
    if !SPLITS.contains(&split.as_str()) {
        bail!("unknown split {split:?}: use test, valid or train");
    }
    let spec = DatasetSpec::read(&cfg.data)?;
    let device = parse_device(device.unwrap_or(&cfg.device)).map_err(anyhow::Error::msg)?;
    let chosen = cfg
        .feature_modalities(&spec.names())
        .map_err(anyhow::Error::msg)?;
    let loaded = FeatureSplit::load(&cfg.data, &spec, &split, &chosen)?;
    let mut model = Model::features(cfg, &spec, device)?;
    checkpoint::load_best_or_last(run_dir, &mut model)?;
    Ok(OpenFeatureRun {
        model,
        spec,
        split: loaded,
        split_name: split,
    })
}

/// `cggm eval` on a feature run: the report of `split` with the run's best weights.
pub fn evaluate_feature_run(
    run_dir: &Path,
    split: &str,
    data: Option<&Path>,
    device: Option<&str>,
) -> Result<FeatureEvalReport> {
    let run = open_feature_run(run_dir, split, data, device)?;
    Ok(evaluate_features(&run.model, &run.split, &run.spec))
}

/// One sample's prediction (`cggm infer` on a feature run).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeaturePrediction {
    pub index: usize,
    /// The true label: a class name, or the value.
    pub label: serde_json::Value,
    /// The predicted class name, or the predicted value.
    pub prediction: serde_json::Value,
    /// Classification: softmax probability per class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probabilities: BTreeMap<String, f64>,
    /// Each modality's classifier: its prediction (and probabilities).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modalities: BTreeMap<String, ModalityPrediction>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModalityPrediction {
    pub prediction: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probabilities: BTreeMap<String, f64>,
}

/// What `cggm infer` writes as JSON for a feature run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeaturePredictions {
    pub task: TaskKind,
    pub split: String,
    /// The model's modalities, in its order.
    pub modalities: Vec<String>,
    /// Classification: the class names, in label order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    pub predictions: Vec<FeaturePrediction>,
}

/// (prediction, probabilities) of each row of `logits`.
fn decode(
    task: TaskKind,
    logits: &Tensor,
    classes: &[String],
) -> Vec<(serde_json::Value, BTreeMap<String, f64>)> {
    match task {
        TaskKind::Classification => {
            let probs = logits.softmax(1, Kind::Double);
            let n = probs.size()[0];
            (0..n)
                .map(|i| {
                    let row = values(&probs.get(i));
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (k, p)| if *p > row[b] { k } else { b });
                    let p = classes.iter().cloned().zip(row.iter().copied()).collect();
                    (serde_json::json!(classes[best]), p)
                })
                .collect()
        }
        _ => values(logits)
            .into_iter()
            .map(|v| (serde_json::json!(v), BTreeMap::new()))
            .collect(),
    }
}

/// Every sample's prediction on `split` (see [`open_feature_run`]).
pub fn predict_features(
    run_dir: &Path,
    split: &str,
    data: Option<&Path>,
    device: Option<&str>,
) -> Result<FeaturePredictions> {
    let run = open_feature_run(run_dir, split, data, device)?;
    let (fused, per_modality) = outputs(&run.model, &run.split);
    let task = run.spec.task;
    let classes = &run.spec.classes;
    let labels = label_values(task, &run.split.labels, classes);
    let modality_rows: Vec<Vec<_>> = per_modality
        .iter()
        .map(|l| decode(task, l, classes))
        .collect();
    let predictions: Vec<FeaturePrediction> = decode(task, &fused, classes)
        .into_iter()
        .zip(labels)
        .enumerate()
        .map(
            |(i, ((prediction, probabilities), label))| FeaturePrediction {
                index: i,
                label,
                prediction,
                probabilities,
                modalities: run
                    .model
                    .modality_names
                    .iter()
                    .zip(&modality_rows)
                    .map(|(m, rows)| {
                        let (prediction, probabilities) = rows[i].clone();
                        (
                            m.clone(),
                            ModalityPrediction {
                                prediction,
                                probabilities,
                            },
                        )
                    })
                    .collect(),
            },
        )
        .collect();
    Ok(FeaturePredictions {
        task,
        split: run.split_name.clone(),
        classes: classes.clone(),
        modalities: run.model.modality_names.clone(),
        predictions,
    })
}

/// The true labels as the predictions show them: class names (classification) or values.
fn label_values(task: TaskKind, labels: &Tensor, classes: &[String]) -> Vec<serde_json::Value> {
    match task {
        TaskKind::Classification => class_indices(labels)
            .into_iter()
            .map(|c| serde_json::json!(classes.get(c).cloned().unwrap_or_else(|| c.to_string())))
            .collect(),
        _ => values(labels)
            .into_iter()
            .map(|v| serde_json::json!(v))
            .collect(),
    }
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes the predictions of `split` to `out`: CSV when it ends in `.csv` (one row per sample:
/// index, label, prediction, each class's probability, each modality classifier's prediction),
/// else JSON ([`FeaturePredictions`]). Returns the number of samples.
pub fn write_feature_predictions(
    run_dir: &Path,
    split: &str,
    data: Option<&Path>,
    device: Option<&str>,
    out: &Path,
) -> Result<usize> {
    let p = predict_features(run_dir, split, data, device)?;
    let n = p.predictions.len();
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let classes = &p.classes;
        let mut header = vec!["index".to_string(), "label".into(), "prediction".into()];
        header.extend(classes.iter().map(|c| format!("p_{c}")));
        header.extend(p.modalities.iter().map(|m| format!("{m}_prediction")));
        let mut text = header.join(",") + "\n";
        for r in &p.predictions {
            let mut row = vec![r.index.to_string(), cell(&r.label), cell(&r.prediction)];
            row.extend(classes.iter().map(|c| format!("{}", r.probabilities[c])));
            row.extend(p.modalities.iter().map(|m| {
                r.modalities
                    .get(m)
                    .map(|x| cell(&x.prediction))
                    .unwrap_or_default()
            }));
            text += &(row.join(",") + "\n");
        }
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    } else {
        write_json_atomic(out, &p)?;
    }
    Ok(n)
}
