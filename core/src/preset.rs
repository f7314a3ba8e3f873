//! The named presets, as one table: each row carries the preset's name, the tasks it trains, the
//! hardware it is made for, its measured CPU step time, its words for the new-run form and how it
//! changes the base configuration. The name list, `--preset`'s help, the vocabulary's presets,
//! the form's descriptions and every preset's [`TrainConfig`] come from here.

use crate::config::{default_mslr_scales, CggmConfig, ConfigError, ScheduleConfig, SplitConfig};
use crate::config::{Method, TrainConfig};
use crate::data::{Augmentation, Modality, SamplerConfig};
use crate::loss::{SegmentationLoss, SoftDice};
use crate::model_config::{FeatureModelConfig, ModelConfig};
use crate::optim_config::{OptimizerConfig, OptimizerKind};
use crate::task::TaskKind;
use crate::unknown_name::UnknownName;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A named starting configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    Paper,
    CpuSmall,
    Tiny,
    CpuFeatures,
    PaperMosi,
    PaperIemocap,
    PaperFood101,
}

/// What a preset is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hardware {
    Cpu,
    Gpu,
}

impl Hardware {
    pub fn name(self) -> &'static str {
        match self {
            Hardware::Cpu => "CPU",
            Hardware::Gpu => "GPU",
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy)]
struct Row {
    name: &'static str,
    /// The tasks it trains; the first is the configuration's own until a dataset picks another.
    tasks: &'static [TaskKind],
    hardware: Hardware,
    /// The words before the model's numbers in the form's description.
    model_words: &'static str,
    /// What a run costs in words, after them ("trains in minutes"); "" for none.
    cost_words: &'static str,
    /// Seconds one training step at the preset's own settings took on the development machine's
    /// 2 CPU cores (README "Performance": the FLOPs per step over the achieved rate), for the
    /// form's duration estimate; `None` where no such measurement exists (the GPU preset at
    /// batch 64, crop 160; `tiny`, whose runs last seconds).
    cpu_step_seconds: Option<f64>,
    /// The preset's changes to [`base`].
    build: fn(TrainConfig) -> TrainConfig,
}

const SEGMENTATION: &[TaskKind] = &[TaskKind::Segmentation];
const CLASSIFICATION: &[TaskKind] = &[TaskKind::Classification];

impl Preset {
    /// Every preset, in the order the form and `--help` list them.
    pub const ALL: [Preset; 7] = [
        Preset::Paper,
        Preset::CpuSmall,
        Preset::Tiny,
        Preset::CpuFeatures,
        Preset::PaperMosi,
        Preset::PaperIemocap,
        Preset::PaperFood101,
    ];

    /// The preset a segmentation request without one starts from.
    pub const DEFAULT: Preset = Preset::CpuSmall;

    /// The preset `cggm train` starts a feature dataset from when none is given.
    pub const DEFAULT_FEATURES: Preset = Preset::CpuFeatures;

    /// The table.
    const fn row(self) -> Row {
        match self {
            // numbers (issue 8): the authors' protocol, see `paper`.
            Preset::Paper => Row {
                name: "paper",
                tasks: SEGMENTATION,
                hardware: Hardware::Gpu,
                model_words: "the paper's BraTS model, ",
                cost_words: "meant for a GPU (on 2 CPU cores one step at batch 2, crop 64 takes \
                             0.9-1.5 s in fp32)",
                cpu_step_seconds: None,
                build: paper,
            },
            Preset::CpuSmall => Row {
                name: "cpu-small",
                tasks: SEGMENTATION,
                hardware: Hardware::Cpu,
                model_words: "",
                cost_words: "trains in minutes",
                cpu_step_seconds: Some(0.15),
                build: cpu_small,
            },
            Preset::Tiny => Row {
                name: "tiny",
                tasks: SEGMENTATION,
                hardware: Hardware::Cpu,
                model_words: "a toy model for tests and demos, ",
                cost_words: "runs in seconds",
                cpu_step_seconds: None,
                build: tiny,
            },
            // Either feature task: the dataset decides.
            Preset::CpuFeatures => Row {
                name: "cpu-features",
                tasks: &[TaskKind::Classification, TaskKind::Regression],
                hardware: Hardware::Cpu,
                model_words: "small Transformers for feature datasets",
                cost_words: "trains in minutes",
                cpu_step_seconds: Some(0.07),
                build: cpu_features,
            },
            // The paper's feature presets are those of their benchmark: CMU-MOSI sentiment is a
            // regression, IEMOCAP and Food-101 classifications.
            Preset::PaperMosi => Row {
                name: "paper-mosi",
                tasks: &[TaskKind::Regression],
                hardware: Hardware::Cpu,
                model_words: "MulT at CMU-MOSI's shapes (the paper's setting)",
                cost_words: "",
                cpu_step_seconds: Some(1.0),
                build: paper_mosi,
            },
            Preset::PaperIemocap => Row {
                name: "paper-iemocap",
                tasks: CLASSIFICATION,
                hardware: Hardware::Cpu,
                model_words: "MulT at IEMOCAP's shapes (the paper's setting)",
                cost_words: "",
                cpu_step_seconds: Some(0.35),
                build: paper_iemocap,
            },
            Preset::PaperFood101 => Row {
                name: "paper-food101",
                tasks: CLASSIFICATION,
                hardware: Hardware::Cpu,
                model_words: "Food-101's text and image features (the paper's setting)",
                cost_words: "",
                cpu_step_seconds: Some(0.05),
                build: paper_food101,
            },
        }
    }

    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// The tasks the preset trains; the first is its configuration's.
    pub fn tasks(self) -> &'static [TaskKind] {
        self.row().tasks
    }

    pub fn hardware(self) -> Hardware {
        self.row().hardware
    }

    /// Measured seconds per training step on 2 CPU cores, `None` where not measured.
    pub fn cpu_step_seconds(self) -> Option<f64> {
        self.row().cpu_step_seconds
    }

    /// The preset's run configuration.
    pub fn config(self) -> TrainConfig {
        let row = self.row();
        TrainConfig {
            task: row.tasks[0],
            ..(row.build)(base(row.name))
        }
    }

    /// One line on the preset for the new-run form: the model and its size from the
    /// configuration, then the cost, with the measured step time.
    pub fn description(self) -> String {
        let row = self.row();
        let cfg = self.config();
        let shape = if cfg.task == TaskKind::Segmentation {
            let backbone = &cfg.model.backbone;
            let width = if backbone.width == 1.0 {
                String::new()
            } else {
                format!(" at 1/{} width", (1.0 / backbone.width).round())
            };
            format!(
                "{} x ResNet-{}{width}, crop {}, batch {}",
                Modality::ALL.len(),
                backbone.depth,
                cfg.sampler.crop,
                cfg.sampler.batch_size
            )
        } else {
            format!(", batch {}", cfg.sampler.batch_size)
        };
        let mut cost: Vec<String> = Vec::new();
        if !row.cost_words.is_empty() {
            cost.push(row.cost_words.to_string());
        }
        if let Some(seconds) = row.cpu_step_seconds {
            cost.push(format!("~{seconds} s per step on 2 CPU cores"));
        }
        format!("{}{shape}: {}", row.model_words, cost.join(", "))
    }

    /// The presets that train `task`, by name.
    pub fn fitting(task: TaskKind) -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|p| p.tasks().contains(&task))
            .map(Preset::name)
            .collect()
    }

    fn names() -> String {
        Self::ALL.map(Preset::name).join(", ")
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownName::new("preset", s, format!("use {}", Self::names())))
    }
}

impl TrainConfig {
    /// The configuration of the preset named `name`.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        Ok(name.parse::<Preset>()?.config())
    }

    /// The tasks this configuration's preset trains (a name that is no preset: segmentation).
    pub fn preset_tasks(&self) -> &'static [TaskKind] {
        self.preset
            .parse::<Preset>()
            .map_or(SEGMENTATION, Preset::tasks)
    }

    /// This configuration trains `task` (a feature dataset's own), when its preset can; else the
    /// reason, naming the presets that can.
    pub fn train_task(&mut self, task: TaskKind) -> Result<(), ConfigError> {
        if self.preset_tasks().contains(&task) {
            self.task = task;
            return Ok(());
        }
        Err(ConfigError::PresetTask {
            preset: self.preset.clone(),
            trains: self.preset_tasks(),
            task,
            fitting: Preset::fitting(task),
        })
    }
}

/// What every preset starts from: the paper's BraTS settings.
fn base(name: &str) -> TrainConfig {
    TrainConfig {
        preset: name.to_string(),
        task: TaskKind::Segmentation,
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
        features: FeatureModelConfig::cpu(),
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
            encoder_lr_scale: 1.0,
        },
        grad_clip: None,
        mixed_precision: true,
        amp_dtype: crate::precision::AmpDtype::Bf16,
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
        baselines: Default::default(),
        init_from: None,
    }
}

/// numbers (issue 8): the authors' protocol (zrguo/CGGM datasets/BratsDataset.py and
/// src/eval_metrics.py): an epoch is one random tumour slice of every training case, their
/// augmentation, their pooled soft Dice. README "The paper preset" lists what still differs.
fn paper(base: TrainConfig) -> TrainConfig {
    TrainConfig {
        slices_per_case: 1,
        sampler: SamplerConfig {
            tumour_fraction: 1.0,
            case_sweep: true,
            augmentation: Augmentation::Authors,
            ..base.sampler.clone()
        },
        loss: SegmentationLoss {
            dice: SoftDice::AuthorsPooled,
            ..SegmentationLoss::default()
        },
        ..base
    }
}

fn cpu_small(base: TrainConfig) -> TrainConfig {
    TrainConfig {
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
            encoder_lr_scale: 1.0,
        },
        eval_batch: 32,
        ..base
    }
}

fn tiny(base: TrainConfig) -> TrainConfig {
    TrainConfig {
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
            encoder_lr_scale: 1.0,
        },
        eval_batch: 16,
        ..base
    }
}

/// The CPU preset for the synthetic feature set (`cggm synth --task ...`).
fn cpu_features(base: TrainConfig) -> TrainConfig {
    features(
        base,
        FeatureModelConfig::cpu(),
        12,
        32,
        OptimizerKind::Adam,
        0.2,
    )
}

fn paper_mosi(base: TrainConfig) -> TrainConfig {
    features(
        base,
        FeatureModelConfig::mosi(),
        30,
        64,
        OptimizerKind::Adam,
        0.2,
    )
}

fn paper_iemocap(base: TrainConfig) -> TrainConfig {
    let model = FeatureModelConfig::iemocap();
    features(base, model, 30, 64, OptimizerKind::Adam, 0.2)
}

fn paper_food101(base: TrainConfig) -> TrainConfig {
    let model = FeatureModelConfig::food101();
    features(base, model, 60, 128, OptimizerKind::Adamw, 0.05)
}

/// Feature-task settings: the paper's from Appendix B and the authors' run scripts
/// (run/mosi_run.py, run/iemo_run.py, run/food_run.py): Adam(W) at 1e-3, classifiers at 5e-4,
/// gradient clipping 0.8, rho 1.3, lambda 0.2 (Food-101: 0.05), batch 64 (Food-101: 128), 30
/// epochs (Food-101: 60). They decay the learning rate on a validation plateau (x0.1 after 10
/// epochs); here the rate stays constant (min_lr = lr), and the task kind comes from the dataset.
fn features(
    base: TrainConfig,
    features: FeatureModelConfig,
    epochs: usize,
    batch: usize,
    kind: OptimizerKind,
    lambda: f64,
) -> TrainConfig {
    TrainConfig {
        epochs,
        steps_per_epoch: None,
        features,
        sampler: SamplerConfig {
            batch_size: batch,
            ..base.sampler.clone()
        },
        optimizer: OptimizerConfig {
            kind,
            weight_decay: if kind == OptimizerKind::Adamw {
                1e-2
            } else {
                0.0
            },
            ..OptimizerConfig::default()
        },
        schedule: ScheduleConfig {
            lr: 1e-3,
            min_lr: 1e-3,
            warmup_epochs: 0,
            warmup_start_lr: 1e-3,
            classifier_lr: 5e-4,
            encoder_lr_scale: 1.0,
        },
        grad_clip: Some(0.8),
        cggm: CggmConfig {
            rho: 1.3,
            lambda,
            ..CggmConfig::default()
        },
        // The strong modality of the synthetic set and of MOSI/IEMOCAP (the paper: text).
        mslr_scales: BTreeMap::from([("text".to_string(), 0.5)]),
        eval_batch: 256,
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant is in [`Preset::ALL`] (a new one fails to compile here until it is listed).
    fn _listed(p: Preset) {
        match p {
            Preset::Paper
            | Preset::CpuSmall
            | Preset::Tiny
            | Preset::CpuFeatures
            | Preset::PaperMosi
            | Preset::PaperIemocap
            | Preset::PaperFood101 => {}
        }
    }

    #[test]
    fn presets_round_trip_through_their_names_and_unknown_names_list_them_all() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>(), Ok(p));
            assert_eq!(TrainConfig::preset(p.name()).unwrap().preset, p.name());
        }
        assert_eq!(
            TrainConfig::preset("huge").unwrap_err().to_string(),
            "unknown preset \"huge\": use paper, cpu-small, tiny, cpu-features, paper-mosi, \
             paper-iemocap, paper-food101"
        );
    }

    #[test]
    fn every_cpu_preset_but_the_toy_has_a_step_time_for_the_duration_estimate() {
        for p in Preset::ALL {
            assert_eq!(
                p.cpu_step_seconds().is_some(),
                p.hardware() == Hardware::Cpu && p != Preset::Tiny,
                "{p}"
            );
        }
    }

    #[test]
    fn a_description_states_the_measured_step_time_and_the_configurations_sizes() {
        for p in Preset::ALL {
            let description = p.description();
            if let Some(seconds) = p.cpu_step_seconds() {
                assert!(
                    description.contains(&format!("~{seconds} s per step on 2 CPU cores")),
                    "{p}: {description}"
                );
            }
            let batch = format!("batch {}", p.config().sampler.batch_size);
            assert!(description.contains(&batch), "{p}: {description}");
        }
        assert_eq!(
            Preset::CpuSmall.description(),
            "4 x ResNet-18 at 1/4 width, crop 64, batch 16: trains in minutes, ~0.15 s per step \
             on 2 CPU cores"
        );
        assert_eq!(
            Preset::PaperMosi.description(),
            "MulT at CMU-MOSI's shapes (the paper's setting), batch 64: ~1 s per step on 2 CPU \
             cores"
        );
        assert!(Preset::Paper
            .description()
            .contains("4 x ResNet-101, crop 160, batch 64"));
    }

    #[test]
    fn each_preset_trains_its_tasks_and_names_the_fitting_ones_otherwise() {
        assert_eq!(Preset::CpuFeatures.config().task, TaskKind::Classification);
        assert_eq!(Preset::PaperMosi.config().task, TaskKind::Regression);
        assert_eq!(Preset::Tiny.config().task, TaskKind::Segmentation);
        let mut cfg = Preset::CpuFeatures.config();
        cfg.train_task(TaskKind::Regression).unwrap();
        assert_eq!(cfg.task, TaskKind::Regression);
        let mut mosi = Preset::PaperMosi.config();
        assert_eq!(
            mosi.train_task(TaskKind::Classification)
                .unwrap_err()
                .to_string(),
            "preset paper-mosi trains regression, not classification: choose cpu-features, \
             paper-iemocap, paper-food101"
        );
        assert_eq!(
            Preset::fitting(TaskKind::Segmentation),
            ["paper", "cpu-small", "tiny"]
        );
    }

    #[test]
    fn presets_are_valid_and_round_trip_through_json() {
        for preset in Preset::ALL {
            let cfg = preset.config();
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
