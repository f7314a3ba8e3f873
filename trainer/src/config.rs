//! The run configuration: one serialisable struct holding everything a run depends on, named
//! presets, and the methods a run can use. Saved as `config.json` in the run directory.

use crate::cggm::BalanceFormula;
use crate::data::{Modality, SamplerConfig};
use crate::model::ModelConfig;
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::task::segmentation::SegmentationLoss;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// How the encoders' gradients are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Plain joint training, no modulation.
    Joint,
    /// One modality alone (its encoder only).
    Unimodal(Modality),
    /// CGGM: magnitude (B_i scaling) and direction (L_gm) modulation.
    Cggm,
    /// CGGM magnitude only (lambda = 0).
    CggmMagnitude,
    /// CGGM direction only (no gradient scaling).
    CggmDirection,
    /// Modality random dropout: each modality's input zeroed with probability `mrd_drop_prob`.
    Mrd,
    /// Modality-specific learning rates (`mslr_scales`).
    Mslr,
}

impl Method {
    pub fn modulates_magnitude(self) -> bool {
        matches!(self, Method::Cggm | Method::CggmMagnitude)
    }

    pub fn modulates_direction(self) -> bool {
        matches!(self, Method::Cggm | Method::CggmDirection)
    }

    pub fn is_cggm(self) -> bool {
        self.modulates_magnitude() || self.modulates_direction()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Joint => f.write_str("joint"),
            Method::Unimodal(m) => write!(f, "unimodal:{}", m.name()),
            Method::Cggm => f.write_str("cggm"),
            Method::CggmMagnitude => f.write_str("cggm-magnitude"),
            Method::CggmDirection => f.write_str("cggm-direction"),
            Method::Mrd => f.write_str("mrd"),
            Method::Mslr => f.write_str("mslr"),
        }
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(m) = s.strip_prefix("unimodal:") {
            return Modality::parse(m).map(Method::Unimodal).ok_or_else(|| {
                format!("unknown modality {m:?} in {s:?}: use flair, t1ce, t1 or t2")
            });
        }
        Ok(match s.as_str() {
            "joint" => Method::Joint,
            "cggm" => Method::Cggm,
            "cggm-magnitude" => Method::CggmMagnitude,
            "cggm-direction" => Method::CggmDirection,
            "mrd" => Method::Mrd,
            "mslr" => Method::Mslr,
            _ => {
                return Err(format!(
                    "unknown method {s:?}: use joint, cggm, cggm-magnitude, cggm-direction, mrd, mslr or unimodal:<flair|t1ce|t1|t2>"
                ))
            }
        })
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where the direction term takes its two vectors from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionSource {
    /// The paper: gradients of the last layers (g_F with create_graph), added in the same step.
    #[default]
    Gradient,
    /// The authors' public code: cosine of the last layers' *weights*, with the previous step's
    /// coefficients. For comparison only.
    AuthorsWeightCosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CggmConfig {
    pub rho: f64,
    pub lambda: f64,
    pub balance: BalanceFormula,
    pub direction: DirectionSource,
}

impl Default for CggmConfig {
    fn default() -> Self {
        Self {
            rho: 1.0,
            lambda: 0.1,
            balance: BalanceFormula::Guarded,
            direction: DirectionSource::Gradient,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: usize,
    pub warmup_start_lr: f64,
    /// The classifiers' own learning rate (constant).
    pub classifier_lr: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub val_fraction: f64,
    pub test_fraction: f64,
    /// A JSON file {"train": [ids], "val": [...], "test": [...]} overriding the fractions.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: String,
    pub method: Method,
    pub data: PathBuf,
    pub seed: u64,
    /// auto, cpu or cuda:N
    pub device: String,
    pub epochs: usize,
    /// Optimisation steps per epoch; `None`: `slices_per_case` slices of every training case.
    pub steps_per_epoch: Option<usize>,
    pub slices_per_case: usize,
    pub val_every: usize,
    /// Validate on at most this many cases each epoch (all of them at the end); None = all.
    pub val_cases: Option<usize>,
    pub model: ModelConfig,
    pub sampler: SamplerConfig,
    pub loss: SegmentationLoss,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub grad_clip: Option<f64>,
    pub mixed_precision: bool,
    pub cggm: CggmConfig,
    pub mrd_drop_prob: f64,
    /// Learning-rate multiplier per modality for `mslr`.
    pub mslr_scales: BTreeMap<String, f64>,
    /// Train the per-modality classifiers for methods that do not need them, so every run reports
    /// per-modality Dice. They see detached features and never change the model.
    pub probes: bool,
    pub split: SplitConfig,
    /// Slices per forward pass at evaluation and inference.
    pub eval_batch: usize,
}

impl TrainConfig {
    pub const PRESETS: [&'static str; 3] = ["paper", "cpu-small", "tiny"];

    pub fn preset(name: &str) -> Result<Self, String> {
        let base = Self {
            preset: name.to_string(),
            method: Method::Cggm,
            data: PathBuf::new(),
            seed: 0,
            device: "auto".into(),
            epochs: 75,
            steps_per_epoch: None,
            slices_per_case: 16,
            val_every: 1,
            val_cases: None,
            model: ModelConfig::paper(),
            sampler: SamplerConfig {
                batch_size: 64,
                crop: 160,
                random_crop: false,
                ..SamplerConfig::default()
            },
            loss: SegmentationLoss::default(),
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig {
                lr: 0.01,
                min_lr: 0.001,
                warmup_epochs: 10,
                warmup_start_lr: 4e-4,
                classifier_lr: 6e-3,
            },
            grad_clip: None,
            mixed_precision: false,
            cggm: CggmConfig::default(),
            mrd_drop_prob: 0.25,
            mslr_scales: default_mslr_scales(),
            probes: true,
            split: SplitConfig {
                val_fraction: 0.15,
                test_fraction: 0.15,
                file: None,
            },
            eval_batch: 16,
        };
        match name {
            "paper" => Ok(base),
            "cpu-small" => Ok(Self {
                epochs: 12,
                slices_per_case: 24,
                model: ModelConfig::cpu_small(),
                sampler: SamplerConfig {
                    batch_size: 16,
                    crop: 64,
                    random_crop: true,
                    ..base.sampler.clone()
                },
                optimizer: OptimizerConfig {
                    kind: OptimizerKind::Adamw,
                    weight_decay: 1e-4,
                    ..OptimizerConfig::default()
                },
                schedule: ScheduleConfig {
                    lr: 2e-3,
                    min_lr: 1e-4,
                    warmup_epochs: 1,
                    warmup_start_lr: 2e-4,
                    classifier_lr: 2e-3,
                },
                eval_batch: 32,
                ..base
            }),
            "tiny" => Ok(Self {
                epochs: 1,
                steps_per_epoch: Some(3),
                model: ModelConfig::tiny(),
                sampler: SamplerConfig {
                    batch_size: 4,
                    crop: 32,
                    random_crop: true,
                    workers: 1,
                    prefetch: 2,
                    ..base.sampler.clone()
                },
                optimizer: OptimizerConfig {
                    kind: OptimizerKind::Adam,
                    weight_decay: 0.0,
                    ..OptimizerConfig::default()
                },
                schedule: ScheduleConfig {
                    lr: 1e-3,
                    min_lr: 1e-4,
                    warmup_epochs: 0,
                    warmup_start_lr: 1e-4,
                    classifier_lr: 1e-3,
                },
                eval_batch: 16,
                ..base
            }),
            other => Err(format!(
                "unknown preset {other:?}: use {}",
                Self::PRESETS.join(", ")
            )),
        }
    }

    /// The modalities the model sees, in the fixed project order.
    pub fn modalities(&self) -> Vec<Modality> {
        match self.method {
            Method::Unimodal(m) => vec![m],
            _ => Modality::ALL.to_vec(),
        }
    }

    /// Whether per-modality classifiers are trained in this run.
    pub fn trains_classifiers(&self) -> bool {
        self.method.is_cggm() || self.probes
    }

    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        self.validate_knobs()?;
        let positive = [
            ("epochs", self.epochs),
            ("batch size", self.sampler.batch_size),
            ("val_every", self.val_every),
            ("eval_batch", self.eval_batch),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.sampler.crop < 16 || !self.sampler.crop.is_multiple_of(16) {
            return Err(format!(
                "crop {} must be a multiple of 16 and at least 16",
                self.sampler.crop
            ));
        }
        if !(self.cggm.rho.is_finite() && self.cggm.rho >= 0.0) {
            return Err(format!(
                "rho must be a finite non-negative number, got {}",
                self.cggm.rho
            ));
        }
        if !(self.cggm.lambda.is_finite() && self.cggm.lambda >= 0.0) {
            return Err(format!(
                "lambda must be a finite non-negative number, got {}",
                self.cggm.lambda
            ));
        }
        if !(self.schedule.lr > 0.0 && self.schedule.lr.is_finite()) {
            return Err(format!(
                "learning rate must be positive, got {}",
                self.schedule.lr
            ));
        }
        if !(0.0..1.0).contains(&self.mrd_drop_prob) {
            return Err(format!(
                "mrd_drop_prob must be in [0, 1), got {}",
                self.mrd_drop_prob
            ));
        }
        if self.model.classes != self.loss.class_weights.len() as i64 {
            return Err(format!(
                "loss.class_weights has {} entries but the model predicts {} classes",
                self.loss.class_weights.len(),
                self.model.classes
            ));
        }
        Ok(())
    }
}

/// MSLR's default: the dominant modality (FLAIR, which alone finds the whole tumour) learns at
/// half the rate of the others.
fn default_mslr_scales() -> BTreeMap<String, f64> {
    Modality::ALL
        .iter()
        .map(|m| {
            (
                m.name().to_string(),
                if *m == Modality::Flair { 0.5 } else { 1.0 },
            )
        })
        .collect()
}

impl TrainConfig {
    /// The knobs a run request sets that `validate` above does not cover (part of it): each error
    /// names the value and what to use instead.
    fn validate_knobs(&self) -> Result<(), String> {
        crate::request::check_device_spec(&self.device)?;
        let cls_lr = self.schedule.classifier_lr;
        if !(cls_lr.is_finite() && cls_lr > 0.0) {
            return Err(format!(
                "classifier learning rate (cls_lr) must be a positive number, got {cls_lr}"
            ));
        }
        if !(self.schedule.min_lr.is_finite() && self.schedule.min_lr >= 0.0) {
            return Err(format!(
                "min_lr must be a finite non-negative number, got {}",
                self.schedule.min_lr
            ));
        }
        if let Some(clip) = self.grad_clip.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(format!(
                "grad_clip must be a positive number, got {clip}; leave it out to not clip"
            ));
        }
        for (name, v) in [
            ("steps_per_epoch", self.steps_per_epoch),
            ("val_cases", self.val_cases),
        ] {
            if v == Some(0) {
                return Err(format!(
                    "{name} must be at least 1; leave it out for the preset's rule"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_through_their_names() {
        for s in [
            "joint",
            "cggm",
            "cggm-magnitude",
            "cggm-direction",
            "mrd",
            "mslr",
            "unimodal:t1ce",
        ] {
            assert_eq!(s.parse::<Method>().unwrap().to_string(), s);
        }
        assert!("unimodal:pet"
            .parse::<Method>()
            .unwrap_err()
            .contains("pet"));
    }

    #[test]
    fn presets_are_valid_and_round_trip_through_json() {
        for name in TrainConfig::PRESETS {
            let cfg = TrainConfig::preset(name).unwrap();
            cfg.validate().unwrap();
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), cfg);
        }
        let paper = TrainConfig::preset("paper").unwrap();
        assert_eq!(
            (
                paper.model.backbone.depth,
                paper.sampler.crop,
                paper.sampler.batch_size
            ),
            (101, 160, 64)
        );
    }
}
