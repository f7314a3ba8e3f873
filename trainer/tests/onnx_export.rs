//! `cggm export --format onnx` against ONNX Runtime (run through `$CGGM_PYTHON`, with `onnx` and
//! `onnxruntime` from scripts/python-requirements.txt): a tiny trained segmentation run (batch-norm
//! statistics scrambled so that folding them is far from the identity) and small trained feature
//! runs are exported, checked by `onnx.checker` (full check: types and shapes inferred), run on
//! the same inputs as our fp32 forward pass, and their logits compared; the segmentation export
//! segments a NIfTI study through scripts/onnx_infer.py with the labels `cggm infer` writes.

mod data_common;

use cggm_trainer::checkpoint::checkpoint_dir;
use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::features::synth::{write_feature_dataset, FeatureSynthConfig};
use cggm_trainer::data::synth::{write_synthetic_dataset, SynthConfig};
use cggm_trainer::data::{read_volume, OutputLabels};
use cggm_trainer::eval_features::open_feature_run;
use cggm_trainer::events::EventSink;
use cggm_trainer::export::{export, ExportFormat};
use cggm_trainer::infer::infer;
use cggm_trainer::model::features::FeatureInput;
use cggm_trainer::model::folded::FoldedSegmenter;
use cggm_trainer::model::network::MultimodalNetwork;
use cggm_trainer::model::Model;
use cggm_trainer::run::{train, TrainOptions};
use cggm_trainer::run_features::train_features;
use cggm_trainer::task::TaskKind;
use data_common::python;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is global: the tests that train or draw take turns.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The largest |a - b| the logits may differ by.
const TOLERANCE: f64 = 1e-4;

/// Checks the model with `onnx.checker` (full check), runs it in ONNX Runtime on the inputs
/// (written as raw little-endian files), and reads back the named outputs and the metadata.
const RUN_ONNX: &str = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
model_path, spec_path, out_dir = sys.argv[1:4]
onnx.checker.check_model(model_path, full_check=True)
spec = json.load(open(spec_path))
feeds = {n: np.fromfile(v["file"], dtype=v["dtype"]).reshape(v["shape"]) for n, v in spec["inputs"].items()}
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
outs = session.run(spec["outputs"], feeds)
result = {}
for name, o in zip(spec["outputs"], outs):
    o = np.ascontiguousarray(o)
    o.tofile(f"{out_dir}/{name}.bin")
    result[name] = {"dtype": str(o.dtype), "shape": list(o.shape)}
meta = {p.key: p.value for p in onnx.load(model_path).metadata_props}
print(json.dumps({"outputs": result, "metadata": meta,
                  "graph_inputs": [i.name for i in session.get_inputs()]}))
"#;

struct OnnxRun {
    outputs: BTreeMap<String, (Vec<u8>, Vec<i64>)>,
    metadata: BTreeMap<String, String>,
    graph_inputs: Vec<String>,
}

impl OnnxRun {
    fn f32s(&self, name: &str) -> (Vec<f32>, Vec<i64>) {
        let (bytes, shape) = &self.outputs[name];
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (values, shape.clone())
    }

    fn i64s(&self, name: &str) -> Vec<i64> {
        let (bytes, _) = &self.outputs[name];
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// A tensor as an input file: fp32 or int64, row-major.
fn write_input(dir: &Path, name: &str, t: &Tensor) -> serde_json::Value {
    let file = dir.join(format!("in-{name}.bin"));
    let t = t.contiguous();
    let (bytes, dtype): (Vec<u8>, &str) = match t.kind() {
        Kind::Int64 => (
            Vec::<i64>::try_from(&t.view([-1]))
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            "int64",
        ),
        _ => (
            Vec::<f32>::try_from(&t.to_kind(Kind::Float).view([-1]))
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            "float32",
        ),
    };
    std::fs::write(&file, bytes).unwrap();
    serde_json::json!({"file": file, "dtype": dtype, "shape": t.size()})
}

fn run_onnx(model: &Path, inputs: &[(&str, &Tensor)], outputs: &[&str]) -> OnnxRun {
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "inputs": inputs
            .iter()
            .map(|(n, t)| (n.to_string(), write_input(dir.path(), n, t)))
            .collect::<serde_json::Map<_, _>>(),
        "outputs": outputs,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let output = Process::new(python())
        .arg("-c")
        .arg(RUN_ONNX)
        .arg(model)
        .arg(&spec_path)
        .arg(dir.path())
        .output()
        .expect("the CGGM_PYTHON interpreter starts");
    assert!(
        output.status.success(),
        "onnx checker / onnxruntime failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let outputs = v["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, info)| {
            let bytes = std::fs::read(dir.path().join(format!("{name}.bin"))).unwrap();
            let shape = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (name.clone(), (bytes, shape))
        })
        .collect();
    OnnxRun {
        outputs,
        metadata: serde_json::from_value(v["metadata"].clone()).unwrap(),
        graph_inputs: serde_json::from_value(v["graph_inputs"].clone()).unwrap(),
    }
}

fn max_abs_difference(ours: &Tensor, theirs: &[f32]) -> f64 {
    let ours = Vec::<f32>::try_from(&ours.contiguous().view([-1])).unwrap();
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max)
}

/// `cggm export --checkpoint RUN --format onnx --out OUT`, by the binary that runs it.
fn export_cli(run: &Path, out: &Path) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cggm-trainer"))
        .arg("export")
        .arg("--checkpoint")
        .arg(run)
        .args(["--format", "onnx", "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "cggm export failed");
}

/// Every batch-norm statistic and affine parameter of the run's checkpoints drawn far from its
/// initial value (a two-step run barely moves them), so that folding is not near the identity.
/// The variables are visited in name order: `variables()` is a hash map, and visiting it in its
/// own order drew different values on every run.
fn scramble_batch_norm(run: &Path, seed: i64) {
    let model = Model::open_segmentation(run, Some("cpu")).unwrap();
    tch::manual_seed(seed);
    let mut variables: Vec<_> = model.vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in variables {
            let u = Tensor::rand(t.size().as_slice(), (Kind::Float, Device::Cpu));
            let values = if name.ends_with("bn.running_mean") {
                u * 0.6 - 0.3
            } else if name.ends_with("bn.running_var") {
                u * 2.1 + 0.4
            } else if name.ends_with("bn.weight") {
                u + 0.5
            } else if name.ends_with("bn.bias") {
                u * 0.2 - 0.1
            } else {
                continue;
            };
            t.copy_(&values);
        }
    });
    for name in ["best", "last"] {
        let file = checkpoint_dir(run).join(format!("{name}.safetensors"));
        if file.exists() {
            model.vs.save(&file).unwrap();
        }
    }
}

/// The label mapping is only tested if the model predicts at least two tumour classes. A two-step
/// run's logits depend on the machine's thread count, so no single scramble seed is sure to give
/// them everywhere: seeds are tried in order until `cggm infer` labels two classes on `case`.
fn scramble_until_two_tumour_classes(run: &Path, case: &Path, tmp: &Path) {
    let probe = tmp.join("probe.nii.gz");
    let mut seen = Vec::new();
    for seed in 17..37 {
        scramble_batch_norm(run, seed);
        infer(
            run,
            std::slice::from_ref(&case.to_path_buf()),
            &probe,
            OutputLabels::Brats2021,
            Some("cpu"),
            &EventSink::none(),
        )
        .unwrap();
        let (_, labels) = read_volume(&probe).unwrap();
        let classes: std::collections::BTreeSet<u8> = labels
            .iter()
            .map(|&v| v as u8)
            .filter(|&v| v != 0)
            .collect();
        if classes.len() >= 2 {
            return;
        }
        seen.push((seed, classes));
    }
    panic!("no scramble seed made the model label two tumour classes: {seen:?}");
}

fn only_case(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a case folder")
}

#[test]
fn a_segmentation_export_computes_our_logits_and_segments_a_study_like_cggm_infer() {
    let _rng = exclusive();
    // `cggm infer` in fp32 (a CPU with native bf16 would otherwise infer in bf16), whole slices.
    std::env::set_var("CGGM_INFERENCE_PRECISION", "fp32");
    std::env::remove_var("CGGM_INFERENCE_CROP");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_common::tiny_dataset(&data, 4, 5);
    let mut cfg = TrainConfig::preset("tiny").unwrap();
    cfg.data = data.clone();
    cfg.device = "cpu".into();
    cfg.epochs = 1;
    cfg.steps_per_epoch = Some(2);
    cfg.sampler.cache_dir = Some(tmp.path().join("cache"));
    let run = tmp.path().join("run");
    train(cfg, &run, &EventSink::none(), &TrainOptions::default())
        .unwrap()
        .unwrap();

    // A NIfTI study of another size (40 x 44 x 12: padded to 48 x 48, slices without brain).
    let study_dir = tmp.path().join("study");
    write_synthetic_dataset(
        &study_dir,
        &SynthConfig {
            cases: 1,
            seed: 21,
            size: [40, 44, 12],
            imbalance: 1.0,
        },
    )
    .unwrap();
    let case = only_case(&study_dir);
    scramble_until_two_tumour_classes(&run, &case, tmp.path());
    let model = tmp.path().join("model.onnx");
    export_cli(&run, &model);

    // Logits on random slices of a size the network never saw (48 x 32, batch 3).
    let opened = Model::open_segmentation(&run, Some("cpu")).unwrap();
    tch::manual_seed(3);
    let xs = Tensor::randn([3, 4, 48, 32], (Kind::Float, Device::Cpu));
    let ours = tch::no_grad(|| {
        FoldedSegmenter::new(&opened.network, None, Kind::Float)
            .forward(&xs)
            .logits
    });
    let onnx = run_onnx(&model, &[("image", &xs)], &["logits", "labels"]);
    let (logits, shape) = onnx.f32s("logits");
    assert_eq!(shape, [3, 4, 48, 32]);
    let scale = ours.abs().max().double_value(&[]);
    let diff = max_abs_difference(&ours, &logits);
    println!("segmentation: max |logit| {scale:.3}, max |ONNX - ours| {diff:.3e}");
    assert!(scale > 0.5, "the logits are not degenerate: {scale}");
    assert!(diff <= TOLERANCE, "ONNX logits differ by {diff}");
    let labels = &onnx.outputs["labels"];
    assert_eq!(labels.1, [3, 48, 32]);
    let our_labels =
        Vec::<u8>::try_from(&ours.argmax(1, false).to_kind(Kind::Uint8).view([-1])).unwrap();
    assert_eq!(labels.0, our_labels, "ONNX argmax labels");
    assert_eq!(onnx.graph_inputs, ["image"]);
    let meta = &onnx.metadata;
    assert_eq!(meta["cggm.task"], "segmentation");
    assert_eq!(meta["cggm.modalities"], "flair,t1ce,t1,t2");
    assert_eq!(meta["cggm.spatial_multiple"], "16");
    assert_eq!(meta["cggm.normalisation"], "zscore-nonzero");
    let values: serde_json::Value = serde_json::from_str(&meta["cggm.label_values"]).unwrap();
    assert_eq!(values["brats2021"], serde_json::json!([0, 1, 2, 4]));
    assert_eq!(values["msd"], serde_json::json!([0, 2, 1, 3]));

    // The study: scripts/onnx_infer.py against `cggm infer`, voxel for voxel, in two label
    // numberings.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx_infer.py");
    for (labels, name) in [
        (OutputLabels::Brats2021, "brats2021"),
        (OutputLabels::Msd, "msd"),
    ] {
        let theirs = tmp.path().join(format!("cggm-{name}.nii.gz"));
        infer(
            &run,
            std::slice::from_ref(&case),
            &theirs,
            labels,
            Some("cpu"),
            &EventSink::none(),
        )
        .unwrap();
        let ours = tmp.path().join(format!("onnx-{name}.nii.gz"));
        let output = Process::new(python())
            .arg(&script)
            .arg("--model")
            .arg(&model)
            .arg("--case")
            .arg(&case)
            .arg("--out")
            .arg(&ours)
            .args(["--labels", name, "--batch", "5"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "onnx_infer.py failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (_, a) = read_volume(&theirs).unwrap();
        let (_, b) = read_volume(&ours).unwrap();
        assert_eq!(a.shape(), [40, 44, 12]);
        assert_eq!(a.shape(), b.shape());
        let differing = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
        let mut kinds: BTreeMap<u8, usize> = BTreeMap::new();
        for &v in a.iter() {
            *kinds.entry(v as u8).or_default() += 1;
        }
        let tumour = a.iter().filter(|&&v| v != 0.0).count();
        println!(
            "{name}: {differing} of {} voxels differ; cggm infer labels {tumour} voxels as \
             tumour; voxels per value {kinds:?}",
            a.len()
        );
        assert!(
            kinds.keys().filter(|&&v| v != 0).count() >= 2,
            "cggm infer labels more than one tumour class: {kinds:?}"
        );
        assert!(a.iter().any(|&v| v == 0.0), "and some background");
        assert_eq!(differing, 0, "{name}: onnx_infer.py vs cggm infer");
    }
}

#[test]
fn feature_exports_compute_our_logits_with_padding_masks() {
    let _rng = exclusive();
    for task in [TaskKind::Classification, TaskKind::Regression] {
        let data = tempfile::tempdir().unwrap();
        let spec = write_feature_dataset(
            data.path(),
            &FeatureSynthConfig {
                task,
                seed: 4,
                train: 32,
                valid: 8,
                test: 8,
                imbalance: 1.0,
            },
        )
        .unwrap();
        let run = tempfile::tempdir().unwrap();
        let mut cfg = TrainConfig::preset("cpu-features").unwrap();
        cfg.data = data.path().to_path_buf();
        cfg.device = "cpu".into();
        cfg.epochs = 1;
        cfg.sampler.batch_size = 16;
        train_features(
            cfg,
            run.path(),
            &EventSink::none(),
            &TrainOptions::default(),
        )
        .unwrap()
        .unwrap();
        let model = run.path().join("model.onnx");
        export_cli(run.path(), &model);

        let opened = open_feature_run(run.path(), "test", None, Some("cpu")).unwrap();
        let batch = opened
            .split
            .batch(&(0..8).collect::<Vec<i64>>(), Device::Cpu);
        // Valid lengths 1..=T per sample: padding masked out of attention (true = padding).
        tch::manual_seed(5);
        let lengths: Vec<Tensor> = batch
            .features
            .iter()
            .map(|f| Tensor::randint_low(1, f.size()[1] + 1, [8], (Kind::Int64, Device::Cpu)))
            .collect();
        let padding = batch
            .features
            .iter()
            .zip(&lengths)
            .map(|(f, l)| {
                let steps = Tensor::arange(f.size()[1], (Kind::Int64, Device::Cpu)).unsqueeze(0);
                Some(steps.ge_tensor(&l.unsqueeze(1)))
            })
            .collect();
        let input = FeatureInput {
            features: batch.features.iter().map(|f| f.shallow_clone()).collect(),
            padding,
        };
        let ours = tch::no_grad(|| opened.model.network.forward_t(&input, false).logits);
        let names = opened.model.modality_names.clone();
        let length_names: Vec<String> = names.iter().map(|n| format!("{n}_lengths")).collect();
        let mut inputs: Vec<(&str, &Tensor)> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            inputs.push((n.as_str(), &batch.features[i]));
            inputs.push((length_names[i].as_str(), &lengths[i]));
        }
        let outputs: &[&str] = match task {
            TaskKind::Classification => &["logits", "labels"],
            _ => &["logits"],
        };
        let onnx = run_onnx(&model, &inputs, outputs);
        let (logits, shape) = onnx.f32s("logits");
        assert_eq!(shape, ours.size());
        let scale = ours.abs().max().double_value(&[]);
        let diff = max_abs_difference(&ours, &logits);
        let longest: Vec<i64> = batch.features.iter().map(|f| f.size()[1]).collect();
        println!(
            "{task}: modalities {names:?} with steps {longest:?}; max |logit| {scale:.3}, \
             max |ONNX - ours| {diff:.3e}"
        );
        assert!(scale > 0.01, "the logits are not degenerate: {scale}");
        assert!(diff <= TOLERANCE, "{task}: ONNX logits differ by {diff}");
        assert_eq!(onnx.metadata["cggm.task"], task.to_string());
        assert_eq!(onnx.metadata["cggm.modalities"], names.join(","));
        if task == TaskKind::Classification {
            let ours = Vec::<i64>::try_from(&ours.argmax(1, false)).unwrap();
            assert_eq!(onnx.i64s("labels"), ours);
            let classes: Vec<String> =
                serde_json::from_str(&onnx.metadata["cggm.classes"]).unwrap();
            assert_eq!(classes, spec.classes);
        }
    }
}

#[test]
fn export_refuses_unknown_formats_folders_without_a_run_and_runs_without_a_checkpoint() {
    let err = "tflite".parse::<ExportFormat>().unwrap_err().to_string();
    assert!(
        err.contains("unknown export format") && err.contains("onnx"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model.onnx");
    let err = format!(
        "{:#}",
        export(tmp.path(), ExportFormat::Onnx, &out).unwrap_err()
    );
    assert!(err.contains("is not a run directory"), "{err}");
    // A run whose first epoch has not finished: its configuration but no checkpoint.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cfg = TrainConfig::preset("tiny").unwrap();
    std::fs::write(run.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let err = format!("{:#}", export(&run, ExportFormat::Onnx, &out).unwrap_err());
    assert!(err.contains("has no checkpoint yet"), "{err}");
    // Something else in config.json: not a run configuration.
    std::fs::write(run.join("config.json"), br#"{"task": "detection"}"#).unwrap();
    let err = format!("{:#}", export(&run, ExportFormat::Onnx, &out).unwrap_err());
    assert!(err.contains("is not a valid run configuration"), "{err}");
    assert!(!out.exists());
}
