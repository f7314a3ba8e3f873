//! The run configuration: one serialisable struct holding everything a run depends on, and the
//! methods a run can use. Saved as `config.json` in the run directory; the named presets that
//! fill it are `crate::preset`'s table.

use crate::balance::BalanceFormula;
use crate::data::{Modality, SamplerConfig};
use crate::device_spec::{DeviceError, DeviceSpec};
use crate::loss::SegmentationLoss;
use crate::model_config::{FeatureModelConfig, ModelConfig, ModelConfigError};
use crate::optim_config::OptimizerConfig;
use crate::task::TaskKind;
use crate::unknown_name::UnknownName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Why a run configuration (or a method or preset name) was refused: each message names the value
/// and what to use instead (the server shows it to the browser, the CLI prints it).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// An unknown method or preset name.
    #[error(transparent)]
    Unknown(#[from] UnknownName),
    #[error("unknown modality {modality:?} in {method:?}: use flair, t1ce, t1 or t2 (segmentation) or a modality of the feature dataset (1-32 characters)")]
    MethodModality { modality: String, method: String },
    #[error("unknown modality {0:?} for segmentation: use unimodal:<flair|t1ce|t1|t2>")]
    SegmentationModality(String),
    #[error("the dataset has no modality {modality:?}: use unimodal:<{}>", .available.join("|"))]
    DatasetModality {
        modality: String,
        available: Vec<String>,
    },
    #[error("preset {preset} trains {}, not {task}: choose {}", names(.trains, " or "), .fitting.join(", "))]
    PresetTask {
        preset: String,
        trains: &'static [TaskKind],
        task: TaskKind,
        fitting: Vec<&'static str>,
    },
    #[error(transparent)]
    Model(#[from] ModelConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("{0} must be at least 1; leave it out for the preset's rule")]
    ZeroCount(&'static str),
    #[error("crop {0} must be a multiple of 16 and at least 16")]
    Crop(usize),
    /// rho, lambda and min_lr.
    #[error("{name} must be a finite non-negative number, got {value}")]
    Negative { name: &'static str, value: f64 },
    #[error("cggm.eps_source \"probe\" is built for segmentation (validation slices); feature runs measure eps on the training batch: remove it")]
    ProbeForFeatures,
    #[error("cggm.probe_size must be 1 to 4096 slices, got {0}")]
    ProbeSize(usize),
    #[error("cggm.eps_ema must be in [0, 1) (0 = no smoothing), got {0}")]
    EpsEma(f64),
    #[error("learning rate must be positive, got {0}")]
    LearningRate(f64),
    #[error("mrd_drop_prob must be in [0, 1), got {0}")]
    DropProb(f64),
    #[error("loss.class_weights has {weights} entries but the model predicts {classes} classes")]
    ClassWeights { weights: usize, classes: i64 },
    #[error("classifier learning rate (cls_lr) must be a positive number, got {0}")]
    ClassifierLr(f64),
    #[error("encoder_lr_scale must be a positive number (1 = the encoders' usual learning rate), got {0}")]
    EncoderLrScale(f64),
    #[error("grad_clip must be a positive number, got {0}; leave it out to not clip")]
    GradClip(f64),
}

fn names(tasks: &[TaskKind], separator: &str) -> String {
    tasks
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(separator)
}

/// How the encoders' gradients are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Plain joint training, no modulation.
    Joint,
    /// One modality alone (its encoder only).
    Unimodal(Modality),
    /// One modality of a feature dataset alone, by name (checked against the dataset at start).
    UnimodalFeature(ModalityName),
    /// CGGM: magnitude (B_i scaling) and direction (L_gm) modulation.
    Cggm,
    /// CGGM magnitude only (lambda = 0).
    CggmMagnitude,
    /// CGGM direction only (no gradient scaling).
    CggmDirection,
    /// numbers (issue 8): the fixed-B control. CGGM with every B_i fixed at the neutral
    /// rho(M-1)/M (encoder gradients scaled by it, L_gm weighted by it): what CGGM does without
    /// balancing. CGGM minus this control is the effect of balancing itself, not of the lower
    /// encoder learning rate (0.75x for four modalities) that magnitude modulation also implies.
    CggmFixed,
    /// The fixed-B magnitude-only control: every encoder's gradient scaled by the neutral
    /// rho(M-1)/M, no L_gm; classifiers trained and B measured as in CGGM (same compute). Under
    /// SGD it is the encoders' learning rate times that constant; under Adam(W) it changes nothing
    /// (Adam's update does not depend on a constant gradient scale) — see
    /// `trainer/tests/controls.rs`.
    CggmMagnitudeFixed,
    /// The authors' public code task by task (zrguo/CGGM `src/segtrain.py`, `src/msatrain.py`):
    /// their eps_i, coefficients `(S + 1e-8 - d_i) / (S + 1e-8)`, and the weight-cosine L_gm
    /// built at step t - 1 from the pre-update weights (no rho, none at step 0); BraTS scales no
    /// gradient (their names match no parameter), feature tasks scale `encoders.<i>` (not the
    /// projection) by rho times the coefficient. `cggm.balance`, `direction` and `eps_ema` are
    /// ignored. See `step.rs` and README "What differs from the paper".
    CggmAuthors,
    /// numbers (issue 8): OGM-GE (Peng et al., CVPR 2022), see `baselines`.
    OgmGe,
    /// numbers (issue 8): AGM (Li et al., ICCV 2023), see `baselines`.
    Agm,
    /// numbers (issue 8): PMR (Fan et al., CVPR 2023), see `baselines`.
    Pmr,
    /// Modality random dropout: each modality's input zeroed with probability `mrd_drop_prob`.
    Mrd,
    /// Modality-specific learning rates (`mslr_scales`).
    Mslr,
}

impl Method {
    pub fn modulates_magnitude(self) -> bool {
        matches!(
            self,
            Method::Cggm | Method::CggmMagnitude | Method::CggmFixed | Method::CggmMagnitudeFixed
        )
    }

    pub fn modulates_direction(self) -> bool {
        matches!(
            self,
            Method::Cggm | Method::CggmDirection | Method::CggmFixed | Method::CggmAuthors
        )
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
            Method::UnimodalFeature(m) => write!(f, "unimodal:{}", m.as_str()),
            Method::Cggm => f.write_str("cggm"),
            Method::CggmMagnitude => f.write_str("cggm-magnitude"),
            Method::CggmDirection => f.write_str("cggm-direction"),
            Method::CggmFixed => f.write_str("cggm-fixed"),
            Method::CggmMagnitudeFixed => f.write_str("cggm-magnitude-fixed"),
            Method::CggmAuthors => f.write_str("cggm-authors"),
            Method::OgmGe => f.write_str("ogm-ge"),
            Method::Agm => f.write_str("agm"),
            Method::Pmr => f.write_str("pmr"),
            Method::Mrd => f.write_str("mrd"),
            Method::Mslr => f.write_str("mslr"),
        }
    }
}

impl FromStr for Method {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(m) = s.strip_prefix("unimodal:") {
            // MRI names are the segmentation modalities; any other name is a feature dataset's
            // modality, checked against the dataset when the run starts.
            return match Modality::parse(m) {
                Some(m) => Ok(Method::Unimodal(m)),
                None => ModalityName::new(m)
                    .map(Method::UnimodalFeature)
                    .ok_or_else(|| ConfigError::MethodModality {
                        modality: m.to_string(),
                        method: s.clone(),
                    }),
            };
        }
        Ok(match s.as_str() {
            "joint" => Method::Joint,
            "cggm" => Method::Cggm,
            "cggm-magnitude" => Method::CggmMagnitude,
            "cggm-direction" => Method::CggmDirection,
            "cggm-fixed" => Method::CggmFixed,
            "cggm-magnitude-fixed" => Method::CggmMagnitudeFixed,
            "cggm-authors" => Method::CggmAuthors,
            "ogm-ge" => Method::OgmGe,
            "agm" => Method::Agm,
            "pmr" => Method::Pmr,
            "mrd" => Method::Mrd,
            "mslr" => Method::Mslr,
            _ => {
                return Err(UnknownName::new(
                    "method",
                    &s,
                    "use joint, cggm, cggm-magnitude, cggm-direction, cggm-fixed, cggm-magnitude-fixed, cggm-authors, ogm-ge, agm, pmr, mrd, mslr or unimodal:<modality>",
                )
                .into())
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

/// A modality name that is `Copy` (so `Method` stays `Copy`): at most 32 bytes, no ':' or '/'.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModalityName {
    len: u8,
    bytes: [u8; 32],
}

impl ModalityName {
    pub fn new(name: &str) -> Option<Self> {
        let ok = !name.is_empty() && name.len() <= 32 && !name.contains([':', '/', '.', ' ']);
        ok.then(|| {
            let mut bytes = [0u8; 32];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Self {
                len: name.len() as u8,
                bytes,
            }
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Debug for ModalityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Where the direction term takes its two vectors from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionSource {
    /// The paper: gradients of the last layers (g_F with create_graph), added in the same step.
    #[default]
    Gradient,
    /// The cosine of the last layers' *weights* (current ones, after this step's classifier
    /// update) with the previous step's B (rho included), from step 0: a variant near the
    /// authors' code, not their loop (that is `--method cggm-authors`). For comparison only.
    AuthorsWeightCosine,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CggmConfig {
    pub rho: f64,
    pub lambda: f64,
    pub balance: BalanceFormula,
    pub direction: DirectionSource,
    /// numbers (issue 8): smoothing of the classifier metrics eps_i before d_i is taken: EMA
    /// factor beta in [0, 1); 0 = off (the paper). See `cggm::BalanceTracker`.
    #[serde(default)]
    pub eps_ema: f64,
    /// Where the classifiers' metrics eps_i are measured: on the training batch (the paper) or
    /// on a fixed probe batch of validation slices (segmentation; a departure from the paper, to
    /// take the batch's sampling noise out of d_i — issue 20).
    #[serde(default)]
    pub eps_source: EpsSource,
    /// Slices in the probe batch (`eps_source = probe`): tumour slices of the validation cases.
    #[serde(default = "default_probe_size")]
    pub probe_size: usize,
}

fn default_probe_size() -> usize {
    32
}

/// Where eps_i comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpsSource {
    /// The current training batch (the paper, the authors' code).
    #[default]
    Batch,
    /// One fixed batch of validation tumour slices, drawn once at the start: every step's eps_i
    /// is measured on the same slices, so d_i follows the classifiers, not the batch. Costs one
    /// forward pass without gradients per step.
    Probe,
}

impl Default for CggmConfig {
    fn default() -> Self {
        Self {
            rho: 1.0,
            lambda: 0.1,
            balance: BalanceFormula::Guarded,
            direction: DirectionSource::Gradient,
            eps_ema: 0.0,
            eps_source: EpsSource::Batch,
            probe_size: default_probe_size(),
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
    /// Multiplier of the encoders' learning rate (the fusion head and classifiers keep theirs):
    /// 1 normally. The learning-rate-matched control of a CGGM run is `joint` with this set to
    /// that run's mean B (issue 20: CGGM's magnitude modulation also lowers the encoders'
    /// effective learning rate by about 26 %).
    #[serde(default = "one")]
    pub encoder_lr_scale: f64,
}

fn one() -> f64 {
    1.0
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
    /// Segmentation (NIfTI data, `model`) or a feature task (feature dataset, `features`).
    #[serde(default)]
    pub task: TaskKind,
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
    /// The feature-task model (classification and regression runs).
    #[serde(default)]
    pub features: FeatureModelConfig,
    /// `batch_size` is every task's batch size; the rest is segmentation's slice sampling.
    pub sampler: SamplerConfig,
    pub loss: SegmentationLoss,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub grad_clip: Option<f64>,
    /// Autocast on CUDA (ignored on the CPU), to `amp_dtype`.
    pub mixed_precision: bool,
    /// bf16 (default, no loss scaling needed) or fp16 (with dynamic loss scaling).
    #[serde(default)]
    pub amp_dtype: crate::precision::AmpDtype,
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
    /// numbers (issue 8): hyper-parameters of the OGM-GE, AGM and PMR baselines.
    #[serde(default)]
    pub baselines: crate::baseline_config::BaselineConfig,
    /// Fine-tuning: the run directory whose weights (best, else last) this run starts from
    /// instead of a fresh initialisation. The network must be the same; the optimiser, the
    /// schedule and the step counter start afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl TrainConfig {
    /// Slices drawn from one training sample per epoch: `slices_per_case` of an MRI case, one
    /// feature sample.
    pub fn slices_per_sample(&self) -> usize {
        if self.task == TaskKind::Segmentation {
            self.slices_per_case.max(1)
        } else {
            1
        }
    }

    /// Steps in one epoch when `steps_per_epoch` is not set: every training sample once per
    /// epoch (segmentation: `slices_per_case` slices of each case), in batches. The trainer's
    /// rule for segmentation and feature runs alike.
    pub fn default_steps_per_epoch(&self, train_samples: usize) -> usize {
        (train_samples * self.slices_per_sample())
            .div_ceil(self.sampler.batch_size.max(1))
            .max(1)
    }

    /// The modalities the model sees, in the fixed project order (segmentation runs).
    pub fn modalities(&self) -> Vec<Modality> {
        match self.method {
            Method::Unimodal(m) => vec![m],
            _ => Modality::ALL.to_vec(),
        }
    }

    /// Indices into `dataset_modalities` that a feature run trains on.
    pub fn feature_modalities(
        &self,
        dataset_modalities: &[String],
    ) -> Result<Vec<usize>, ConfigError> {
        let only = match self.method {
            Method::Unimodal(m) => Some(m.name()),
            Method::UnimodalFeature(ref m) => Some(m.as_str()),
            _ => None,
        };
        match only {
            None => Ok((0..dataset_modalities.len()).collect()),
            Some(name) => dataset_modalities
                .iter()
                .position(|m| m == name)
                .map(|i| vec![i])
                .ok_or_else(|| ConfigError::DatasetModality {
                    modality: name.to_string(),
                    available: dataset_modalities.to_vec(),
                }),
        }
    }

    /// Whether per-modality classifiers are trained in this run.
    pub fn trains_classifiers(&self) -> bool {
        // OGM-GE reads its scores from the classifiers.
        self.method.is_cggm() || self.probes || self.method == Method::OgmGe
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.task == TaskKind::Segmentation {
            self.model.validate()?;
        } else {
            self.features.validate()?;
        }
        if let (TaskKind::Segmentation, Method::UnimodalFeature(m)) = (self.task, self.method) {
            return Err(ConfigError::SegmentationModality(m.as_str().to_string()));
        }
        self.validate_knobs()?;
        let positive = [
            ("epochs", self.epochs),
            ("batch size", self.sampler.batch_size),
            ("val_every", self.val_every),
            ("eval_batch", self.eval_batch),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        let segmentation = self.task == TaskKind::Segmentation;
        if segmentation && (self.sampler.crop < 16 || !self.sampler.crop.is_multiple_of(16)) {
            return Err(ConfigError::Crop(self.sampler.crop));
        }
        for (name, value) in [("rho", self.cggm.rho), ("lambda", self.cggm.lambda)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ConfigError::Negative { name, value });
            }
        }
        if self.cggm.eps_source == EpsSource::Probe {
            if self.task != TaskKind::Segmentation {
                return Err(ConfigError::ProbeForFeatures);
            }
            if !(1..=4096).contains(&self.cggm.probe_size) {
                return Err(ConfigError::ProbeSize(self.cggm.probe_size));
            }
        }
        if !(0.0..1.0).contains(&self.cggm.eps_ema) {
            return Err(ConfigError::EpsEma(self.cggm.eps_ema));
        }
        if !(self.schedule.lr > 0.0 && self.schedule.lr.is_finite()) {
            return Err(ConfigError::LearningRate(self.schedule.lr));
        }
        if !(0.0..1.0).contains(&self.mrd_drop_prob) {
            return Err(ConfigError::DropProb(self.mrd_drop_prob));
        }
        if segmentation && self.model.classes != self.loss.class_weights.len() as i64 {
            return Err(ConfigError::ClassWeights {
                weights: self.loss.class_weights.len(),
                classes: self.model.classes,
            });
        }
        Ok(())
    }
}

/// MSLR's default: the dominant modality (FLAIR, which alone finds the whole tumour) learns at
/// half the rate of the others.
pub(crate) fn default_mslr_scales() -> BTreeMap<String, f64> {
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
    fn validate_knobs(&self) -> Result<(), ConfigError> {
        DeviceSpec::parse(&self.device)?;
        let cls_lr = self.schedule.classifier_lr;
        if !(cls_lr.is_finite() && cls_lr > 0.0) {
            return Err(ConfigError::ClassifierLr(cls_lr));
        }
        let scale = self.schedule.encoder_lr_scale;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(ConfigError::EncoderLrScale(scale));
        }
        if !(self.schedule.min_lr.is_finite() && self.schedule.min_lr >= 0.0) {
            return Err(ConfigError::Negative {
                name: "min_lr",
                value: self.schedule.min_lr,
            });
        }
        if let Some(clip) = self.grad_clip.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(ConfigError::GradClip(clip));
        }
        for (name, v) in [
            ("steps_per_epoch", self.steps_per_epoch),
            ("val_cases", self.val_cases),
        ] {
            if v == Some(0) {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        Ok(())
    }
}

/// Why `source`'s network cannot start `target`'s (fine-tuning, `init_from`), or None when it
/// can. The method, the optimiser, the schedule and the data may differ; the architecture may
/// not. The trainer checks it before loading weights, the server before queueing a job.
pub fn incompatibility(source: &TrainConfig, target: &TrainConfig) -> Option<String> {
    if source.task != target.task {
        return Some(format!(
            "it trained {} and this run trains {}",
            source.task, target.task
        ));
    }
    if source.modalities() != target.modalities() {
        let names = |c: &TrainConfig| {
            c.modalities()
                .iter()
                .map(|m| m.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!(
            "its network reads {} and this run's reads {}",
            names(source),
            names(target)
        ));
    }
    if source.model != target.model || source.features != target.features {
        return Some(format!(
            "its network differs from this run's (preset {:?} against {:?}): choose the source \
             run's preset, or a source trained with this one",
            source.preset, target.preset
        ));
    }
    None
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_epoch_without_steps_per_epoch_draws_every_training_sample_once() {
        let seg = TrainConfig::preset("cpu-small").unwrap();
        // 10 cases x 16 slices in batches of 16.
        assert_eq!(
            seg.default_steps_per_epoch(10),
            (10 * seg.slices_per_case).div_ceil(16)
        );
        assert_eq!(seg.sampler.batch_size, 16);
        let mut features = TrainConfig::preset("cpu-features").unwrap();
        features.slices_per_case = 24; // ignored: a feature sample is drawn once
        let batch = features.sampler.batch_size;
        assert_eq!(features.default_steps_per_epoch(batch * 3 + 1), 4);
        assert_eq!(features.default_steps_per_epoch(0), 1);
    }

    use super::*;

    #[test]
    fn methods_round_trip_through_their_names() {
        for s in [
            "joint",
            "cggm",
            "cggm-magnitude",
            "cggm-direction",
            "cggm-fixed",
            "cggm-magnitude-fixed",
            "cggm-authors",
            "ogm-ge",
            "agm",
            "pmr",
            "mrd",
            "mslr",
            "unimodal:t1ce",
        ] {
            assert_eq!(s.parse::<Method>().unwrap().to_string(), s);
        }
        assert!("unimodal:a/b"
            .parse::<Method>()
            .unwrap_err()
            .to_string()
            .contains("a/b"));
        // Any other name is a feature modality, which a segmentation run refuses.
        let mut cfg = TrainConfig::preset("tiny").unwrap();
        cfg.method = "unimodal:pet".parse().unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("pet"));
        cfg.task = TaskKind::Classification;
        assert_eq!(
            cfg.feature_modalities(&["text".into(), "pet".into()]),
            Ok(vec![1])
        );
    }
}
