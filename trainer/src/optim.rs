//! Optimisers (SGD with momentum, Adam, AdamW) with per-group learning rates and state that is
//! saved in checkpoints, so a resumed run continues exactly where it stopped; and the cosine
//! learning-rate schedule with linear warm-up.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::Adamw),
            other => Err(format!(
                "unknown optimizer {other:?}: use sgd, adam or adamw"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 3e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }
}

/// A trainable parameter with its name and optimiser group.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub group: usize,
}

pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<Param>,
    /// Per parameter: momentum buffer (SGD) or first and second moments (Adam).
    state: HashMap<String, Vec<Tensor>>,
    steps: i64,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, params: Vec<Param>) -> Self {
        Self {
            cfg,
            params,
            state: HashMap::new(),
            steps: 0,
        }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Rescales all gradients so that their global L2 norm is at most `max_norm`; returns the
    /// norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect();
        let total = grads
            .iter()
            .map(|g| g.square().sum(tch::Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        if total > max_norm && total.is_finite() {
            let scale = max_norm / (total + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    /// One update; `lr(group)` gives the learning rate of each group.
    pub fn step(&mut self, lr: &dyn Fn(usize) -> f64) {
        self.steps += 1;
        let cfg = self.cfg.clone();
        let t = self.steps as f64;
        tch::no_grad(|| {
            for p in &self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let lr = lr(p.group);
                let mut w = p.tensor.shallow_clone();
                match cfg.kind {
                    OptimizerKind::Sgd => {
                        let d = if cfg.weight_decay != 0.0 {
                            &g + &w * cfg.weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        let d = if cfg.momentum == 0.0 {
                            d
                        } else if let Some(bufs) = self.state.get_mut(&p.name) {
                            let _ = bufs[0].g_mul_scalar_(cfg.momentum).g_add_(&d);
                            bufs[0].shallow_clone()
                        } else {
                            // PyTorch's convention: the first buffer is the gradient itself.
                            let buf = d.copy();
                            self.state.insert(p.name.clone(), vec![buf.shallow_clone()]);
                            buf
                        };
                        let _ = w.g_add_(&(d * (-lr)));
                    }
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        let g = if cfg.kind == OptimizerKind::Adam && cfg.weight_decay != 0.0 {
                            &g + &w * cfg.weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if cfg.kind == OptimizerKind::Adamw && cfg.weight_decay != 0.0 {
                            let _ = w.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
                        }
                        let bufs = self
                            .state
                            .entry(p.name.clone())
                            .or_insert_with(|| vec![g.zeros_like(), g.zeros_like()]);
                        let (b1, b2) = cfg.betas;
                        let _ = bufs[0].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                        let _ = bufs[1].g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                        let m_hat = &bufs[0] / (1.0 - b1.powf(t));
                        let v_hat = &bufs[1] / (1.0 - b2.powf(t));
                        let _ = w.g_add_(&(m_hat / (v_hat.sqrt() + cfg.eps) * (-lr)));
                    }
                }
            }
        });
    }

    /// State for a checkpoint: named tensors plus the step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("__steps".to_string(), Tensor::from_slice(&[self.steps]))];
        for (name, bufs) in &self.state {
            for (i, b) in bufs.iter().enumerate() {
                out.push((format!("{name}#{i}"), b.shallow_clone()));
            }
        }
        out
    }

    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), String> {
        let device = self
            .params
            .first()
            .map(|p| p.tensor.device())
            .unwrap_or(tch::Device::Cpu);
        self.state.clear();
        let mut pieces: HashMap<String, Vec<(usize, Tensor)>> = HashMap::new();
        for (key, t) in tensors {
            if key == "__steps" {
                self.steps = t.int64_value(&[0]);
                continue;
            }
            let (name, idx) = key
                .rsplit_once('#')
                .ok_or_else(|| format!("bad optimizer state key {key:?}"))?;
            let idx: usize = idx
                .parse()
                .map_err(|_| format!("bad optimizer state key {key:?}"))?;
            pieces
                .entry(name.to_string())
                .or_default()
                .push((idx, t.to_device(device)));
        }
        for (name, mut bufs) in pieces {
            if !self.params.iter().any(|p| p.name == name) {
                return Err(format!(
                    "optimizer state names parameter {name:?} that the model does not have"
                ));
            }
            bufs.sort_by_key(|(i, _)| *i);
            self.state
                .insert(name, bufs.into_iter().map(|(_, t)| t).collect());
        }
        Ok(())
    }
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
        assert_eq!(other.state["w"][0].size(), [3]);
    }
}
