//! Optimisers (SGD with momentum, Adam, AdamW) with per-group learning rates and state that is
//! saved in checkpoints, so a resumed run continues exactly where it stopped; and the cosine
//! learning-rate schedule with linear warm-up. Each group's parameters, gradients and state live in
//! flat buffers, updated by libtorch's fused kernels (trainer/src/fused_optim.rs: one pass per group
//! per step).

use crate::fused_optim;
pub use cggm_core::optim_config::{OptimizerConfig, OptimizerKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Tensor};

/// Why a checkpoint's optimiser state does not fit this optimiser.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("bad optimizer state key {0:?}")]
    Key(String),
    #[error("optimizer state names parameter {0:?} that the model does not have")]
    UnknownParameter(String),
    #[error("optimizer state of {name:?} has {found} tensors but {kind:?} keeps {expected}: the checkpoint was written with another optimizer setting; resume with the run's own config.json")]
    Count {
        name: String,
        found: usize,
        kind: OptimizerKind,
        expected: usize,
    },
    #[error("optimizer state of {name:?} has shape {found:?}, the parameter {expected:?}")]
    Shape {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
}

/// A trainable parameter with its name and optimiser group.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub group: usize,
}

/// The parameters of one optimiser group (and one dtype and device) laid out in one flat buffer:
/// every parameter's data is a view into `weights`, and once a backward pass has allocated them,
/// every gradient is a view into `grads` (autograd then accumulates into the flat buffer in
/// place). A step therefore costs a handful of large kernels per group instead of about ten small
/// ones per parameter, and the gradients need no gathering.
struct Bucket {
    group: usize,
    /// Indices into `Optimizer::params`.
    members: Vec<usize>,
    /// (offset, numel) of each member in the flat buffers.
    spans: Vec<(i64, i64)>,
    /// Each member's slot of `weights` / `grads`, shaped like the member, and their addresses.
    weight_views: Vec<Tensor>,
    grad_views: Vec<Tensor>,
    weight_ptrs: Vec<usize>,
    grad_ptrs: Vec<usize>,
    weights: Tensor,
    grads: Tensor,
    /// Momentum buffer (SGD) or first and second moments (Adam), flat like `weights`; empty
    /// before the first step, as in `torch.optim`.
    state: Vec<Tensor>,
    /// `grads` has been filled by a `sync` (before that it is uninitialised memory).
    synced: bool,
}

fn address(t: &Tensor) -> usize {
    t.data_ptr() as usize
}

impl Bucket {
    fn new(group: usize, members: Vec<usize>, params: &[Param]) -> Self {
        let tensors: Vec<&Tensor> = members.iter().map(|&i| &params[i].tensor).collect();
        let first = tensors[0];
        let (kind, device) = (first.kind(), first.device());
        let mut spans = Vec::with_capacity(members.len());
        let mut offset = 0;
        for t in &tensors {
            let n = t.numel() as i64;
            spans.push((offset, n));
            offset += n;
        }
        let (weights, grads) = tch::no_grad(|| {
            let flat: Vec<Tensor> = tensors.iter().map(|t| t.detach().reshape([-1])).collect();
            // Uninitialised: the first `sync` writes every slot (copying each gradient in and
            // freeing autograd's own as it goes), so its pages become resident one parameter
            // at a time instead of beside a full second copy of the gradients.
            (
                Tensor::cat(&flat, 0),
                Tensor::empty([offset], (kind, device)),
            )
        });
        let slot = |buffer: &Tensor, (off, n): (i64, i64), like: &Tensor| {
            buffer.narrow(0, off, n).view(like.size().as_slice())
        };
        let weight_views: Vec<Tensor> = spans
            .iter()
            .zip(&tensors)
            .map(|(&s, t)| slot(&weights, s, t))
            .collect();
        let grad_views: Vec<Tensor> = spans
            .iter()
            .zip(&tensors)
            .map(|(&s, t)| slot(&grads, s, t))
            .collect();
        tch::no_grad(|| {
            for (t, view) in tensors.iter().zip(&weight_views) {
                let mut t = t.shallow_clone();
                t.set_data(view);
            }
        });
        Self {
            group,
            members,
            spans,
            weight_ptrs: weight_views.iter().map(address).collect(),
            grad_ptrs: grad_views.iter().map(address).collect(),
            weight_views,
            grad_views,
            weights,
            grads,
            state: Vec::new(),
            synced: false,
        }
    }

    /// Makes the flat buffers hold every member's weights and gradients: a member whose data or
    /// gradient was replaced (the first backward allocates gradients) is copied in and re-linked.
    /// Returns the members that have no gradient (their slot of `grads` is zero).
    fn sync(&mut self, params: &[Param]) -> Vec<usize> {
        let first = !self.synced;
        self.synced = true;
        let mut missing = Vec::new();
        tch::no_grad(|| {
            for (k, &i) in self.members.iter().enumerate() {
                let mut w = params[i].tensor.shallow_clone();
                if address(&w) != self.weight_ptrs[k] {
                    self.weight_views[k].shallow_clone().copy_(&w.detach());
                    w.set_data(&self.weight_views[k]);
                }
                let mut g = w.grad();
                if !g.defined() {
                    let _ = self.grad_views[k].shallow_clone().zero_();
                    missing.push(k);
                } else if address(&g) != self.grad_ptrs[k] {
                    self.grad_views[k].shallow_clone().copy_(&g);
                    g.set_data(&self.grad_views[k]);
                }
            }
        });
        if first {
            // Autograd's own first gradients are free now; most lie in the heap, which glibc
            // would keep resident beside the flat buffer and the optimiser state to come.
            release_freed_heap();
        }
        missing
    }

    fn member_slot(buffer: &Tensor, (off, n): (i64, i64)) -> Tensor {
        buffer.narrow(0, off, n)
    }
}

pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<Param>,
    buckets: Vec<Bucket>,
    steps: i64,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, params: Vec<Param>) -> Self {
        // One bucket per (group, dtype, device), members in parameter order.
        let mut keys: Vec<(usize, tch::Kind, Device)> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let key = (p.group, p.tensor.kind(), p.tensor.device());
            match keys.iter().position(|k| *k == key) {
                Some(b) => members[b].push(i),
                None => {
                    keys.push(key);
                    members.push(vec![i]);
                }
            }
        }
        let buckets = keys
            .iter()
            .zip(members)
            .map(|(k, m)| Bucket::new(k.0, m, &params))
            .collect();
        // The parameters' first allocations (as large as the model) are free now, scattered
        // over the heap where glibc keeps them resident: 0.9 GB of the paper model's peak.
        release_freed_heap();
        Self {
            cfg,
            params,
            buckets,
            steps: 0,
        }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Zeroes every gradient: one kernel per group once the gradients live in the flat buffers.
    pub fn zero_grad(&mut self) {
        tch::no_grad(|| {
            for b in &self.buckets {
                if b.synced {
                    let _ = b.grads.shallow_clone().zero_();
                }
                for (k, &i) in b.members.iter().enumerate() {
                    let mut g = self.params[i].tensor.grad();
                    if g.defined() && address(&g) != b.grad_ptrs[k] {
                        let _ = g.detach_().zero_();
                    }
                }
            }
        });
    }

    /// Multiplies the gradients of every parameter of group `group` by `factor` (one kernel).
    pub fn scale_group_gradients(&mut self, group: usize, factor: f64) {
        for b in self.buckets.iter_mut().filter(|b| b.group == group) {
            b.sync(&self.params);
            tch::no_grad(|| {
                let _ = b.grads.shallow_clone().g_mul_scalar_(factor);
            });
        }
    }

    /// Multiplies every gradient by `factor` (one kernel per group) and says whether all of them
    /// are finite, with one host synchronisation: the unscaling of fp16 loss scaling.
    pub fn unscale_gradients(&mut self, factor: f64) -> bool {
        if self.buckets.is_empty() {
            return true;
        }
        let params = &self.params;
        let checks: Vec<Tensor> = self
            .buckets
            .iter_mut()
            .map(|b| {
                b.sync(params);
                tch::no_grad(|| {
                    let _ = b.grads.shallow_clone().g_mul_scalar_(factor);
                });
                b.grads.isfinite().all()
            })
            .collect();
        Tensor::stack(&checks, 0)
            .all()
            .to_kind(tch::Kind::Int64)
            .int64_value(&[])
            != 0
    }

    /// Rescales all gradients so that their global L2 norm is at most `max_norm`; returns the
    /// norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        if self.buckets.is_empty() {
            return 0.0;
        }
        let params = &self.params;
        let squares: Vec<Tensor> = self
            .buckets
            .iter_mut()
            .map(|b| {
                b.sync(params);
                b.grads.square().sum(tch::Kind::Double)
            })
            .collect();
        // One host synchronisation for the whole model.
        let total = Tensor::stack(&squares, 0)
            .sum(tch::Kind::Double)
            .double_value(&[])
            .sqrt();
        if total > max_norm && total.is_finite() {
            let scale = max_norm / (total + 1e-6);
            tch::no_grad(|| {
                for b in &self.buckets {
                    let _ = b.grads.shallow_clone().g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    /// Number of flat state buffers the configured optimiser keeps per parameter.
    fn state_count(&self) -> usize {
        match self.cfg.kind {
            OptimizerKind::Sgd if self.cfg.momentum == 0.0 => 0,
            OptimizerKind::Sgd => 1,
            OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        }
    }

    /// One update; `lr(group)` gives the learning rate of each group. Follows `torch.optim`'s
    /// SGD (momentum, no dampening, no Nesterov), Adam and AdamW: their fused kernels, which
    /// `torch.optim` runs with `fused=True`. Read the gradients before the step.
    pub fn step(&mut self, lr: &dyn Fn(usize) -> f64) {
        self.steps += 1;
        let t = self.steps as f64;
        let cfg = self.cfg.clone();
        let state_count = self.state_count();
        for b in &mut self.buckets {
            let missing = b.sync(&self.params);
            if missing.len() == b.members.len() {
                continue;
            }
            let lr = lr(b.group);
            tch::no_grad(|| {
                // Parameters without a gradient this step keep their weights and state, as
                // torch.optim skips them.
                let keep: Vec<(usize, Tensor, Vec<Tensor>)> = missing
                    .iter()
                    .map(|&k| {
                        let span = b.spans[k];
                        (
                            k,
                            Bucket::member_slot(&b.weights, span).copy(),
                            b.state
                                .iter()
                                .map(|s| Bucket::member_slot(s, span).copy())
                                .collect(),
                        )
                    })
                    .collect();
                update(&cfg, b, lr, t, state_count);
                for (k, w, state) in keep {
                    let span = b.spans[k];
                    Bucket::member_slot(&b.weights, span).copy_(&w);
                    for (s, saved) in b.state.iter().zip(state) {
                        Bucket::member_slot(s, span).copy_(&saved);
                    }
                }
            });
        }
    }

    /// State for a checkpoint: named tensors (per parameter, `name#i`) plus the step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("__steps".to_string(), Tensor::from_slice(&[self.steps]))];
        for b in &self.buckets {
            for (k, &i) in b.members.iter().enumerate() {
                let p = &self.params[i];
                for (j, s) in b.state.iter().enumerate() {
                    let view = Bucket::member_slot(s, b.spans[k]).view(p.tensor.size().as_slice());
                    out.push((format!("{}#{j}", p.name), view));
                }
            }
        }
        out
    }

    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), StateError> {
        let mut pieces = self.state_pieces(tensors)?;
        let expected = self.state_count();
        for b in &mut self.buckets {
            b.state.clear();
            let saved: Vec<(usize, Vec<(usize, Tensor)>)> = b
                .members
                .iter()
                .enumerate()
                .filter_map(|(k, &i)| pieces.remove(&self.params[i].name).map(|s| (k, s)))
                .collect();
            if saved.is_empty() {
                continue;
            }
            b.state = (0..expected).map(|_| b.weights.zeros_like()).collect();
            for (k, bufs) in saved {
                load_member(
                    b,
                    k,
                    bufs,
                    &self.params[b.members[k]],
                    self.cfg.kind,
                    expected,
                )?;
            }
        }
        Ok(())
    }

    /// The saved buffers (`name#j`) grouped by parameter name; `__steps` sets the step count.
    fn state_pieces(
        &mut self,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<HashMap<String, Vec<(usize, Tensor)>>, StateError> {
        let mut pieces: HashMap<String, Vec<(usize, Tensor)>> = HashMap::new();
        for (key, t) in tensors {
            if key == "__steps" {
                self.steps = t.int64_value(&[0]);
                continue;
            }
            let Some((name, Ok(idx))) = key
                .rsplit_once('#')
                .map(|(name, idx)| (name, idx.parse::<usize>()))
            else {
                return Err(StateError::Key(key));
            };
            pieces.entry(name.to_string()).or_default().push((idx, t));
        }
        if let Some(name) = pieces
            .keys()
            .find(|n| !self.params.iter().any(|p| &p.name == *n))
        {
            return Err(StateError::UnknownParameter(name.clone()));
        }
        Ok(pieces)
    }
}

/// Copies member `k`'s (parameter `p`'s) saved buffers into the bucket's state, checking their
/// count (`expected` for optimiser `kind`) and sizes.
fn load_member(
    b: &Bucket,
    k: usize,
    mut bufs: Vec<(usize, Tensor)>,
    p: &Param,
    kind: OptimizerKind,
    expected: usize,
) -> Result<(), StateError> {
    bufs.sort_by_key(|(j, _)| *j);
    if bufs.len() != expected {
        return Err(StateError::Count {
            name: p.name.clone(),
            found: bufs.len(),
            kind,
            expected,
        });
    }
    for (s, (_, t)) in b.state.iter().zip(bufs) {
        if t.numel() as i64 != b.spans[k].1 {
            return Err(StateError::Shape {
                name: p.name.clone(),
                found: t.size(),
                expected: p.tensor.size(),
            });
        }
        tch::no_grad(|| {
            Bucket::member_slot(s, b.spans[k])
                .copy_(&t.reshape([-1]).to_device(s.device()).to_kind(s.kind()));
        });
    }
    Ok(())
}

/// Hands the heap's free pages back to the operating system (glibc's `malloc_trim`; elsewhere a
/// no-op). It only releases memory no allocation uses.
#[allow(unsafe_code)]
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and frees only pages of free heap chunks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The update of one bucket, on the flat buffers.
fn update(cfg: &OptimizerConfig, b: &mut Bucket, lr: f64, t: f64, state_count: usize) {
    let fresh = b.state.is_empty() && state_count > 0;
    match cfg.kind {
        OptimizerKind::Sgd => sgd_update(cfg, b, lr, fresh),
        OptimizerKind::Adam | OptimizerKind::Adamw => adam_update(cfg, b, lr, t, fresh),
    }
}

/// SGD with momentum and L2 weight decay (`fresh`: the bucket has no momentum buffer yet), by
/// libtorch's fused kernel (one pass over the buffers).
fn sgd_update(cfg: &OptimizerConfig, b: &mut Bucket, lr: f64, fresh: bool) {
    if cfg.momentum != 0.0 && fresh {
        // Filled by the kernel: PyTorch's convention, the first buffer is the gradient itself.
        b.state = vec![b.weights.zeros_like()];
    }
    let buffer = (cfg.momentum != 0.0).then(|| &b.state[0]);
    fused_optim::sgd(
        &b.weights,
        &b.grads,
        buffer,
        cfg.weight_decay,
        cfg.momentum,
        lr,
        fresh,
    );
}

/// Adam (L2 weight decay) or AdamW (decoupled) at step `t` (`fresh`: no moments yet), by
/// libtorch's fused kernel.
fn adam_update(cfg: &OptimizerConfig, b: &mut Bucket, lr: f64, t: f64, fresh: bool) {
    if fresh {
        b.state = vec![b.weights.zeros_like(), b.weights.zeros_like()];
    }
    let step = Tensor::from(t as f32).to_device(b.weights.device());
    fused_optim::adam(
        &b.weights,
        &b.grads,
        &b.state[0],
        &b.state[1],
        &step,
        lr,
        cfg.betas,
        cfg.weight_decay,
        cfg.eps,
        cfg.kind == OptimizerKind::Adamw,
    );
}

/// Cosine decay from `base` to `min` after a linear warm-up from `warmup_start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub base: f64,
    pub min: f64,
    pub warmup_start: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineSchedule {
    /// Learning rate at 0-based step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.warmup_start + (self.base - self.warmup_start) * f;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let f = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.min + 0.5 * (self.base - self.min) * (1.0 + (std::f64::consts::PI * f).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let s = CosineSchedule {
            base: 0.01,
            min: 0.001,
            warmup_start: 4e-4,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert!((s.lr(0) - 4e-4).abs() < 1e-12);
        assert!((s.lr(10) - 0.01).abs() < 1e-12);
        assert!((s.lr(60) - 0.0055).abs() < 1e-9);
        assert!((s.lr(110) - 0.001).abs() < 1e-12);
        assert!(s.lr(5) < s.lr(9));
    }

    fn quadratic_descends(kind: OptimizerKind) {
        let w = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let cfg = OptimizerConfig {
            kind,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = Optimizer::new(
            cfg,
            vec![Param {
                name: "w".into(),
                tensor: w.shallow_clone(),
                group: 0,
            }],
        );
        let start = w.square().sum(Kind::Float).double_value(&[]);
        for _ in 0..50 {
            opt.zero_grad();
            w.square().sum(Kind::Float).backward();
            opt.step(&|_| 0.05);
        }
        let end = w.square().sum(Kind::Float).double_value(&[]);
        assert!(end < start * 0.1, "{kind:?}: {start} -> {end}");
    }

    #[test]
    fn every_optimizer_minimises_a_quadratic() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            quadratic_descends(kind);
        }
    }

    #[test]
    fn parameters_and_gradients_are_views_of_the_flat_buffers() {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let param = |name: &str, t: &Tensor| Param {
            name: name.into(),
            tensor: t.shallow_clone(),
            group: 0,
        };
        let mut opt = Optimizer::new(
            OptimizerConfig {
                kind: OptimizerKind::Sgd,
                momentum: 0.0,
                weight_decay: 0.0,
                ..Default::default()
            },
            vec![param("a", &a), param("b", &b)],
        );
        assert_eq!(opt.buckets.len(), 1);
        let flat = opt.buckets[0].weights.shallow_clone();
        assert_eq!(address(&b), address(&flat) + 6 * 4);
        for _ in 0..2 {
            opt.zero_grad();
            ((&a * 2.0).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float)).backward();
            opt.step(&|_| 0.5);
        }
        // After the first step the gradients live in the flat buffer too.
        assert_eq!(address(&a.grad()), address(&opt.buckets[0].grads));
        assert_eq!(a.double_value(&[1, 2]), 1.0 - 2.0 * 0.5 * 2.0);
        assert_eq!(b.double_value(&[3]), 1.0 - 2.0 * 0.5 * 3.0);
        assert_eq!(flat.double_value(&[9]), b.double_value(&[3]));
    }

    #[test]
    fn a_parameter_without_gradient_keeps_its_weights_and_state() {
        let used = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let unused = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerConfig::default(),
            vec![
                Param {
                    name: "used".into(),
                    tensor: used.shallow_clone(),
                    group: 0,
                },
                Param {
                    name: "unused".into(),
                    tensor: unused.shallow_clone(),
                    group: 0,
                },
            ],
        );
        for _ in 0..3 {
            opt.zero_grad();
            used.sum(Kind::Float).backward();
            opt.step(&|_| 0.1);
        }
        assert!(used.double_value(&[0]) < 1.0);
        assert_eq!(unused.double_value(&[0]), 1.0, "weight decay must skip it");
    }

    #[test]
    fn state_round_trips() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerConfig::default(),
            vec![Param {
                name: "w".into(),
                tensor: w.shallow_clone(),
                group: 0,
            }],
        );
        w.sum(Kind::Float).backward();
        opt.step(&|_| 0.1);
        let saved = opt.state_tensors();
        let mut other = Optimizer::new(
            OptimizerConfig::default(),
            vec![Param {
                name: "w".into(),
                tensor: w.shallow_clone(),
                group: 0,
            }],
        );
        other.load_state(saved).unwrap();
        assert_eq!(other.steps, 1);
        let state = other.state_tensors();
        assert_eq!(state[1].0, "w#0");
        assert_eq!(state[1].1.size(), [3]);
        // SGD's first momentum buffer is the first gradient (ones) plus weight decay.
        let expected = 3.0 * (1.0 + OptimizerConfig::default().weight_decay);
        assert!((state[1].1.sum(Kind::Float).double_value(&[]) - expected).abs() < 1e-5);
    }
}
