//! `cggm train`, `cggm eval` and `cggm infer`.

use anyhow::{bail, Context, Result};
use cggm_core::preset::Preset;
use cggm_core::unknown_name::UnknownName;
use cggm_trainer::checkpoint;
use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::features::{is_feature_dataset, DatasetSpec};
use cggm_trainer::data::OutputLabels;
use cggm_trainer::eval::{evaluate_counting, format_table};
use cggm_trainer::eval_features::{evaluate_feature_run, write_feature_predictions};
use cggm_trainer::events::EventSink;
use cggm_trainer::infer::infer;
use cggm_trainer::metrics::Hd95Definition;
use cggm_trainer::model::Model;
use cggm_trainer::progress::{EventProgress, Progress};
use cggm_trainer::request::{RunOptions, DEFAULT_PRESET};
use cggm_trainer::run::{dataset_split, run_split, train, TrainOptions};
use cggm_trainer::run_features::train_features;
use cggm_trainer::rundir::RunDir;
use cggm_trainer::task::TaskKind;
use cggm_trainer::tracking::{end_on_signal, Tracker, TrackingArgs};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset folder (BraTS 2021 or MSD Task01 layout, or a feature dataset with dataset.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The training knobs (the same ones `POST /api/jobs` takes; see request.rs).
    #[command(flatten)]
    pub options: RunOptions,
    /// Run directory (config, checkpoints, metrics).
    #[arg(long)]
    pub out: PathBuf,
    /// JSON file with any part of the run configuration (see config.json of a run), applied over
    /// the preset and under the flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where progress events go as JSON lines: a file, or `-` for stdout.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, with its saved configuration.
    #[arg(long)]
    pub resume: bool,
    /// Stop after N epochs of the schedule (continue later with --resume).
    #[arg(long)]
    pub stop_after_epochs: Option<usize>,
    /// Fine-tune: start from the weights of the run in this directory (its best checkpoint, else
    /// its last) instead of a fresh initialisation. Its network (preset, modalities, task) must
    /// be this run's; the optimiser and schedule start afresh.
    #[arg(long, value_name = "RUN_DIR")]
    pub init_from: Option<PathBuf>,
    /// MLflow and TensorBoard logging (tracking/mod.rs).
    #[command(flatten)]
    pub tracking: TrackingArgs,
}

/// The `cggm train` flags that are not run options: the server sets them itself for every job
/// (`data` from the chosen dataset, `out` and `events` from the job, `config` is how it hands the
/// request over, `resume` is the Resume button), `stop_after_epochs` is a scripting aid whose
/// place in the application Cancel and Resume take, and `init_from` is a path here but a finished
/// run's id in a request (the server resolves it: a request never names a folder). Where a run is
/// logged (`mlflow`, `mlflow_experiment`, `tensorboard`) is the server's own setting, handed to
/// every training it starts through the flags' environment variables, not a request's.
#[cfg(test)]
const FLAGS_THE_SERVER_SETS: [&str; 10] = [
    "data",
    "out",
    "config",
    "events",
    "resume",
    "stop_after_epochs",
    "init_from",
    "mlflow",
    "mlflow_experiment",
    "tensorboard",
];

/// Recursively overlays `patch` onto `base` (objects merge, everything else replaces).
fn merge_json(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge_json(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

impl TrainArgs {
    /// preset < config file < flags; with --resume the saved config.json is the base.
    pub fn to_config(&self) -> Result<TrainConfig> {
        let features = self.data.as_deref().is_some_and(is_feature_dataset);
        let mut cfg = if self.resume {
            checkpoint::read_config(&self.out)?
        } else {
            let default = if features {
                Preset::DEFAULT_FEATURES.name()
            } else {
                DEFAULT_PRESET
            };
            let preset = self.options.preset.as_deref().unwrap_or(default);
            TrainConfig::preset(preset).map_err(anyhow::Error::msg)?
        };
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let patch: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let mut value = serde_json::to_value(&cfg)?;
            merge_json(&mut value, patch);
            cfg = serde_json::from_value(value).with_context(|| {
                format!("{} does not fit the run configuration", path.display())
            })?;
        }
        if let Some(v) = &self.data {
            cfg.data = v.clone();
        }
        self.options.apply(&mut cfg);
        if let Some(source) = &self.init_from {
            if self.resume {
                bail!("--init-from starts a new run and --resume continues one: pass only one");
            }
            // Absolute, so that config.json says which run it came from wherever it is read.
            cfg.init_from = Some(
                std::path::absolute(source)
                    .with_context(|| format!("--init-from {}", source.display()))?,
            );
        }
        if is_feature_dataset(&cfg.data) {
            cfg.task = DatasetSpec::read(&cfg.data)?.task;
        } else if cfg.task != TaskKind::Segmentation && !cfg.data.as_os_str().is_empty() {
            bail!(
                "preset {:?} is for feature datasets but {} holds no dataset.json: pass a feature dataset (`cggm synth --task classification` makes one) or a segmentation preset",
                cfg.preset,
                cfg.data.display()
            );
        }
        if cfg.data.as_os_str().is_empty() {
            bail!("no dataset given: pass --data DIR (a BraTS 2021 or MSD Task01 folder; `cggm synth` makes one)");
        }
        Ok(cfg)
    }
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    let cfg = args.to_config()?;
    let mut events = EventSink::from_arg(args.events.as_deref())
        .context("opening the events file")?
        .with_observer(EventProgress::on_stderr());
    // Ends the tracked run (KILLED) when training returns without finishing or failing.
    let _tracked = match Tracker::start(&args.tracking, &args.out, args.resume)? {
        Some(tracker) => {
            events = events.with_observer(tracker.clone());
            end_on_signal(tracker.clone())?;
            Some(tracker.guard())
        }
        None => None,
    };
    let opts = TrainOptions {
        resume: args.resume,
        stop_after_epochs: args.stop_after_epochs,
    };
    if cfg.task != TaskKind::Segmentation {
        let Some(metrics) = train_features(cfg, &args.out, &events, &opts)? else {
            eprintln!("stopped early as asked");
            return Ok(());
        };
        eprintln!(
            "finished: best validation at epoch {}; test {}; run saved in {}",
            metrics.best_epoch,
            serde_json::to_string(&metrics.test.as_ref().map(|t| &t.metrics))?,
            args.out.display()
        );
        return Ok(());
    }
    let Some(metrics) = train(cfg, &args.out, &events, &opts)? else {
        eprintln!(
            "stopped early; continue with: cggm train --resume --out {}",
            args.out.display()
        );
        return Ok(());
    };
    eprintln!(
        "finished: best validation mean Dice {:.4} at epoch {}; run saved in {}",
        metrics.best_val_dice.as_ref().map_or(f64::NAN, |d| d.mean),
        metrics.best_epoch,
        args.out.display()
    );
    if let Some(test) = &metrics.test {
        eprintln!("test split:\n{}", format_table(test));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalSplit {
    /// The run's test split, as saved in its split.json when the run started.
    Test,
    /// The run's validation split (the cases that chose its best checkpoint).
    Val,
    /// Every case of the dataset.
    All,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A run directory (its best checkpoint is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset folder; default: the run's own dataset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "test")]
    pub split: EvalSplit,
    /// Where to write the JSON report (default RUN_DIR/eval-<split>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto, cpu or cuda:N (default: auto).
    #[arg(long)]
    pub device: Option<String>,
    /// brats-pooled (the official BraTS evaluation: 95th percentile of both directed surface
    /// distance sets pooled) or max-of-directed (the larger directed 95th percentile).
    #[arg(long, value_parser = parse_hd95, default_value = "brats-pooled")]
    pub hd95: Hd95Definition,
}

fn parse_hd95(s: &str) -> Result<Hd95Definition, UnknownName> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| UnknownName::new("HD95 definition", s, "use brats-pooled or max-of-directed"))
}

/// Whether `run_dir` holds a classification or regression run (its config.json says so).
fn is_feature_run(run_dir: &std::path::Path) -> bool {
    checkpoint::read_config(run_dir).is_ok_and(|c| c.task != TaskKind::Segmentation)
}

/// `cggm eval` on a feature run: the report of the run's test or validation split (or of the
/// same split of another feature dataset with the same modalities, `--data`).
fn run_eval_features(args: &EvalArgs) -> Result<()> {
    let split = match args.split {
        EvalSplit::Test => "test",
        EvalSplit::Val => "valid",
        EvalSplit::All => bail!(
            "a feature run is evaluated on one split of its dataset: use --split test or --split val"
        ),
    };
    let report = evaluate_feature_run(
        &args.checkpoint,
        split,
        args.data.as_deref(),
        args.device.as_deref(),
    )?;
    println!("{split} split, {} samples", report.samples);
    for (name, value) in &report.metrics {
        println!("  {name:<14} {value:.4}");
    }
    for (modality, metrics) in &report.modality_metrics {
        let cells: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        println!("  {modality} classifier: {}", cells.join(", "));
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| RunDir::new(&args.checkpoint).eval_report(&format!("{:?}", args.split)));
    checkpoint::write_json_atomic(&out, &report)?;
    eprintln!("report written to {}", out.display());
    Ok(())
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    if is_feature_run(&args.checkpoint) {
        return run_eval_features(&args);
    }
    let model = Model::open_segmentation(&args.checkpoint, args.device.as_deref())?;
    let mut cfg = model.cfg.clone();
    let foreign = args.data.as_ref().is_some_and(|d| d != &cfg.data);
    if let Some(d) = &args.data {
        cfg.data = d.clone();
    }
    // The run's saved split (split.json); a foreign dataset is split afresh (all of it is used).
    let split = if foreign {
        dataset_split(&cfg)?
    } else {
        run_split(&cfg, &args.checkpoint, false)?
    };
    let cases = match (args.split, foreign) {
        // A dataset the run never saw: all of it is test data.
        (_, true) | (EvalSplit::All, _) => [split.train, split.val, split.test].concat(),
        (EvalSplit::Test, false) => split.test,
        (EvalSplit::Val, false) => split.val,
    };
    if cases.is_empty() {
        bail!(
            "the {:?} split of {} is empty: use --split all",
            args.split,
            cfg.data.display()
        );
    }
    let bar = Progress::new("eval", cases.len() as u64, "cases");
    let report = evaluate_counting(
        &model.predictor(),
        &cases,
        model.classifiers.is_some(),
        args.hd95,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish();
    print!("{}", format_table(&report));
    let out = args
        .out
        .unwrap_or_else(|| RunDir::new(&args.checkpoint).eval_report(&format!("{:?}", args.split)));
    checkpoint::write_json_atomic(&out, &report)?;
    eprintln!("report written to {}", out.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// A run directory (its best checkpoint is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A BraTS case folder, the four modality files (repeat --case), or one MSD 4-D file.
    /// Not for a feature run (classification or regression), which predicts a split instead.
    #[arg(long = "case", conflicts_with = "input")]
    pub cases: Vec<PathBuf>,
    /// Segment every case of this dataset folder (any layout `cggm validate` reads) into the
    /// folder --out: `<case>_seg.nii.gz` each and `summary.csv` (volumes per region, Dice where
    /// the case has a label).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output segmentation (.nii.gz or .nii) in the input's geometry, labels as --labels says.
    /// For a feature run: the predictions, `.csv` (one row per sample) or `.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Label numbering of the written segmentation: brats2021 (0/1 NCR/2 ED/4 ET), brats2023
    /// (ET = 3) or msd (1 ED, 2 NET, 3 ET).
    #[arg(long, value_enum, default_value_t = OutputLabels::Brats2021)]
    pub labels: OutputLabels,
    /// Feature runs: the feature dataset to predict (default: the run's own dataset).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Feature runs: the split to predict (test, valid or train).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// JSON summary path (default: next to --out, `<name>.json`).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Where progress events go as JSON lines: a file, or `-` for stdout.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// auto, cpu or cuda:N (default: auto).
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run_infer(args: InferArgs) -> Result<()> {
    if is_feature_run(&args.checkpoint) {
        if !args.cases.is_empty() {
            bail!("{} is a classification/regression run: it predicts a split of a feature dataset (--data, --split), not --case files", args.checkpoint.display());
        }
        let n = write_feature_predictions(
            &args.checkpoint,
            &args.split,
            args.data.as_deref(),
            args.device.as_deref(),
            &args.out,
        )?;
        eprintln!(
            "{n} predictions of the {} split written to {}",
            args.split,
            args.out.display()
        );
        return Ok(());
    }
    if let Some(input) = &args.input {
        return infer_folder(&args, input);
    }
    if args.cases.is_empty() {
        bail!("nothing to segment: give --case (a BraTS case folder, the four modality files, or one MSD 4-D file), or --input DIR for every case of a dataset folder");
    }
    if !names_a_nifti(&args.out) {
        bail!(
            "--out {} must end in .nii.gz or .nii: the segmentation is written as NIfTI",
            args.out.display()
        );
    }
    let events = EventSink::from_arg(args.events.as_deref())
        .context("opening the events file")?
        .with_observer(EventProgress::on_stderr());
    let summary = infer(
        &args.checkpoint,
        &args.cases,
        &args.out,
        args.labels,
        args.device.as_deref(),
        &events,
    )?;
    let summary_path = args.summary.unwrap_or_else(|| {
        let name = args
            .out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("segmentation");
        let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
        args.out.with_file_name(format!("{stem}.json"))
    });
    checkpoint::write_json_atomic(&summary_path, &summary)?;
    eprintln!(
        "segmentation written to {} (WT {:.1} ml, TC {:.1} ml, ET {:.1} ml) in {:.2} s; summary {}",
        args.out.display(),
        summary.volumes_ml.wt,
        summary.volumes_ml.tc,
        summary.volumes_ml.et,
        summary.seconds_total,
        summary_path.display()
    );
    Ok(())
}

/// Whether `path` ends in `.nii` or `.nii.gz` (any case): a file, where --input wants a folder.
fn names_a_nifti(path: &std::path::Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".nii.gz") || name.ends_with(".nii")
}

/// `cggm infer --input DIR --out OUT_DIR`: every case of a dataset folder, with a progress bar.
fn infer_folder(args: &InferArgs, input: &std::path::Path) -> Result<()> {
    if names_a_nifti(&args.out) {
        bail!(
            "with --input, --out is a folder for the segmentations and summary.csv, not the file {}",
            args.out.display()
        );
    }
    let bar: std::cell::OnceCell<Progress> = std::cell::OnceCell::new();
    let rows = cggm_trainer::infer::infer_dataset(
        &args.checkpoint,
        input,
        &args.out,
        args.labels,
        args.device.as_deref(),
        &mut |done, total, case| {
            let bar = bar.get_or_init(|| Progress::new("infer", total as u64, "cases"));
            bar.set_position(done as u64);
            if let Some(error) = &case.error {
                bar.println(format!("{}: not segmented: {error}", case.case));
            }
        },
    )?;
    if let Some(bar) = bar.get() {
        bar.finish();
    }
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    eprintln!(
        "{} of {} cases segmented into {}; table {}",
        rows.len() - failed,
        rows.len(),
        args.out.display(),
        args.out.join(cggm_trainer::infer::BATCH_SUMMARY).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_cggm_train_flag_is_a_run_option_or_one_the_server_sets() {
        use super::{TrainArgs, FLAGS_THE_SERVER_SETS};
        use cggm_core::request::RunOptions;
        use clap::Args;
        let options = RunOptions::names();
        let train = TrainArgs::augment_args(clap::Command::new("train"));
        let mut seen = 0;
        for arg in train.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            seen += 1;
            assert!(
                options.iter().any(|o| o == id) || FLAGS_THE_SERVER_SETS.contains(&id),
                "`cggm train --{}` has no counterpart in the run request: add it to RunOptions \
                 (request.rs) so the API and the form get it, or to FLAGS_THE_SERVER_SETS with a reason",
                arg.get_long().unwrap_or(id)
            );
        }
        assert_eq!(seen, options.len() + FLAGS_THE_SERVER_SETS.len());
    }
}
