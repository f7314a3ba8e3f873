//! The flat multi-tensor optimisers against `torch.optim` (run through `$CGGM_PYTHON`): the same
//! initial weights and the same gradients for several steps, two parameter groups with their own
//! learning rates, weight decay and momentum on, a per-group gradient scale (CGGM's magnitude
//! modulation) and gradient clipping; the final weights must agree.

use cggm_trainer::optim::{Optimizer, OptimizerConfig, OptimizerKind, Param};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use tch::{Device, Kind, Tensor};

const SHAPES: [&[i64]; 4] = [&[3, 4], &[4], &[2, 2, 3, 3], &[5]];
const GROUPS: [usize; 4] = [0, 0, 1, 1];
const LRS: [f64; 2] = [0.05, 0.02];
const STEPS: usize = 6;
const GROUP1_SCALE: f64 = 0.5;
const MAX_NORM: f64 = 2.0;

/// Deterministic, sign-changing values: the same on both sides without sharing a generator.
fn values(n: i64, seed: f64) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f64 + 1.0) * 0.7 + seed).sin() as f32 * (1.0 + seed.cos() as f32))
        .collect()
}

fn numel(shape: &[i64]) -> i64 {
    shape.iter().product()
}

fn run_ours(kind: OptimizerKind) -> Vec<Vec<f32>> {
    let tensors: Vec<Tensor> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Tensor::from_slice(&values(numel(s), i as f64))
                .view(*s)
                .set_requires_grad(true)
        })
        .collect();
    let params = tensors
        .iter()
        .zip(GROUPS)
        .enumerate()
        .map(|(i, (t, group))| Param {
            name: format!("p{i}"),
            tensor: t.shallow_clone(),
            group,
        })
        .collect();
    let cfg = OptimizerConfig {
        kind,
        momentum: 0.9,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = Optimizer::new(cfg, params);
    for step in 0..STEPS {
        opt.zero_grad();
        // d/dw sum(w * G) = G: the gradient of step `step` is exactly G.
        let loss = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let g =
                    Tensor::from_slice(&values(numel(SHAPES[i]), 10.0 * step as f64 + i as f64))
                        .view(SHAPES[i]);
                (t * g).sum(Kind::Float)
            })
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
        opt.scale_group_gradients(1, GROUP1_SCALE);
        opt.clip_grad_norm(MAX_NORM);
        opt.step(&|g| LRS[g]);
    }
    tensors
        .iter()
        .map(|t| Vec::<f32>::try_from(&t.detach().flatten(0, -1)).unwrap())
        .collect()
}

const TORCH_SIDE: &str = r#"
import json, math, sys, torch
spec = json.load(sys.stdin)
shapes, groups, lrs = spec["shapes"], spec["groups"], spec["lrs"]
def values(n, seed):
    return [math.sin((i + 1.0) * 0.7 + seed) * (1.0 + math.cos(seed)) for i in range(n)]
params = [torch.tensor(values(math.prod(s), float(i)), dtype=torch.float32).view(s).requires_grad_()
          for i, s in enumerate(shapes)]
param_groups = [{"params": [p for p, g in zip(params, groups) if g == k], "lr": lrs[k]}
                for k in range(len(lrs))]
kind = spec["kind"]
if kind == "sgd":
    opt = torch.optim.SGD(param_groups, lr=lrs[0], momentum=0.9, weight_decay=0.01, foreach=False)
elif kind == "adam":
    opt = torch.optim.Adam(param_groups, lr=lrs[0], weight_decay=0.01, foreach=False)
else:
    opt = torch.optim.AdamW(param_groups, lr=lrs[0], weight_decay=0.01, foreach=False)
for step in range(spec["steps"]):
    opt.zero_grad()
    for i, p in enumerate(params):
        p.grad = torch.tensor(values(p.numel(), 10.0 * step + i), dtype=torch.float32).view(p.shape)
        if groups[i] == 1:
            p.grad.mul_(spec["group1_scale"])
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    if total > spec["max_norm"]:
        for p in params:
            p.grad.mul_(spec["max_norm"] / (total + 1e-6))
    opt.step()
print(json.dumps([p.detach().flatten().tolist() for p in params]))
"#;

fn run_torch(kind: &str) -> Vec<Vec<f32>> {
    let python = std::env::var_os("CGGM_PYTHON")
        .or(option_env!("CGGM_BUILD_PYTHON").map(Into::into))
        .expect(
            "CGGM_PYTHON is not set: this test compares against torch.optim. Run it through \
         `scripts/with-torch.sh cargo test ...`, which sets it to the project venv's python.",
        );
    let spec = json!({
        "kind": kind, "shapes": SHAPES, "groups": GROUPS, "lrs": LRS, "steps": STEPS,
        "group1_scale": GROUP1_SCALE, "max_norm": MAX_NORM,
    });
    let mut child = Command::new(python)
        .args(["-c", TORCH_SIDE])
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
        "torch side failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the torch side prints the weights as JSON")
}

fn agrees_with_torch(kind: OptimizerKind, name: &str) {
    let ours = run_ours(kind);
    let theirs = run_torch(name);
    let initial: Vec<Vec<f32>> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| values(numel(s), i as f64))
        .collect();
    for (p, ((a, b), w0)) in ours.iter().zip(&theirs).zip(&initial).enumerate() {
        assert_eq!(a.len(), b.len());
        let moved = a
            .iter()
            .zip(w0)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-3, "{name}: parameter {p} did not move");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 + 1e-5 * y.abs(),
                "{name}: parameter {p} differs from torch.optim: {x} vs {y}"
            );
        }
    }
}

#[test]
fn sgd_with_momentum_and_weight_decay_matches_torch_optim() {
    agrees_with_torch(OptimizerKind::Sgd, "sgd");
}

#[test]
fn adam_with_weight_decay_matches_torch_optim() {
    agrees_with_torch(OptimizerKind::Adam, "adam");
}

#[test]
fn adamw_matches_torch_optim() {
    agrees_with_torch(OptimizerKind::Adamw, "adamw");
}
