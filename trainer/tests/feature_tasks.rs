//! Classification and regression on feature datasets: the format and its validation, the
//! synthetic imbalanced data, training every method through the one step, the converter, and the
//! metrics against scikit-learn / scipy.

mod data_common;

use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::features::synth::{write_feature_dataset, FeatureSynthConfig};
use cggm_trainer::data::features::{validate_features, write_split, DatasetSpec};
use cggm_trainer::events::EventSink;
use cggm_trainer::run::TrainOptions;
use cggm_trainer::run_features::{train_features, FeatureRunMetrics};
use cggm_trainer::task::metrics::{classification_report, regression_report};
use cggm_trainer::task::TaskKind;
use data_common::run_python;
use std::path::Path;
use tch::Tensor;

fn synth(dir: &Path, task: TaskKind, train: usize, seed: u64) -> DatasetSpec {
    write_feature_dataset(
        dir,
        &FeatureSynthConfig {
            task,
            seed,
            train,
            valid: train / 3,
            test: train / 3,
            imbalance: 1.0,
        },
    )
    .expect("synthetic feature dataset is written")
}

fn config(data: &Path, method: &str, epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig::preset("cpu-features").unwrap();
    cfg.data = data.to_path_buf();
    cfg.method = method.parse().unwrap();
    cfg.device = "cpu".into();
    cfg.epochs = epochs;
    cfg
}

fn train(cfg: TrainConfig, out: &Path) -> FeatureRunMetrics {
    train_features(cfg, out, &EventSink::none(), &TrainOptions::default())
        .expect("the feature run trains")
        .expect("the run is not stopped early")
}

fn error_of(dir: &Path) -> String {
    format!(
        "{:#}",
        anyhow::Error::from(validate_features(dir).unwrap_err())
    )
}

#[test]
fn synthetic_feature_datasets_validate_for_both_tasks() {
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let dir = tempfile::tempdir().unwrap();
        synth(dir.path(), task, 30, 1);
        let report = validate_features(dir.path()).unwrap();
        assert_eq!(report.spec.task, task);
        assert_eq!(report.spec.names(), ["text", "audio", "vision"]);
        assert_eq!(report.samples[0], ("train".to_string(), 30));
    }
}

#[test]
fn broken_feature_files_are_named_with_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let spec = synth(dir.path(), TaskKind::Classification, 12, 2);
    let names = spec.names();
    let feats = |n: i64| -> Vec<Tensor> {
        vec![
            Tensor::zeros([n, 4, 16], (tch::Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([n, 8, 12], (tch::Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([n, 6, 8], (tch::Kind::Float, tch::Device::Cpu)),
        ]
    };
    let valid = dir.path().join("valid.safetensors");
    let original = std::fs::read(&valid).unwrap();

    // A truncated file.
    std::fs::write(&valid, &original[..original.len() - 10]).unwrap();
    let e = error_of(dir.path());
    assert!(
        e.contains("valid.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // A label out of range.
    write_split(
        &valid,
        &names,
        &feats(3),
        &Tensor::from_slice(&[0i64, 7, 1]),
    )
    .unwrap();
    let e = error_of(dir.path());
    assert!(e.contains("label 1 is 7") && e.contains("0..3"), "{e}");

    // Float labels for a classification task.
    write_split(
        &valid,
        &names,
        &feats(3),
        &Tensor::from_slice(&[0.0f32, 1.0, 1.0]),
    )
    .unwrap();
    assert!(error_of(dir.path()).contains("classification"));

    // NaN in a feature.
    let f = feats(3);
    let _ = f[1].get(2).get(0).get(0).fill_(f64::NAN);
    write_split(&valid, &names, &f, &Tensor::from_slice(&[0i64, 1, 1])).unwrap();
    let e = error_of(dir.path());
    assert!(
        e.contains("\"audio\"") && e.contains("non-finite") && e.contains("sample 2"),
        "{e}"
    );

    // A missing modality and a shape mismatch.
    write_split(
        &valid,
        &names[..2],
        &feats(3)[..2],
        &Tensor::from_slice(&[0i64, 1, 1]),
    )
    .unwrap();
    assert!(error_of(dir.path()).contains("modality \"vision\" is missing"));
    let mut f = feats(3);
    f[0] = Tensor::zeros([3, 4, 15], (tch::Kind::Float, tch::Device::Cpu));
    write_split(&valid, &names, &f, &Tensor::from_slice(&[0i64, 1, 1])).unwrap();
    assert!(error_of(dir.path()).contains("[3, 4, 15]"));

    // Zero samples.
    write_split(
        &valid,
        &names,
        &feats(0),
        &Tensor::zeros([0], (tch::Kind::Int64, tch::Device::Cpu)),
    )
    .unwrap();
    assert!(error_of(dir.path()).contains("zero samples"));

    // A malformed dataset.json.
    std::fs::write(&valid, &original).unwrap();
    validate_features(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("dataset.json"),
        "{\"task\": \"classification\"",
    )
    .unwrap();
    assert!(error_of(dir.path()).contains("dataset.json"));
}

#[test]
fn every_method_trains_on_classification_and_regression_through_the_same_step() {
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let data = tempfile::tempdir().unwrap();
        synth(data.path(), task, 48, 3);
        for method in [
            "cggm",
            "joint",
            "cggm-magnitude",
            "cggm-direction",
            "cggm-fixed",
            "mrd",
            "mslr",
            "unimodal:audio",
        ] {
            let out = tempfile::tempdir().unwrap();
            let mut cfg = config(data.path(), method, 1);
            cfg.sampler.batch_size = 16;
            let m = train(cfg, out.path());
            let test = m.test.expect("a test report");
            let key = if task == TaskKind::Classification {
                "accuracy"
            } else {
                "mae"
            };
            assert!(
                test.metrics[key].is_finite(),
                "{method}: {:?}",
                test.metrics
            );
            let modalities = if method.starts_with("unimodal") { 1 } else { 3 };
            assert_eq!(test.modality_metrics.len(), modalities, "{method}");
            assert!(out.path().join("checkpoints/best.safetensors").is_file());
            match task {
                TaskKind::Classification => {
                    let c = test.classification.unwrap();
                    assert_eq!(c.confusion.iter().flatten().sum::<usize>(), 16);
                }
                _ => assert_eq!(test.regression.unwrap().pairs.len(), 16),
            }
        }
    }
    // The authors' weight-cosine variant runs too.
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), TaskKind::Classification, 32, 4);
    let mut cfg = config(data.path(), "cggm", 1);
    cfg.cggm.direction = cggm_trainer::config::DirectionSource::AuthorsWeightCosine;
    train(cfg, tempfile::tempdir().unwrap().path());
}

/// The paper's claim on our synthetic data. It does NOT hold here yet, so it is ignored rather than
/// weakened: measured (seed 0 data, seed 1 runs, 6 epochs of cpu-features) mean B text 0.822,
/// audio 0.793, vision 0.808 — the guarded B_i averaged over training is dominated by the noise of
/// per-batch accuracies (batch 32), and the weak classifiers improve as much as text's in absolute
/// terms. Run with `--ignored` to measure again.
#[test]
#[ignore = "the claim does not hold on the current synthetic data; see the doc comment"]
fn cggm_lifts_the_weak_modalities_on_imbalanced_synthetic_data() {
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), TaskKind::Classification, 480, 0);
    let run = |method: &str| {
        let out = tempfile::tempdir().unwrap();
        let mut cfg = config(data.path(), method, 6);
        cfg.seed = 1;
        train(cfg, out.path())
    };
    let cggm = run("cggm");
    let joint = run("joint");
    let b = &cggm.mean_balance;
    eprintln!("mean B: {b:?}");
    assert!(b["audio"] > b["text"] && b["vision"] > b["text"], "{b:?}");
    let acc = |m: &FeatureRunMetrics, modality: &str| {
        m.test.as_ref().unwrap().modality_metrics[modality]["accuracy"]
    };
    for weak in ["audio", "vision"] {
        eprintln!(
            "{weak}: cggm {} joint {}",
            acc(&cggm, weak),
            acc(&joint, weak)
        );
        assert!(acc(&cggm, weak) >= acc(&joint, weak), "{weak}");
    }
}

#[test]
fn imported_pickle_and_npz_layouts_validate_and_train() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, pickle, numpy as np
out = sys.argv[1]
rng = np.random.default_rng(0)
def split(n):
    audio = rng.normal(size=(n, 5, 4)).astype(np.float32)
    audio[0, 0, 0] = -np.inf
    return {"text": rng.normal(size=(n, 3, 6)).astype(np.float32), "audio": audio,
            "vision": rng.normal(size=(n, 4)).astype(np.float32),
            "labels": rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32), "id": np.arange(n)}
pickle.dump({"train": split(24), "valid": split(8), "test": split(8)}, open(out + "/mosi.pkl", "wb"))
arrays = {}
for s, n in [("train", 24), ("valid", 8), ("test", 8)]:
    arrays[f"{s}_image"] = rng.normal(size=(n, 10)).astype(np.float32)
    arrays[f"{s}_text"] = rng.normal(size=(n, 4, 6)).astype(np.float32)
    arrays[f"{s}_text_lengths"] = rng.integers(1, 5, size=n)
    arrays[f"{s}_labels"] = rng.integers(0, 3, size=n)
np.savez(out + "/food.npz", **arrays)
"#;
    run_python(script, &[dir.path()]);
    let converter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/import-features.py");
    for (input, extra, task) in [
        ("mosi.pkl", vec![], TaskKind::Regression),
        (
            "food.npz",
            vec!["--modalities", "image,text"],
            TaskKind::Classification,
        ),
    ] {
        let out = dir.path().join(input.replace('.', "-"));
        let mut cmd = std::process::Command::new(data_common::python());
        cmd.arg(&converter)
            .arg(dir.path().join(input))
            .arg("--out")
            .arg(&out)
            .args(&extra);
        let result = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&result.stdout).to_string();
        assert!(
            result.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&result.stderr)
        );
        if input.ends_with("pkl") {
            assert!(stdout.contains("replaced 1 non-finite"), "{stdout}");
        }
        let report = validate_features(&out).unwrap();
        assert_eq!(report.spec.task, task);
        let m = train(
            config(&out, "cggm", 1),
            &dir.path().join(format!("run-{input}")),
        );
        assert!(m.test.unwrap().metrics.values().all(|v| v.is_finite()));
    }
}

#[test]
fn metrics_agree_with_scikit_learn_and_scipy() {
    let truth: Vec<usize> = (0..40).map(|i| (i * 7 + i / 3) % 4).collect();
    let pred: Vec<usize> = (0..40)
        .map(|i| {
            if i % 5 == 0 {
                (i + 1) % 3
            } else {
                (i * 7 + i / 3) % 4
            }
        })
        .collect();
    let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let c = classification_report(&truth, &pred, &names);
    let reg_truth: Vec<f64> = (0..40)
        .map(|i| ((i as f64) * 0.37).sin() * 3.2)
        .chain([0.0, 0.0])
        .collect();
    let reg_pred: Vec<f64> = reg_truth
        .iter()
        .enumerate()
        .map(|(i, t)| t * 0.8 + ((i as f64) * 1.3).cos() * 0.6)
        .collect();
    let r = regression_report(&reg_pred, &reg_truth);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.17e}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ints = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let script = format!(
        r#"
import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from scipy.stats import pearsonr
t = np.array([{t}]); p = np.array([{p}])
print(accuracy_score(t, p), f1_score(t, p, average="weighted"), f1_score(t, p, average="macro"))
yt = np.array([{yt}]); yp = np.array([{yp}])
nz = yt != 0
print(np.mean(np.abs(yp - yt)), pearsonr(yp, yt)[0],
      accuracy_score(yt >= 0, yp >= 0), f1_score(yt >= 0, yp >= 0, average="weighted"),
      accuracy_score(yt[nz] > 0, yp[nz] > 0), f1_score(yt[nz] > 0, yp[nz] > 0, average="weighted"),
      np.mean(np.round(np.clip(yp, -3, 3)) == np.round(np.clip(yt, -3, 3))))
"#,
        t = ints(&truth),
        p = ints(&pred),
        yt = list(&reg_truth),
        yp = list(&reg_pred)
    );
    let out = run_python(&script, &[]);
    let mut lines = out.lines();
    let parse = |l: &str| {
        l.split_whitespace()
            .map(|v| v.parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let sk_c = parse(lines.next().unwrap());
    let sk_r = parse(lines.next().unwrap());
    let ours_c = [c.accuracy, c.f1_weighted, c.f1_macro];
    let ours_r = [
        r.mae,
        r.corr,
        r.acc2,
        r.f1,
        r.acc2_nonzero,
        r.f1_nonzero,
        r.acc7,
    ];
    for (o, s) in ours_c.iter().zip(&sk_c).chain(ours_r.iter().zip(&sk_r)) {
        assert!(
            (o - s).abs() < 1e-9,
            "ours {ours_c:?} {ours_r:?}\nsklearn/scipy {sk_c:?} {sk_r:?}"
        );
    }
    assert_ne!(
        c.f1_weighted, c.f1_macro,
        "the arrays must tell the averages apart"
    );
}

/// OGM-GE, AGM and PMR act on both feature tasks: each step event of their runs carries the
/// per-modality coefficients the method applied, and they move away from the neutral value (OGM-GE
/// and AGM scale encoder gradients by them: 1 is no change; PMR weighs its prototype loss: 0 is
/// no term) on some step. Segmentation's gradient-level checks are in tests/baselines_act.rs.
#[test]
fn baselines_apply_their_coefficients_on_classification_and_regression() {
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let data = tempfile::tempdir().unwrap();
        synth(data.path(), task, 64, 5);
        for (method, neutral) in [("ogm-ge", 1.0), ("agm", 1.0), ("pmr", 0.0)] {
            let out = tempfile::tempdir().unwrap();
            let events_path = out.path().join("events.jsonl");
            let mut cfg = config(data.path(), method, 2);
            cfg.sampler.batch_size = 16;
            let events = EventSink::file(&events_path).unwrap();
            train_features(
                cfg,
                &out.path().join("run"),
                &events,
                &TrainOptions::default(),
            )
            .expect("the run trains")
            .expect("the run is not stopped early");
            let text = std::fs::read_to_string(&events_path).unwrap();
            let steps: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["event"] == "step")
                .collect();
            assert!(!steps.is_empty(), "{task} {method}: no step events");
            let coefficients: Vec<f64> = steps
                .iter()
                .filter_map(|e| e["baseline_coefficients"].as_object())
                .flat_map(|m| m.values().filter_map(|v| v.as_f64()).collect::<Vec<_>>())
                .collect();
            assert!(
                !coefficients.is_empty(),
                "{task} {method}: no baseline coefficients in the step events"
            );
            assert!(
                coefficients.iter().all(|k| k.is_finite()),
                "{task} {method}: {coefficients:?}"
            );
            assert!(
                coefficients.iter().any(|k| (k - neutral).abs() > 1e-6),
                "{task} {method}: every coefficient stayed at {neutral}: {coefficients:?}"
            );
        }
    }
}
