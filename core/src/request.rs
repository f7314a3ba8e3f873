//! The run request: the training knobs a person sets (on the command line, in the new-run form, or
//! in a script through the HTTP API), their one mapping onto the run configuration, and the
//! vocabulary the application offers for them.
//!
//! `cggm train` flattens [`RunOptions`] into its flags and the server deserialises the same type
//! from `POST /api/jobs`, so a knob is added once, here, and reaches the CLI, the API and the form
//! (which is built from [`Vocabulary::options`]). Validation is the run configuration's own
//! ([`TrainConfig::validate`]): the server answers a bad request before anything is queued, with
//! the same message the trainer would print.

use crate::balance::BalanceFormula;
use crate::config::{ConfigError, DirectionSource, Method, TrainConfig};
use crate::data::Modality;
use crate::optim_config::OptimizerKind;
use crate::preset::Preset;
use crate::task::TaskKind;
use crate::unknown_name::UnknownName;
use serde::{Deserialize, Serialize};
use std::any::TypeId;
use std::collections::BTreeMap;
use std::path::Path;

// The device checks live below the configuration (which validates the device too); the server
// takes them from here, with the other checks of a request.
pub use crate::device_spec::{
    check_cuda_index, check_device_present, check_device_spec, DeviceError,
};

/// Why a run request was refused: the option, the value and what to send instead (the server
/// answers 422 with this message).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the run request must be a JSON object")]
    NotAnObject,
    #[error("{key:?} is not a run option: use one of {}", .names.join(", "))]
    NotAnOption { key: String, names: Vec<String> },
    /// serde's message for a value of the wrong type, after the option's name.
    #[error("{key}: {message}")]
    BadValue { key: String, message: String },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{name} {value} is out of range: use {range} ({help})")]
    OutOfRange {
        name: &'static str,
        value: f64,
        range: OptionRange,
        help: String,
    },
    #[error(
        "batch_size {batch_size} x crop {crop}^2 is {pixels} pixels per batch, more than the {MAX_BATCH_PIXELS} \
         a run may ask for: use a smaller batch_size or crop"
    )]
    TooManyPixels {
        batch_size: usize,
        crop: usize,
        pixels: usize,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The preset a request without one starts from.
pub const DEFAULT_PRESET: &str = Preset::DEFAULT.name();

/// The values a run request may give a numeric option: wide enough for any real run (the paper
/// preset uses crop 160, batch 64, 75 epochs), narrow enough that no request makes a child that
/// allocates without end or never finishes (`workers: 100000`, `crop: 65536`, `epochs: 1e12`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OptionRange {
    pub min: f64,
    pub max: f64,
    /// `min` itself is not allowed (learning rates: positive).
    pub min_exclusive: bool,
}

impl OptionRange {
    const fn closed(min: f64, max: f64) -> Self {
        Self {
            min,
            max,
            min_exclusive: false,
        }
    }

    const fn positive(max: f64) -> Self {
        Self {
            min: 0.0,
            max,
            min_exclusive: true,
        }
    }
}

impl std::fmt::Display for OptionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min_exclusive {
            write!(f, "more than {} and at most {}", self.min, self.max)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

/// The largest seed: JavaScript's largest exact integer, so that the pages show and send it back
/// unchanged (and it fits SQLite's signed integers).
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// Pixels of one segmentation batch at most (`batch_size x crop^2`): 256 crops of 512, 4096 of
/// 128. Each bound alone would still allow a batch of tens of gigabytes.
pub const MAX_BATCH_PIXELS: usize = 1 << 26;

/// The allowed range of each numeric run option (named as in JSON); `None` for the others.
pub fn option_range(name: &str) -> Option<OptionRange> {
    Some(match name {
        "epochs" => OptionRange::closed(1.0, 100_000.0),
        "seed" => OptionRange::closed(0.0, MAX_SEED as f64),
        "rho" | "lambda" => OptionRange::closed(0.0, 100.0),
        "lr" | "cls_lr" => OptionRange::positive(10.0),
        "encoder_lr_scale" => OptionRange::positive(100.0),
        "batch_size" => OptionRange::closed(1.0, 4096.0),
        "crop" => OptionRange::closed(16.0, 512.0),
        "steps_per_epoch" | "val_cases" => OptionRange::closed(1.0, 1_000_000.0),
        "grad_clip" => OptionRange::positive(1_000_000.0),
        "workers" => OptionRange::closed(0.0, 64.0),
        _ => return None,
    })
}

/// Every training knob of a run. `None` keeps the preset's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// The training method (the help lists every one, from the vocabulary).
    #[arg(long, help = method_help())]
    pub method: Option<Method>,
    /// A named starting configuration (the help lists every one, from the vocabulary).
    #[arg(long, help = preset_help())]
    pub preset: Option<String>,
    /// Epochs of the schedule.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// auto, cpu or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Seed of the weights, the split and the batches.
    #[arg(long)]
    pub seed: Option<u64>,
    /// CGGM's magnitude scale rho (B_i sums to about rho(M-1)).
    #[arg(long)]
    pub rho: Option<f64>,
    /// Weight lambda of CGGM's direction loss L_gm.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Peak learning rate of the model.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning rate of the per-modality classifiers.
    #[arg(long)]
    pub cls_lr: Option<f64>,
    /// Multiplier of the encoders' learning rate (1 = unchanged): `joint` with a CGGM run's mean
    /// B is the learning-rate-matched control.
    #[arg(long)]
    pub encoder_lr_scale: Option<f64>,
    /// Samples per optimisation step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Side of the square crop of each slice, in pixels (segmentation; a multiple of 16).
    #[arg(long)]
    pub crop: Option<usize>,
    /// Optimisation steps per epoch (default: the preset's rule).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Validate on at most N cases per epoch (all of them at the end).
    #[arg(long)]
    pub val_cases: Option<usize>,
    /// sgd, adam or adamw.
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    /// guarded (default) or raw: the paper's balance formula without the guard.
    #[arg(long, value_parser = parse_balance)]
    pub balance: Option<BalanceFormula>,
    /// gradient (the paper) or authors-weight-cosine (the authors' code).
    #[arg(long, value_parser = parse_direction)]
    pub direction: Option<DirectionSource>,
    /// Clip the model's gradient norm to this value.
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Background threads preparing batches.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Mixed precision (CUDA only; ignored on CPU). `--mixed-precision` alone means true.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub mixed_precision: Option<bool>,
}

fn parse_balance(s: &str) -> Result<BalanceFormula, UnknownName> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| UnknownName::new("balance formula", s, "use guarded or raw"))
}

fn parse_direction(s: &str) -> Result<DirectionSource, UnknownName> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        UnknownName::new(
            "direction source",
            s,
            "use gradient or authors-weight-cosine",
        )
    })
}

impl RunOptions {
    /// Reads a request body's options (a JSON object), naming the field of the first bad value.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, RequestError> {
        let object = value.as_object().ok_or(RequestError::NotAnObject)?;
        // One field at a time first, so the error names the field (serde's own message does not).
        for (key, v) in object {
            let single = serde_json::json!({ key.as_str(): v });
            if let Err(e) = serde_json::from_value::<RunOptions>(single) {
                let message = e.to_string();
                return Err(if message.starts_with("unknown field") {
                    RequestError::NotAnOption {
                        key: key.clone(),
                        names: Self::names(),
                    }
                } else {
                    RequestError::BadValue {
                        key: key.clone(),
                        message,
                    }
                });
            }
        }
        let options: Self = serde_json::from_value(value.clone())?;
        options.check_ranges()?;
        Ok(options)
    }

    /// No numeric option over the top of its [`option_range`] (the bottom is `validate`'s, with
    /// its own messages); the error names the option, the value and the range.
    pub fn check_ranges(&self) -> Result<(), RequestError> {
        let as_f64 = |v: Option<usize>| v.map(|v| v as f64);
        let values = [
            ("epochs", as_f64(self.epochs)),
            ("seed", self.seed.map(|v| v as f64)),
            ("rho", self.rho),
            ("lambda", self.lambda),
            ("lr", self.lr),
            ("cls_lr", self.cls_lr),
            ("encoder_lr_scale", self.encoder_lr_scale),
            ("batch_size", as_f64(self.batch_size)),
            ("crop", as_f64(self.crop)),
            ("steps_per_epoch", as_f64(self.steps_per_epoch)),
            ("val_cases", as_f64(self.val_cases)),
            ("grad_clip", self.grad_clip),
            ("workers", as_f64(self.workers)),
        ];
        for (name, value) in values {
            let (Some(value), Some(range)) = (value, option_range(name)) else {
                continue;
            };
            // Values under the minimum get the configuration's own message (`validate`, which
            // the CLI shares); here the upper bounds. The seed compares exactly (as f64, 2^53
            // would equal its neighbour).
            let seed_over = name == "seed" && self.seed.is_some_and(|s| s > MAX_SEED);
            if seed_over || value > range.max {
                return Err(RequestError::OutOfRange {
                    name,
                    value,
                    range,
                    help: option_help(name),
                });
            }
        }
        Ok(())
    }

    /// The options' names as they appear in JSON (and, with `-` for `_`, as CLI flags).
    pub fn names() -> Vec<String> {
        option_args()
            .iter()
            .map(|a| a.get_id().to_string())
            .collect()
    }

    /// The run configuration this request asks for: its preset (or [`DEFAULT_PRESET`]), these
    /// options over it, `data` as the dataset; validated.
    pub fn to_config(&self, data: &Path) -> Result<TrainConfig, RequestError> {
        self.check_ranges()?;
        let mut cfg = TrainConfig::preset(self.preset.as_deref().unwrap_or(DEFAULT_PRESET))?;
        self.apply(&mut cfg);
        cfg.data = data.to_path_buf();
        cfg.validate()?;
        let pixels = cfg
            .sampler
            .batch_size
            .saturating_mul(cfg.sampler.crop.saturating_mul(cfg.sampler.crop));
        if cfg.task == TaskKind::Segmentation && pixels > MAX_BATCH_PIXELS {
            return Err(RequestError::TooManyPixels {
                batch_size: cfg.sampler.batch_size,
                crop: cfg.sampler.crop,
                pixels,
            });
        }
        Ok(cfg)
    }

    /// Sets every given option in `cfg` (the preset is chosen by the caller, not here).
    pub fn apply(&self, cfg: &mut TrainConfig) {
        // Destructured so that a new option does not compile until it is mapped here.
        let Self {
            method,
            preset: _,
            epochs,
            device,
            seed,
            rho,
            lambda,
            lr,
            cls_lr,
            encoder_lr_scale,
            batch_size,
            crop,
            steps_per_epoch,
            val_cases,
            optimizer,
            balance,
            direction,
            grad_clip,
            workers,
            mixed_precision,
        } = self.clone();
        fn set<T>(field: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *field = v;
            }
        }
        set(&mut cfg.method, method);
        set(&mut cfg.epochs, epochs);
        set(&mut cfg.device, device);
        set(&mut cfg.seed, seed);
        set(&mut cfg.cggm.rho, rho);
        set(&mut cfg.cggm.lambda, lambda);
        set(&mut cfg.schedule.lr, lr);
        set(&mut cfg.schedule.classifier_lr, cls_lr);
        set(&mut cfg.schedule.encoder_lr_scale, encoder_lr_scale);
        set(&mut cfg.sampler.batch_size, batch_size);
        set(&mut cfg.sampler.crop, crop);
        set(&mut cfg.sampler.workers, workers);
        set(&mut cfg.optimizer.kind, optimizer);
        set(&mut cfg.cggm.balance, balance);
        set(&mut cfg.cggm.direction, direction);
        set(&mut cfg.mixed_precision, mixed_precision);
        if steps_per_epoch.is_some() {
            cfg.steps_per_epoch = steps_per_epoch;
        }
        if val_cases.is_some() {
            cfg.val_cases = val_cases;
        }
        if grad_clip.is_some() {
            cfg.grad_clip = grad_clip;
        }
    }

    /// The options as `cfg` has them (what a preset sets; the form shows them as placeholders).
    pub fn of(cfg: &TrainConfig) -> Self {
        Self {
            method: Some(cfg.method),
            preset: Some(cfg.preset.clone()),
            epochs: Some(cfg.epochs),
            device: Some(cfg.device.clone()),
            seed: Some(cfg.seed),
            rho: Some(cfg.cggm.rho),
            lambda: Some(cfg.cggm.lambda),
            lr: Some(cfg.schedule.lr),
            cls_lr: Some(cfg.schedule.classifier_lr),
            encoder_lr_scale: Some(cfg.schedule.encoder_lr_scale),
            batch_size: Some(cfg.sampler.batch_size),
            crop: Some(cfg.sampler.crop),
            steps_per_epoch: cfg.steps_per_epoch,
            val_cases: cfg.val_cases,
            optimizer: Some(cfg.optimizer.kind),
            balance: Some(cfg.cggm.balance),
            direction: Some(cfg.cggm.direction),
            grad_clip: cfg.grad_clip,
            workers: Some(cfg.sampler.workers),
            mixed_precision: Some(cfg.mixed_precision),
        }
    }
}

/// The clap arguments of [`RunOptions`], in declaration order.
fn option_args() -> Vec<clap::Arg> {
    use clap::Args;
    RunOptions::augment_args(clap::Command::new("run-options"))
        .get_arguments()
        .filter(|a| a.get_id() != "help" && a.get_id() != "version")
        .cloned()
        .collect()
}

/// The CLI help of an option (what the option is, for messages).
fn option_help(name: &str) -> String {
    option_args()
        .iter()
        .find(|a| a.get_id() == name)
        .and_then(|a| a.get_help().map(|h| h.to_string()))
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
}

// ------------------------------------------------------------------------------ the vocabulary

/// The optimisers, listed once. `_optimizers_listed` stops compiling when a variant is added and
/// not listed here.
const OPTIMIZERS: [OptimizerKind; 3] = [
    OptimizerKind::Sgd,
    OptimizerKind::Adam,
    OptimizerKind::Adamw,
];
fn _optimizers_listed(k: OptimizerKind) {
    match k {
        OptimizerKind::Sgd | OptimizerKind::Adam | OptimizerKind::Adamw => {}
    }
}

const BALANCE_FORMULAS: [BalanceFormula; 2] = [BalanceFormula::Guarded, BalanceFormula::Raw];
fn _balance_formulas_listed(b: BalanceFormula) {
    match b {
        BalanceFormula::Guarded | BalanceFormula::Raw => {}
    }
}

const DIRECTION_SOURCES: [DirectionSource; 2] = [
    DirectionSource::Gradient,
    DirectionSource::AuthorsWeightCosine,
];
fn _direction_sources_listed(d: DirectionSource) {
    match d {
        DirectionSource::Gradient | DirectionSource::AuthorsWeightCosine => {}
    }
}

/// `--method`'s help: every method of [`METHODS`] and the unimodal form, never retyped.
fn method_help() -> String {
    let names: Vec<String> = METHODS.iter().map(|m| m.to_string()).collect();
    format!(
        "Training method: {}, or unimodal:<modality> (one modality alone)",
        names.join(", ")
    )
}

/// `--preset`'s help: every preset of [`Preset::ALL`] with the tasks it is made for.
fn preset_help() -> String {
    let presets: Vec<String> = Preset::ALL
        .iter()
        .map(|preset| {
            let tasks: Vec<&str> = preset.tasks().iter().map(|t| t.name()).collect();
            format!("{preset} ({})", tasks.join("/"))
        })
        .collect();
    format!(
        "Starting configuration (default {DEFAULT_PRESET}): {}",
        presets.join(", ")
    )
}

/// The methods that take no argument; `unimodal:<modality>` is built per dataset from
/// [`Vocabulary::unimodal_prefix`] and the dataset's modalities.
const METHODS: [Method; 12] = [
    Method::Cggm,
    Method::Joint,
    Method::CggmMagnitude,
    Method::CggmDirection,
    Method::CggmFixed,
    Method::CggmMagnitudeFixed,
    Method::CggmAuthors,
    Method::OgmGe,
    Method::Agm,
    Method::Pmr,
    Method::Mrd,
    Method::Mslr,
];
fn _methods_listed(m: Method) {
    match m {
        Method::Cggm
        | Method::Joint
        | Method::CggmMagnitude
        | Method::CggmDirection
        | Method::CggmFixed
        | Method::CggmMagnitudeFixed
        | Method::CggmAuthors
        | Method::OgmGe
        | Method::Agm
        | Method::Pmr
        | Method::Mrd
        | Method::Mslr
        | Method::Unimodal(_)
        | Method::UnimodalFeature(_) => {}
    }
}

/// One method as the form offers it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodChoice {
    pub name: String,
    /// Scales encoder gradients by B_i.
    pub magnitude: bool,
    /// Adds the direction loss L_gm.
    pub direction: bool,
    /// The tasks it serves (every method serves every task today).
    pub tasks: Vec<TaskKind>,
}

/// One preset: its name, the task it is made for, and the option values it sets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PresetChoice {
    pub name: String,
    /// The preset's first task (kept for clients written before `tasks`).
    pub task: TaskKind,
    /// Every task the preset trains (`cpu-features`: classification and regression).
    pub tasks: Vec<TaskKind>,
    /// `CPU` or `GPU`: what the preset is made for.
    pub hardware: String,
    /// One line on the preset (model, size, measured step time).
    pub description: String,
    pub defaults: RunOptions,
    /// Measured seconds per training step on 2 CPU cores (`None`: not measured), for the form's
    /// duration estimate.
    pub cpu_step_seconds: Option<f64>,
    /// Slices drawn from each training sample per epoch (`TrainConfig::slices_per_sample`: a
    /// segmentation case's `slices_per_case`, 1 for a feature sample) and the share of a dataset
    /// that trains: with the batch size, the steps of an epoch when `steps_per_epoch` is not set
    /// (`TrainConfig::default_steps_per_epoch`).
    pub slices_per_sample: usize,
    pub train_fraction: f64,
}

impl PresetChoice {
    fn of(preset: Preset) -> Self {
        let cfg = preset.config();
        Self {
            name: preset.name().to_string(),
            task: cfg.task,
            tasks: preset.tasks().to_vec(),
            hardware: preset.hardware().name().to_string(),
            description: preset.description(),
            defaults: RunOptions::of(&cfg),
            cpu_step_seconds: preset.cpu_step_seconds(),
            slices_per_sample: cfg.slices_per_sample(),
            train_fraction: (1.0 - cfg.split.val_fraction - cfg.split.test_fraction).max(0.0),
        }
    }
}

/// How an option is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionKind {
    /// A real number.
    Number,
    /// A non-negative whole number.
    Integer,
    /// true or false.
    Flag,
    /// One of the vocabulary's list named `choices`.
    Choice,
}

/// One run option, described from the CLI's own definition (name, flag, help).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OptionSpec {
    /// JSON field of the run request.
    pub name: String,
    /// The `cggm train` flag.
    pub flag: String,
    /// What the form calls the option, in the user's words ("Batch size").
    pub label: String,
    /// One line on what the option does, for the form (not the CLI's wording).
    pub help: String,
    /// The tasks the option applies to (the form hides it for the others).
    pub tasks: Vec<TaskKind>,
    pub kind: OptionKind,
    /// For [`OptionKind::Choice`]: which list of the vocabulary holds the values.
    pub choices: Option<String>,
    /// For numbers: the values a request may give (see [`option_range`]).
    pub range: Option<OptionRange>,
}

/// Everything the application offers for a run, generated from the trainer's own types.
#[derive(Clone, Debug, Serialize)]
pub struct Vocabulary {
    pub tasks: Vec<TaskKind>,
    pub methods: Vec<MethodChoice>,
    /// `unimodal:`: prefix it to a modality name for the unimodal baseline.
    pub unimodal_prefix: String,
    pub presets: Vec<PresetChoice>,
    pub default_preset: String,
    /// Fixed modality names per task (segmentation's MRI contrasts); feature datasets name
    /// their own in `dataset.json`.
    pub modalities: BTreeMap<String, Vec<String>>,
    /// auto, cpu and every CUDA device libtorch sees on this machine.
    pub devices: Vec<String>,
    pub optimizers: Vec<OptimizerKind>,
    pub balance_formulas: Vec<BalanceFormula>,
    pub direction_sources: Vec<DirectionSource>,
    /// Every run option, in the CLI's order.
    pub options: Vec<OptionSpec>,
    /// The score each task's runs are summarised by (see [`headline_metric`]).
    pub headline_metrics: BTreeMap<String, String>,
    /// Every job state, with which are terminal and resumable (the pages follow and offer
    /// Cancel / Resume by these flags).
    pub job_states: Vec<crate::job_state::JobStateChoice>,
}

impl Vocabulary {
    /// The lists for a machine with `cuda_devices` CUDA devices (the trainer counts them).
    pub fn current(cuda_devices: usize) -> Self {
        let unimodal = Method::Unimodal(Modality::Flair).to_string();
        let unimodal_prefix = unimodal
            .strip_suffix(Modality::Flair.name())
            .unwrap_or("unimodal:")
            .to_string();
        let mut devices = vec!["auto".to_string(), "cpu".to_string()];
        devices.extend((0..cuda_devices).map(|n| format!("cuda:{n}")));
        Self {
            tasks: TaskKind::ALL.to_vec(),
            methods: METHODS
                .iter()
                .map(|m| MethodChoice {
                    name: m.to_string(),
                    magnitude: m.modulates_magnitude(),
                    direction: m.modulates_direction(),
                    tasks: TaskKind::ALL.to_vec(),
                })
                .collect(),
            unimodal_prefix,
            presets: Preset::ALL.into_iter().map(PresetChoice::of).collect(),
            default_preset: DEFAULT_PRESET.to_string(),
            modalities: BTreeMap::from([(
                TaskKind::Segmentation.name().to_string(),
                Modality::ALL.iter().map(|m| m.name().to_string()).collect(),
            )]),
            devices,
            optimizers: OPTIMIZERS.to_vec(),
            balance_formulas: BALANCE_FORMULAS.to_vec(),
            direction_sources: DIRECTION_SOURCES.to_vec(),
            options: option_specs(),
            headline_metrics: TaskKind::ALL
                .iter()
                .map(|t| (t.name().to_string(), headline_metric(*t).to_string()))
                .collect(),
            job_states: crate::job_state::JobStateChoice::all(),
        }
    }
}

/// The metric a run of `task` is summarised by on the dashboard, the models page and the
/// per-modality bars: the task's "higher is better" score in the run's `metrics` events, the same
/// kind of score as CGGM's eps_i (mean Dice, accuracy, sign accuracy Acc-2).
pub fn headline_metric(task: TaskKind) -> &'static str {
    match task {
        TaskKind::Segmentation => "dice_mean",
        TaskKind::Classification => "accuracy",
        TaskKind::Regression => "acc2",
    }
}

/// The vocabulary list that holds an option's values, for the options that take one of a list.
fn choice_list(name: &str) -> Option<&'static str> {
    Some(match name {
        "method" => "methods",
        "preset" => "presets",
        "device" => "devices",
        "optimizer" => "optimizers",
        "balance" => "balance_formulas",
        "direction" => "direction_sources",
        _ => return None,
    })
}

/// An option as the new-run form presents it.
struct OptionWords {
    label: &'static str,
    help: &'static str,
    tasks: &'static [TaskKind],
}

const ALL_TASKS: &[TaskKind] = &TaskKind::ALL;
const SEGMENTATION: &[TaskKind] = &[TaskKind::Segmentation];

/// The form's words for each run option; an option missing here fails
/// `every_option_has_a_label_and_help` (add its line).
fn option_words(name: &str) -> OptionWords {
    let (label, help, tasks) = match name {
        "method" => ("Method", "How the modalities' gradients are balanced (joint: not at all).", ALL_TASKS),
        "preset" => ("Preset", "A starting configuration: model, size and schedule.", ALL_TASKS),
        "epochs" => ("Epochs", "Passes of the schedule over the training data.", ALL_TASKS),
        "device" => ("Device", "Where the run trains: auto picks the GPU when there is one.", ALL_TASKS),
        "seed" => ("Seed", "Fixes the initial weights, the split and the batches: same seed, same run.", ALL_TASKS),
        "rho" => ("CGGM magnitude ρ", "How strongly CGGM scales each modality's gradient (CGGM methods only).", ALL_TASKS),
        "lambda" => ("CGGM direction weight λ", "Weight of CGGM's gradient-direction loss (CGGM methods only).", ALL_TASKS),
        "lr" => ("Learning rate", "Peak learning rate of the model.", ALL_TASKS),
        "cls_lr" => ("Classifier learning rate", "Learning rate of the small per-modality classifiers that CGGM and the baselines read.", ALL_TASKS),
        "encoder_lr_scale" => ("Encoder learning-rate factor", "Multiplies the encoders' learning rate; 1 leaves it unchanged.", ALL_TASKS),
        "batch_size" => ("Batch size", "Samples (slices or feature rows) per optimisation step.", ALL_TASKS),
        "crop" => ("Crop size (pixels)", "Side of the square cut from each MRI slice; a multiple of 16.", SEGMENTATION),
        "steps_per_epoch" => ("Steps per epoch", "Optimisation steps in one epoch; empty: the preset's rule.", ALL_TASKS),
        "val_cases" => ("Validation cases per epoch", "Cases scored after each epoch (all of them at the end).", SEGMENTATION),
        "optimizer" => ("Optimiser", "SGD, Adam or AdamW.", ALL_TASKS),
        "balance" => ("Balance formula", "Guarded (the default) or raw: the paper's formula without the guard.", ALL_TASKS),
        "direction" => ("Direction source", "Gradient (the paper) or the authors' weight cosine.", ALL_TASKS),
        "grad_clip" => ("Gradient clipping", "Largest gradient norm a step may take.", ALL_TASKS),
        "workers" => ("Loader threads", "Background threads preparing MRI slices.", SEGMENTATION),
        "mixed_precision" => ("Mixed precision", "Half-precision arithmetic on a GPU: faster, same results within noise; ignored on the CPU.", ALL_TASKS),
        _ => ("", "", ALL_TASKS),
    };
    OptionWords { label, help, tasks }
}

fn option_specs() -> Vec<OptionSpec> {
    option_args()
        .iter()
        .map(|arg| {
            let name = arg.get_id().to_string();
            let ty = arg.get_value_parser().type_id();
            let choices = choice_list(&name).map(str::to_string);
            let kind = if choices.is_some() {
                OptionKind::Choice
            } else if ty == TypeId::of::<f64>() {
                OptionKind::Number
            } else if ty == TypeId::of::<bool>() {
                OptionKind::Flag
            } else {
                OptionKind::Integer
            };
            let words = option_words(&name);
            OptionSpec {
                flag: format!("--{}", arg.get_long().unwrap_or(&name)),
                label: words.label.to_string(),
                help: words.help.to_string(),
                tasks: words.tasks.to_vec(),
                range: option_range(&name),
                name,
                kind,
                choices,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_has_a_label_and_help() {
        for o in super::option_specs() {
            assert!(!o.label.is_empty(), "{}: no label in option_words", o.name);
            assert!(!o.help.is_empty(), "{}: no help in option_words", o.name);
            assert!(
                !o.help.contains("--"),
                "{}: the help speaks CLI: {}",
                o.name,
                o.help
            );
            assert!(!o.tasks.is_empty(), "{}", o.name);
        }
        let crop = super::option_specs()
            .into_iter()
            .find(|o| o.name == "crop")
            .unwrap();
        assert_eq!(crop.tasks, [super::TaskKind::Segmentation]);
    }

    #[test]
    fn train_help_lists_every_method_and_preset() {
        use clap::Args;
        let help = super::RunOptions::augment_args(clap::Command::new("train"))
            .render_long_help()
            .to_string();
        for method in super::METHODS {
            assert!(
                help.contains(&method.to_string()),
                "{method} missing:\n{help}"
            );
        }
        for preset in Preset::ALL {
            assert!(help.contains(preset.name()), "{preset} missing:\n{help}");
        }
        assert!(help.contains("unimodal:<modality>"));
    }

    use super::*;
    use std::path::PathBuf;

    fn request(json: serde_json::Value) -> Result<TrainConfig, RequestError> {
        RunOptions::from_json(&json)?.to_config(Path::new("/data/brats"))
    }

    #[test]
    fn an_empty_request_is_the_default_preset_on_the_given_data() {
        let cfg = request(serde_json::json!({})).unwrap();
        let mut expected = TrainConfig::preset(DEFAULT_PRESET).unwrap();
        expected.data = PathBuf::from("/data/brats");
        assert_eq!(cfg, expected);
    }

    #[test]
    fn every_option_reaches_the_configuration() {
        let cfg = request(serde_json::json!({
            "method": "cggm-direction", "preset": "tiny", "epochs": 3, "device": "cpu", "seed": 7,
            "rho": 1.5, "lambda": 0.2, "lr": 0.005, "cls_lr": 0.004, "batch_size": 8, "crop": 48,
            "steps_per_epoch": 5, "val_cases": 2, "optimizer": "sgd", "balance": "raw",
            "direction": "authors-weight-cosine", "grad_clip": 1.0, "workers": 0,
            "mixed_precision": true
        }))
        .unwrap();
        assert_eq!(cfg.preset, "tiny");
        assert_eq!(cfg.method, Method::CggmDirection);
        assert_eq!((cfg.epochs, cfg.seed, cfg.device.as_str()), (3, 7, "cpu"));
        assert_eq!((cfg.cggm.rho, cfg.cggm.lambda), (1.5, 0.2));
        assert_eq!(
            (cfg.schedule.lr, cfg.schedule.classifier_lr),
            (0.005, 0.004)
        );
        assert_eq!((cfg.sampler.batch_size, cfg.sampler.crop), (8, 48));
        assert_eq!((cfg.steps_per_epoch, cfg.val_cases), (Some(5), Some(2)));
        assert_eq!(cfg.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(cfg.cggm.balance, BalanceFormula::Raw);
        assert_eq!(cfg.cggm.direction, DirectionSource::AuthorsWeightCosine);
        assert_eq!(cfg.grad_clip, Some(1.0));
        assert_eq!(cfg.sampler.workers, 0);
        assert!(cfg.mixed_precision);
        // And back: the options of that configuration are the ones asked for.
        let back = RunOptions::of(&cfg);
        assert_eq!(back.balance, Some(BalanceFormula::Raw));
        assert_eq!(back.crop, Some(48));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason_and_the_fix() {
        let cases = [
            (
                serde_json::json!({ "lr": 0 }),
                "learning rate must be positive",
            ),
            (serde_json::json!({ "crop": 50 }), "multiple of 16"),
            (serde_json::json!({ "method": "magic" }), "unknown method"),
            (serde_json::json!({ "preset": "huge" }), "unknown preset"),
            (
                serde_json::json!({ "device": "tpu" }),
                "use auto, cpu or cuda:N",
            ),
            (serde_json::json!({ "optimizer": "lbfgs" }), "optimizer"),
            (serde_json::json!({ "balance": "magic" }), "balance"),
            (serde_json::json!({ "epochs": -1 }), "epochs"),
            (
                serde_json::json!({ "epochs": 0 }),
                "epochs must be at least 1",
            ),
            (serde_json::json!({ "rho": -1.0 }), "rho"),
            (
                serde_json::json!({ "cls_lr": 0.0 }),
                "classifier learning rate",
            ),
            (serde_json::json!({ "grad_clip": 0.0 }), "grad_clip"),
            (
                serde_json::json!({ "steps_per_epoch": 0 }),
                "steps_per_epoch",
            ),
            (
                serde_json::json!({ "learning_rate": 0.1 }),
                "not a run option",
            ),
            (serde_json::json!([1, 2]), "JSON object"),
        ];
        for (json, expected) in cases {
            let error = request(json.clone()).unwrap_err().to_string();
            assert!(error.contains(expected), "{json} -> {error}");
        }
    }

    #[test]
    fn numeric_options_past_their_bounds_are_refused_naming_the_option_value_and_range() {
        let cases = [
            (
                serde_json::json!({ "workers": 100000 }),
                "workers 100000",
                "0 to 64",
            ),
            (
                serde_json::json!({ "crop": 65536 }),
                "crop 65536",
                "16 to 512",
            ),
            (
                serde_json::json!({ "batch_size": 1000000000u64 }),
                "batch_size 1000000000",
                "1 to 4096",
            ),
            (
                serde_json::json!({ "epochs": 1000000000000u64 }),
                "epochs 1000000000000",
                "1 to 100000",
            ),
            (
                serde_json::json!({ "steps_per_epoch": 10000000 }),
                "steps_per_epoch 10000000",
                "1 to 1000000",
            ),
            (
                serde_json::json!({ "val_cases": 10000000 }),
                "val_cases 10000000",
                "1 to 1000000",
            ),
            (serde_json::json!({ "lr": 1000.0 }), "lr 1000", "at most 10"),
            (
                serde_json::json!({ "cls_lr": 11.0 }),
                "cls_lr 11",
                "at most 10",
            ),
            (
                serde_json::json!({ "rho": 1e9 }),
                "rho 1000000000",
                "0 to 100",
            ),
            (
                serde_json::json!({ "lambda": 101.0 }),
                "lambda 101",
                "0 to 100",
            ),
            (
                serde_json::json!({ "grad_clip": 1e300 }),
                "grad_clip",
                "at most 1000000",
            ),
            (
                serde_json::json!({ "seed": u64::MAX }),
                "seed",
                "0 to 9007199254740991",
            ),
        ];
        for (json, named, range) in cases {
            let error = RunOptions::from_json(&json).unwrap_err().to_string();
            assert!(
                error.contains(named) && error.contains(range) && error.contains("out of range"),
                "{json} -> {error}"
            );
            // The configuration path refuses them too (a caller that built the options itself).
            let options: RunOptions = serde_json::from_value(json.clone()).unwrap();
            assert!(options.to_config(Path::new("/d")).is_err(), "{json}");
        }
        // A batch within both bounds can still be too many pixels together.
        let error = request(serde_json::json!({ "batch_size": 4096, "crop": 512 }))
            .unwrap_err()
            .to_string();
        assert!(error.contains("pixels per batch"), "{error}");
    }

    #[test]
    fn the_largest_allowed_values_pass_and_the_ranges_are_in_the_vocabulary() {
        let cfg = request(serde_json::json!({
            "epochs": 100000, "workers": 64, "crop": 512, "batch_size": 256, "lr": 10.0,
            "cls_lr": 10.0, "rho": 100.0, "lambda": 100.0, "steps_per_epoch": 1000000,
            "val_cases": 1000000, "seed": MAX_SEED, "grad_clip": 1000000.0
        }))
        .unwrap();
        assert_eq!((cfg.sampler.workers, cfg.sampler.crop), (64, 512));
        for preset in Preset::ALL {
            RunOptions::of(&preset.config())
                .check_ranges()
                .unwrap_or_else(|e| panic!("preset {preset}: {e}"));
        }
        let v = Vocabulary::current(0);
        let workers = v.options.iter().find(|o| o.name == "workers").unwrap();
        assert_eq!(workers.range, Some(OptionRange::closed(0.0, 64.0)));
        for option in &v.options {
            let numeric = matches!(option.kind, OptionKind::Number | OptionKind::Integer);
            assert_eq!(option.range.is_some(), numeric, "{}", option.name);
        }
    }

    #[test]
    fn the_vocabulary_comes_from_the_trainers_types() {
        let v = Vocabulary::current(0);
        assert_eq!(v.tasks, TaskKind::ALL.to_vec());
        for name in Preset::ALL.map(Preset::name) {
            let preset = v.presets.iter().find(|p| p.name == name).unwrap();
            assert_eq!(preset.defaults.preset.as_deref(), Some(name));
        }
        for m in &v.methods {
            assert_eq!(m.name.parse::<Method>().unwrap().to_string(), m.name);
        }
        let unimodal = format!("{}t1ce", v.unimodal_prefix);
        assert_eq!(
            unimodal.parse::<Method>().unwrap(),
            Method::Unimodal(Modality::T1ce)
        );
        assert!(v
            .devices
            .starts_with(&["auto".to_string(), "cpu".to_string()]));
        // Every option is described, under its JSON name, with the CLI's flag and help.
        let names: Vec<&str> = v.options.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, RunOptions::names());
        let lr = v.options.iter().find(|o| o.name == "cls_lr").unwrap();
        assert_eq!(
            (lr.flag.as_str(), lr.kind),
            ("--cls-lr", OptionKind::Number)
        );
        assert!(lr.help.contains("classifiers"));
        let epochs = v.options.iter().find(|o| o.name == "epochs").unwrap();
        assert_eq!(epochs.kind, OptionKind::Integer);
        let mp = v
            .options
            .iter()
            .find(|o| o.name == "mixed_precision")
            .unwrap();
        assert_eq!(mp.kind, OptionKind::Flag);
        let balance = v.options.iter().find(|o| o.name == "balance").unwrap();
        assert_eq!(balance.choices.as_deref(), Some("balance_formulas"));
        // The lists serialise as the names the options accept.
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(
            json["optimizers"],
            serde_json::json!(["sgd", "adam", "adamw"])
        );
        assert_eq!(
            json["balance_formulas"],
            serde_json::json!(["guarded", "raw"])
        );
        for option in &v.options {
            if let Some(list) = &option.choices {
                assert!(json[list].is_array(), "{} -> {list}", option.name);
            }
        }
    }

    #[test]
    fn a_presets_slices_per_sample_is_its_configurations() {
        let json = serde_json::to_value(Vocabulary::current(0)).unwrap();
        for preset in json["presets"].as_array().unwrap() {
            let cfg = TrainConfig::preset(preset["name"].as_str().unwrap()).unwrap();
            assert_eq!(
                preset["slices_per_sample"],
                cfg.slices_per_sample(),
                "{preset}"
            );
            assert!(preset.get("slices_per_case").is_none(), "{preset}");
        }
        let small = &json["presets"][1];
        assert_eq!(
            (&small["name"], &small["slices_per_sample"]),
            (&"cpu-small".into(), &24.into())
        );
    }

    #[test]
    fn every_option_is_accepted_under_its_own_name_in_json() {
        for name in RunOptions::names() {
            let single = serde_json::json!({ name.as_str(): null });
            RunOptions::from_json(&single).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
