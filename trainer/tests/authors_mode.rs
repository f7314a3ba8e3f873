//! `--method cggm-authors` step by step against a PyTorch transcription of the authors' loop
//! (trainer/tests/authors_loop.py, after zrguo/CGGM `src/segtrain.py` and `src/msatrain.py`, run
//! through `$CGGM_PYTHON`): a tiny model with the same weights on both sides, the same batches,
//! several steps; each step's losses, L_gm (built the step before, none at step 0), eps_i,
//! coefficients and weight cosines, and every parameter after the update, must agree. BraTS: SGD,
//! no gradient scaling, no clipping; regression and classification: Adam, `encoders.<i>` scaled by
//! rho c_i (the projection not), gradient norm clipped at 0.8.

use cggm_trainer::config::{Method, ScheduleConfig, TrainConfig};
use cggm_trainer::model::network::{
    ModalityClassifierSet, MultimodalNetwork, NetworkOutput, CLASSIFIER_GROUP,
};
use cggm_trainer::model::Model;
use cggm_trainer::optim::{OptimizerConfig, OptimizerKind};
use cggm_trainer::step::Trainer;
use cggm_trainer::task::classification::Classification;
use cggm_trainer::task::regression::Regression;
use cggm_trainer::task::segmentation::SoftDice;
use cggm_trainer::task::{Task, TaskKind};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use tch::{nn, Device, Kind, Tensor};

const M: usize = 3;
const HIDDEN: i64 = 4;
const MID: i64 = 5;
const BATCH: i64 = 6;
const STEPS: usize = 5;

/// Per modality a projection and an encoder (1x1 convolutions, tanh), a fusion hidden layer and
/// the last layer: the authors' parts at toy size (see authors_loop.py).
struct Toy {
    proj: Vec<nn::Conv2D>,
    body: Vec<nn::Conv2D>,
    hidden: nn::Conv2D,
    last: nn::Conv2D,
    names: Vec<String>,
    flatten: bool,
}

struct ToyOut {
    logits: Tensor,
    features: Vec<Tensor>,
}

impl NetworkOutput for ToyOut {
    fn logits(&self) -> &Tensor {
        &self.logits
    }
}

struct ToyClassifiers {
    hidden: Vec<nn::Conv2D>,
    last: Vec<nn::Conv2D>,
    flatten: bool,
}

fn conv(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 1, Default::default())
}

fn shaped(x: Tensor, flatten: bool) -> Tensor {
    if flatten {
        x.flatten(1, -1)
    } else {
        x
    }
}

impl MultimodalNetwork for Toy {
    type Input = Tensor;
    type Output = ToyOut;
    type Classifiers = ToyClassifiers;

    fn forward_t(&self, xs: &Tensor, _train: bool) -> ToyOut {
        let features: Vec<Tensor> = (0..M)
            .map(|i| {
                xs.narrow(1, i as i64, 1)
                    .apply(&self.proj[i])
                    .tanh()
                    .apply(&self.body[i])
                    .tanh()
            })
            .collect();
        let logits = Tensor::cat(&features, 1)
            .apply(&self.hidden)
            .relu()
            .apply(&self.last);
        ToyOut {
            logits: shaped(logits, self.flatten),
            features,
        }
    }

    fn last_layer_weight(&self) -> &Tensor {
        &self.last.ws
    }

    fn modality_names(&self) -> &[String] {
        &self.names
    }
}

impl ModalityClassifierSet<ToyOut> for ToyClassifiers {
    fn logits_t(&self, out: &ToyOut, _train: bool) -> Vec<Tensor> {
        (0..M)
            .map(|i| {
                let y = out.features[i]
                    .detach()
                    .apply(&self.hidden[i])
                    .relu()
                    .apply(&self.last[i]);
                shaped(y, self.flatten)
            })
            .collect()
    }

    fn last_layer_weight(&self, i: usize) -> Tensor {
        self.last[i].ws.shallow_clone()
    }

    fn last_layer_grad(&self, i: usize) -> Tensor {
        self.last[i].ws.grad()
    }
}

struct Case {
    task: TaskKind,
    classes: i64,
    side: i64,
}

fn config(case: &Case) -> TrainConfig {
    let segmentation = case.task == TaskKind::Segmentation;
    let mut cfg = TrainConfig::preset(if segmentation { "paper" } else { "paper-mosi" }).unwrap();
    cfg.method = Method::CggmAuthors;
    cfg.task = case.task;
    cfg.device = "cpu".into();
    cfg.mixed_precision = false;
    cfg.epochs = 1;
    let (lr, cls_lr) = if segmentation {
        (0.05, 0.03)
    } else {
        (0.01, 0.005)
    };
    cfg.schedule = ScheduleConfig {
        lr,
        min_lr: lr,
        warmup_epochs: 0,
        warmup_start_lr: lr,
        classifier_lr: cls_lr,
        encoder_lr_scale: 1.0,
    };
    if segmentation {
        // segtrain.py: SGD, momentum 0.9, weight decay 3e-4 (the paper preset's), no clipping.
        assert_eq!(cfg.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(cfg.grad_clip, None);
        assert_eq!(cfg.loss.dice, SoftDice::AuthorsPooled);
        cfg.cggm.lambda = 0.5;
    } else {
        // msatrain.py: torch.optim.Adam with its defaults, clip 0.8 (the preset's), rho 1.3.
        cfg.optimizer = OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.0,
            ..OptimizerConfig::default()
        };
        assert_eq!(cfg.grad_clip, Some(0.8));
        assert_eq!(cfg.cggm.rho, 1.3);
    }
    cfg
}

fn trainer(case: &Case) -> Trainer<Toy> {
    tch::manual_seed(5);
    let cfg = config(case);
    let vs = nn::VarStore::new(Device::Cpu);
    let names: Vec<String> = ["flair", "t1ce", "t2"].map(String::from).to_vec();
    let flatten = case.task != TaskKind::Segmentation;
    let root = vs.root();
    let mut proj = Vec::new();
    let mut body = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = (&root / "encoders" / name.as_str()).set_group(i + 1);
        proj.push(conv(&p / "proj", 1, HIDDEN));
        body.push(conv(&p / "body", HIDDEN, HIDDEN));
    }
    let head = &root / "head";
    let model = Toy {
        proj,
        body,
        hidden: conv(&head / "hidden", M as i64 * HIDDEN, MID),
        last: conv(&head / "out_layer", MID, case.classes),
        names: names.clone(),
        flatten,
    };
    let (mut hidden, mut last) = (Vec::new(), Vec::new());
    for name in &names {
        let p = (&root / "classifiers" / name.as_str()).set_group(CLASSIFIER_GROUP);
        hidden.push(conv(&p / "hidden", HIDDEN, MID));
        last.push(conv(&p / "out_layer", MID, case.classes));
    }
    let classifiers = ToyClassifiers {
        hidden,
        last,
        flatten,
    };
    let task: Box<dyn Task> = match case.task {
        TaskKind::Segmentation => Box::new(cfg.loss.clone()),
        TaskKind::Classification => Box::new(Classification),
        TaskKind::Regression => Box::new(Regression),
    };
    let model = Model::assemble(
        cfg,
        Device::Cpu,
        vs,
        model,
        Some(classifiers),
        (0..M as i64).collect(),
    );
    Trainer::with_task(model, STEPS, task)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn entry(t: &Tensor) -> Value {
    json!({ "shape": t.size(), "values": values(t) })
}

/// The batches: inputs [B, M, S, S] and labels ([B, S, S] classes, [B] classes, [B] floats).
fn batches(case: &Case) -> Vec<(Tensor, Tensor)> {
    tch::manual_seed(17);
    let s = case.side;
    (0..STEPS)
        .map(|_| {
            let x = Tensor::randn([BATCH, M as i64, s, s], (Kind::Float, Device::Cpu));
            let y = match case.task {
                TaskKind::Segmentation => {
                    Tensor::randint(case.classes, [BATCH, s, s], (Kind::Int64, Device::Cpu))
                }
                TaskKind::Classification => {
                    Tensor::randint(case.classes, [BATCH], (Kind::Int64, Device::Cpu))
                }
                TaskKind::Regression => Tensor::randn([BATCH], (Kind::Float, Device::Cpu)),
            };
            (x, y)
        })
        .collect()
}

fn run_torch(spec: &Value) -> Vec<Value> {
    let python = std::env::var_os("CGGM_PYTHON").expect(
        "CGGM_PYTHON is not set: this test runs the authors' loop in PyTorch. Run it through \
         `scripts/with-torch.sh cargo test ...`, which sets it to the project venv's python.",
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/authors_loop.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CGGM_PYTHON interpreter starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the PyTorch side failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the PyTorch side prints its steps as JSON")
}

fn close(what: &str, step: usize, ours: f64, theirs: f64, tol: f64) {
    assert!(
        (ours - theirs).abs() <= tol * (1.0 + theirs.abs()),
        "step {step}, {what}: ours {ours}, the authors' loop {theirs}"
    );
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check(case: Case) {
    let mut ours = trainer(&case);
    let data = batches(&case);
    let weights: serde_json::Map<String, Value> = ours
        .model
        .vs
        .variables()
        .iter()
        .map(|(k, t)| (k.clone(), entry(t)))
        .collect();
    let spec = json!({
        "task": case.task.name(), "modalities": M, "names": ours.model.modality_names,
        "hidden": HIDDEN, "mid": MID, "classes": case.classes,
        "weights": weights,
        "optimizer": { "weight_decay": ours.model.cfg.optimizer.weight_decay,
                       "momentum": ours.model.cfg.optimizer.momentum },
        "class_weights": ours.model.cfg.loss.class_weights,
        "lr": ours.model.cfg.schedule.lr, "cls_lr": ours.model.cfg.schedule.classifier_lr,
        "lambda": ours.model.cfg.cggm.lambda, "rho": ours.model.cfg.cggm.rho,
        "clip": ours.model.cfg.grad_clip,
        "batches": data.iter().map(|(x, y)| json!({
            "x": entry(x), "y": values(y), "y_shape": y.size(),
        })).collect::<Vec<_>>(),
    });
    let theirs = run_torch(&spec);
    assert_eq!(theirs.len(), STEPS);
    let rho = ours.model.cfg.cggm.rho;
    let mut coefficients_moved = false;
    for (step, ((x, y), t)) in data.iter().zip(&theirs).enumerate() {
        let r = ours.step(x, y).unwrap();
        close("loss", step, r.loss, t["loss"].as_f64().unwrap(), 1e-5);
        close(
            "task loss",
            step,
            r.task_loss,
            t["task_loss"].as_f64().unwrap(),
            1e-5,
        );
        let gm = t["gm_added"].as_f64().unwrap();
        close("L_gm (of step t - 1)", step, r.gm_loss, gm, 1e-5);
        assert_eq!(step == 0, gm == 0.0, "L_gm enters from step 1 on");
        for (i, (a, b)) in r.modality_metric.iter().zip(numbers(&t["eps"])).enumerate() {
            close(&format!("eps_{i}"), step, *a, b, 1e-6);
        }
        for (i, (a, b)) in r
            .balance
            .iter()
            .zip(numbers(&t["coefficients"]))
            .enumerate()
        {
            close(&format!("rho c_{i}"), step, *a, rho * b, 1e-6);
            coefficients_moved |= (b - 1.0).abs() > 1e-3;
        }
        for (i, (a, b)) in r.cosine.iter().zip(numbers(&t["cosines"])).enumerate() {
            close(&format!("cos_{i}"), step, *a, b, 1e-5);
        }
        let vars = ours.model.vs.variables();
        for (name, want) in t["params"].as_object().unwrap() {
            let got = values(&vars[name]);
            let want = numbers(want);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err < 2e-5,
                "step {step}, {name}: max |ours - theirs| = {err}"
            );
        }
    }
    assert!(
        coefficients_moved,
        "the batches must move the coefficients away from 1"
    );
}

#[test]
fn brats_authors_mode_matches_the_authors_segtrain_loop() {
    check(Case {
        task: TaskKind::Segmentation,
        classes: 4,
        side: 4,
    });
}

#[test]
fn regression_authors_mode_matches_the_authors_msatrain_loop() {
    check(Case {
        task: TaskKind::Regression,
        classes: 1,
        side: 1,
    });
}

#[test]
fn classification_authors_mode_matches_the_authors_msatrain_loop() {
    check(Case {
        task: TaskKind::Classification,
        classes: 4,
        side: 1,
    });
}

/// The mode on the real segmentation model (grouped classifiers, DeepLabv3+ head): L_gm enters
/// from step 1 with weight lambda, and the lagged term survives a checkpoint (JSON).
#[test]
fn the_authors_mode_runs_on_the_segmentation_model_and_its_lag_survives_a_checkpoint() {
    let mut cfg = TrainConfig::preset("tiny").unwrap();
    cfg.method = Method::CggmAuthors;
    cfg.device = "cpu".into();
    let mut t = Trainer::segmentation(cfg, Device::Cpu, 3);
    tch::manual_seed(3);
    let images = Tensor::randn([2, 4, 32, 32], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(4, [2, 32, 32], (Kind::Int64, Device::Cpu));
    let first = t.step(&images, &labels).unwrap();
    assert_eq!(first.gm_loss, 0.0, "no L_gm at step 0");
    let second = t.step(&images, &labels).unwrap();
    assert!(second.gm_loss > 0.0 && second.loss.is_finite());
    assert!((second.loss - second.task_loss - 0.1 * second.gm_loss).abs() < 1e-5);
    let saved = serde_json::to_string(&t.tracker).unwrap();
    let restored: cggm_trainer::cggm::BalanceTracker = serde_json::from_str(&saved).unwrap();
    assert_eq!(restored.authors_lag, t.tracker.authors_lag);
    assert!(restored.authors_lag.is_some());
}
