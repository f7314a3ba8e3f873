//! Classification and regression on feature datasets: the format and its validation, the
//! synthetic imbalanced data, training every method through the one step, the converter, and the
//! metrics against scikit-learn / scipy.

mod data_common;

use cggm_trainer::cggm::{balance_outcome, BalanceFormula};
use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::features::synth::{write_feature_dataset, FeatureSynthConfig};
use cggm_trainer::data::features::{validate_features, DatasetSpec};
use cggm_trainer::eval_features::{evaluate_feature_run, write_feature_predictions};
use cggm_trainer::events::EventSink;
use cggm_trainer::features_data::write_split;
use cggm_trainer::run::TrainOptions;
use cggm_trainer::run_features::{train_features, FeatureRunMetrics};
use cggm_trainer::task::metrics::{classification_report, regression_report};
use cggm_trainer::task::TaskKind;
use data_common::run_python;
use std::path::Path;
use tch::Tensor;

/// libtorch's random generator is global to the process: the tests that train take turns, so that
/// a seeded run is not disturbed by another test's dropout (the resume test compares runs exactly).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _rng = exclusive();
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let data = tempfile::tempdir().unwrap();
        synth(data.path(), task, 48, 3);
        for method in [
            "cggm",
            "joint",
            "cggm-magnitude",
            "cggm-direction",
            "cggm-fixed",
            "cggm-magnitude-fixed",
            "cggm-authors",
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

/// The paper's claim on our synthetic data. It does NOT hold here, and the reason is the method's
/// signal, not a defect found in our code (checked line by line against zrguo/CGGM
/// src/msatrain.py: the same eps_i = the classifier's batch accuracy on this step's detached
/// features, eps^0 = 0, B_i = rho (sum d - d_i) / sum d, B_i scaling encoder i after the backward
/// and before clipping). What we measured (cpu-features, data seed 0, run seed 1; `step` events):
/// - B_i is batch noise: at batch 32 a classifier's batch accuracy moves by ~0.1 between steps
///   while its trend moves by ~0.002 per step, so the shares d_i / sum d swing between the clamps
///   (B of 0 and rho) from step to step, and the guard sets every B_i neutral on about half of the
///   steps (sum d <= 0). Mean B over 6 epochs: text 0.879, audio 0.808, vision 0.781.
/// - B_i follows improvement, not strength: once the strong modality's classifier saturates (a
///   faster classifier, `--cls-lr 0.002`: text's at 0.93 test accuracy after 6 epochs), its d_i is ~0 and low-noise
///   while the weak ones still move, so the strong modality gets the LARGEST mean B (text 0.865,
///   audio 0.783, vision 0.779). The claimed order appears only while the strong classifier is
///   still rising faster than the others (the previous session's 5-seed mean at 12 epochs: text 0.807, audio 0.837,
///   vision 0.817), and not on every seed.
/// - The modulation hardly changes training: CGGM's per-epoch classifier accuracies stay within
///   ~0.03 of joint's with Adam and with SGD (momentum 0.9, lr 0.03), so the weak classifiers'
///   accuracy under CGGM vs joint is a coin flip per seed (validation accuracy after 6 epochs: audio
///   0.444 vs 0.444, vision 0.338 vs 0.325; 5-seed means at 12 epochs 0.431 vs 0.434 and 0.468 vs 0.468).
///
/// `each_steps_balance_follows_the_change_of_each_modalitys_classifier_accuracy` checks what does
/// hold. Run this one with `--ignored` to measure again.
#[test]
#[ignore = "the claim does not hold on the synthetic data (B_i is dominated by batch noise); see the doc comment"]
fn cggm_lifts_the_weak_modalities_on_imbalanced_synthetic_data() {
    let _rng = exclusive();
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

/// What CGGM's balance coefficients are made of, on a real run: each step's B_i, as the events
/// name it, is the guarded share formula (README "What CGGM computes here", step 4) applied to the change of that
/// modality's classifier batch accuracy since the previous step (eps_i^0 = 0), and the guard flag
/// says when every B_i was set neutral. A mix-up of modality order between the model, the
/// classifiers and the events, or a stale eps, fails here.
#[test]
fn each_steps_balance_follows_the_change_of_each_modalitys_classifier_accuracy() {
    let _rng = exclusive();
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), TaskKind::Classification, 64, 9);
    let run = tempfile::tempdir().unwrap();
    let events_path = run.path().join("events.jsonl");
    let mut cfg = config(data.path(), "cggm", 3);
    cfg.sampler.batch_size = 16;
    let rho = cfg.cggm.rho;
    train_features(
        cfg,
        &run.path().join("run"),
        &EventSink::file(&events_path).unwrap(),
        &TrainOptions::default(),
    )
    .unwrap()
    .unwrap();
    let names = ["text", "audio", "vision"];
    let steps: Vec<serde_json::Value> = std::fs::read_to_string(&events_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "step")
        .collect();
    assert_eq!(steps.len(), 12);
    let mut previous = [0.0; 3];
    let mut distinct = 0;
    for s in &steps {
        let eps = names.map(|m| s["modality_metric"][m].as_f64().unwrap());
        let d: Vec<f64> = eps.iter().zip(&previous).map(|(e, p)| e - p).collect();
        let expected = balance_outcome(&d, rho, BalanceFormula::Guarded);
        let b = names.map(|m| s["balance"][m].as_f64().unwrap());
        for (i, m) in names.iter().enumerate() {
            assert!(
                (b[i] - expected.coefficients[i]).abs() < 1e-9,
                "step {}: B of {m} is {} but its accuracy change {d:?} gives {:?}",
                s["step"],
                b[i],
                expected.coefficients
            );
        }
        assert_eq!(
            s["balance_guarded"] == 1,
            expected.guarded,
            "step {}",
            s["step"]
        );
        distinct += (b[0] != b[1] || b[1] != b[2]) as usize;
        previous = eps;
    }
    assert!(
        distinct > 0,
        "every step had equal B_i: nothing was checked"
    );
}

#[test]
fn imported_pickle_and_npz_layouts_validate_and_train() {
    let _rng = exclusive();
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
    let _rng = exclusive();
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let data = tempfile::tempdir().unwrap();
        synth(data.path(), task, 64, 5);
        for (method, neutral) in [("ogm-ge", 1.0), ("agm", 1.0), ("pmr", 0.0)] {
            let out = tempfile::tempdir().unwrap();
            let events_path = out.path().join("events.jsonl");
            let mut cfg = config(data.path(), method, 2);
            cfg.sampler.batch_size = 16;
            // BalanceBenchmark's OGM-GE waits 10 epochs; this run has 2.
            cfg.baselines.ogm_start_epoch = 0;
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

/// Every tensor of two safetensors files, by name: the largest absolute difference.
fn max_weight_difference(a: &Path, b: &Path) -> f64 {
    let a = Tensor::read_safetensors(a).unwrap();
    let b: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(b).unwrap().into_iter().collect();
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, t)| {
            (t - &b[name])
                .abs()
                .max()
                .to_kind(tch::Kind::Double)
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn a_feature_run_stopped_and_resumed_ends_with_the_weights_and_metrics_of_an_uninterrupted_run() {
    let _rng = exclusive();
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), TaskKind::Classification, 48, 6);
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path(), "cggm", 3);
    cfg.sampler.batch_size = 16;

    let straight = train(cfg.clone(), &runs.path().join("straight"));

    let resumed_dir = runs.path().join("resumed");
    let stop = TrainOptions {
        resume: false,
        stop_after_epochs: Some(1),
    };
    let stopped = train_features(cfg.clone(), &resumed_dir, &EventSink::none(), &stop).unwrap();
    assert!(stopped.is_none(), "the run stops after epoch 1 as asked");
    assert!(!resumed_dir.join("metrics.json").exists());
    let again = TrainOptions {
        resume: true,
        stop_after_epochs: None,
    };
    let resumed = train_features(cfg, &resumed_dir, &EventSink::none(), &again)
        .unwrap()
        .expect("the resumed run finishes");

    let weights = |run: &str, name: &str| {
        runs.path()
            .join(run)
            .join(format!("checkpoints/{name}.safetensors"))
    };
    for name in ["last", "best"] {
        let d = max_weight_difference(&weights("straight", name), &weights("resumed", name));
        assert!(d < 1e-6, "{name} weights differ by {d}");
    }
    assert_eq!(resumed.best_epoch, straight.best_epoch);
    assert_eq!(resumed.epochs_completed, 3);
    assert_eq!(
        resumed.test.as_ref().unwrap().metrics,
        straight.test.as_ref().unwrap().metrics
    );
    assert_eq!(
        resumed.test.as_ref().unwrap().modality_metrics,
        straight.test.as_ref().unwrap().modality_metrics
    );
    for (m, b) in &straight.mean_balance {
        assert!((b - resumed.mean_balance[m]).abs() < 1e-9, "mean B of {m}");
    }
}

/// With `val_every` 2 a feature run still saves `last` and checks the stop after every epoch, as
/// the segmentation loop does (issue 19: the epochs between validations skipped both, so a stop
/// asked after epoch 1 ran on to epoch 2 and the epoch-1 state was never saved), and the resumed
/// run ends where an uninterrupted one does.
#[test]
fn a_feature_run_validating_every_second_epoch_saves_last_and_stops_after_every_epoch() {
    let _rng = exclusive();
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), TaskKind::Regression, 48, 7);
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path(), "cggm", 3);
    cfg.sampler.batch_size = 16;
    cfg.val_every = 2;
    let straight = train(cfg.clone(), &runs.path().join("straight"));

    let run = runs.path().join("stopped");
    let stop = TrainOptions {
        resume: false,
        stop_after_epochs: Some(1),
    };
    let stopped = train_features(cfg.clone(), &run, &EventSink::none(), &stop).unwrap();
    assert!(stopped.is_none(), "the run stops after epoch 1 as asked");
    let last: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/last.json")).expect("last is saved"),
    )
    .unwrap();
    assert_eq!(last["epoch"], 1, "last holds epoch 1: {last}");
    assert!(
        !run.join("checkpoints/best.json").exists(),
        "nothing was validated before epoch 2, so there is no best yet"
    );
    let again = TrainOptions {
        resume: true,
        stop_after_epochs: None,
    };
    let resumed = train_features(cfg, &run, &EventSink::none(), &again)
        .unwrap()
        .expect("the resumed run finishes");
    assert_eq!(resumed.best_epoch, straight.best_epoch);
    assert_eq!(
        resumed.test.as_ref().unwrap().metrics,
        straight.test.as_ref().unwrap().metrics
    );
    let d = max_weight_difference(
        &runs.path().join("straight/checkpoints/last.safetensors"),
        &run.join("checkpoints/last.safetensors"),
    );
    assert!(d < 1e-6, "last weights differ by {d}");
}

#[test]
fn a_feature_run_refuses_to_resume_with_a_changed_config_or_to_overwrite_a_run() {
    let _rng = exclusive();
    let data = tempfile::tempdir().unwrap();
    synth(data.path(), TaskKind::Regression, 32, 7);
    let run = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path(), "joint", 2);
    cfg.sampler.batch_size = 16;
    let stop = TrainOptions {
        resume: false,
        stop_after_epochs: Some(1),
    };
    assert!(
        train_features(cfg.clone(), run.path(), &EventSink::none(), &stop)
            .unwrap()
            .is_none()
    );
    let e = train_features(
        cfg.clone(),
        run.path(),
        &EventSink::none(),
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    let mut changed = cfg.clone();
    changed.seed += 1;
    let resume = TrainOptions {
        resume: true,
        stop_after_epochs: None,
    };
    let e = train_features(changed, run.path(), &EventSink::none(), &resume)
        .unwrap_err()
        .to_string();
    assert!(e.contains("configuration differs"), "{e}");
    assert!(train_features(cfg, run.path(), &EventSink::none(), &resume)
        .unwrap()
        .is_some());
}

#[test]
fn eval_and_infer_on_a_feature_run_reproduce_its_test_report() {
    let _rng = exclusive();
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let data = tempfile::tempdir().unwrap();
        let spec = synth(data.path(), task, 48, 8);
        let run = tempfile::tempdir().unwrap();
        let mut cfg = config(data.path(), "cggm", 2);
        cfg.sampler.batch_size = 16;
        let metrics = train(cfg, run.path());
        let test = metrics.test.unwrap();

        let report = evaluate_feature_run(run.path(), "test", None, Some("cpu")).unwrap();
        assert_eq!(report.samples, 16);
        assert_eq!(report.metrics, test.metrics, "{task}");
        assert_eq!(report.modality_metrics, test.modality_metrics, "{task}");

        // Predictions as CSV: one row per sample, and they score what the report says.
        let csv = run.path().join("predictions.csv");
        let n = write_feature_predictions(run.path(), "test", None, Some("cpu"), &csv).unwrap();
        assert_eq!(n, 16);
        let text = std::fs::read_to_string(&csv).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header[..3], ["index", "label", "prediction"]);
        let rows: Vec<Vec<String>> = lines
            .map(|l| l.split(',').map(String::from).collect())
            .collect();
        assert_eq!(rows.len(), 16);
        match task {
            TaskKind::Classification => {
                assert!(header.contains(&"p_b1"), "{header:?}");
                let hits = rows.iter().filter(|r| r[1] == r[2]).count();
                assert!(rows.iter().all(|r| spec.classes.contains(&r[2])));
                assert!((hits as f64 / 16.0 - test.metrics["accuracy"]).abs() < 1e-9);
            }
            _ => {
                let mae = rows
                    .iter()
                    .map(|r| (r[1].parse::<f64>().unwrap() - r[2].parse::<f64>().unwrap()).abs())
                    .sum::<f64>()
                    / 16.0;
                assert!(
                    (mae - test.metrics["mae"]).abs() < 1e-4,
                    "{mae} vs {:?}",
                    test.metrics
                );
            }
        }
        // JSON too, with the per-modality classifiers' predictions.
        let json = run.path().join("predictions.json");
        write_feature_predictions(run.path(), "test", None, Some("cpu"), &json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let rows = v["predictions"].as_array().unwrap();
        assert_eq!(rows.len(), 16);
        assert!(rows[0]["modalities"]["audio"].is_object(), "{}", rows[0]);
    }
    // A split that does not exist is named with the choices.
    let e = evaluate_feature_run(Path::new("/nonexistent-run"), "test", None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-run"), "{e}");
}
