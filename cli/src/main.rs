//! `cggm`: the one user-facing command. `serve` runs the web application (the server crate),
//! `study` drives one through its API, `synth` and `validate` are the data layer's, `dicom-seg`
//! writes a DICOM SEG; none of them loads libtorch. `train`, `eval`, `infer`, `export` and
//! `bench` are handed, arguments unchanged, to `cggm-trainer` beside this binary, which replaces
//! this process (same pid, so the server's job control and Slurm see one process).

mod api;
mod dicom_seg;
mod pacs;
mod study;

use cggm_core::data_commands;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cggm",
    version,
    about = "CGGM Studio: multimodal brain-tumour MRI segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large server arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the web application (http://127.0.0.1:8080 by default).
    Serve(cggm_server::ServeArgs),
    /// Launch a method comparison (methods x seeds on one dataset) on a running server.
    Study(study::StudyArgs),
    /// Write a synthetic dataset: BraTS-2021-layout NIfTI phantoms, or (--task classification |
    /// regression) an imbalanced feature dataset.
    Synth(data_commands::SynthArgs),
    /// Check a dataset folder (every NIfTI case, or a feature dataset) and print a report.
    Validate(data_commands::ValidateArgs),
    /// Search a PACS, import a study from it, or send a prediction back as a DICOM SEG, through
    /// a running `cggm serve --pacs URL`.
    Pacs(pacs::PacsArgs),
    /// Write a NIfTI prediction as a DICOM SEG referring to the DICOM series it was made on.
    DicomSeg(dicom_seg::DicomSegArgs),
    /// Train a multimodal model (CGGM or a baseline) for segmentation, classification or
    /// regression (`cggm train --help` lists every option, method and preset).
    #[command(disable_help_flag = true)]
    Train(Passed),
    /// Evaluate a run's best checkpoint per case in 3-D (Dice, HD95, per-modality Dice).
    #[command(disable_help_flag = true)]
    Eval(Passed),
    /// Segment one study, or a folder of cases, with a trained run.
    #[command(disable_help_flag = true)]
    Infer(Passed),
    /// Write a run's model as an ONNX file (`cggm export --help`).
    #[command(disable_help_flag = true)]
    Export(Passed),
    /// Benchmarks: data loader, training step (joint vs CGGM), inference.
    #[command(disable_help_flag = true)]
    Bench(Passed),
}

/// The arguments of a subcommand that `cggm-trainer` parses (and documents in its `--help`).
#[derive(Debug, clap::Args)]
struct Passed {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

fn main() {
    cggm_core::process::quiet_error_backtraces();
    cggm_core::process::private_files();
    let result = run(Cli::parse());
    let code = match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("Error: {error:?}");
            1
        }
    };
    std::process::exit(code)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (name, passed) = match cli.command {
        Command::Serve(args) => return serve(args),
        Command::Study(args) => return study::run(args),
        Command::Pacs(args) => return pacs::run(args),
        Command::Synth(args) => return data_commands::synth(args),
        Command::Validate(args) => return data_commands::validate(args),
        Command::DicomSeg(args) => return dicom_seg::run(args),
        Command::Train(p) => ("train", p),
        Command::Eval(p) => ("eval", p),
        Command::Infer(p) => ("infer", p),
        Command::Export(p) => ("export", p),
        Command::Bench(p) => ("bench", p),
    };
    exec_trainer(name, passed.args)
}

fn serve(args: cggm_server::ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cuda_devices = cuda_devices();
    tokio::runtime::Runtime::new()?.block_on(cggm_server::serve(args, cuda_devices))
}

/// `cggm-trainer`: `$CGGM_TRAINER`, else the file beside this binary.
fn trainer_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CGGM_TRAINER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(format!("cggm-trainer{}", std::env::consts::EXE_SUFFIX)))
}

/// The CUDA devices libtorch sees on this machine, asked of `cggm-trainer devices` once: the
/// server links no libtorch. 0 (with a warning) when the trainer cannot answer.
fn cuda_devices() -> usize {
    let answer = trainer_binary().and_then(|bin| {
        let out = std::process::Command::new(&bin)
            .arg("devices")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} devices: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<usize>()?)
    });
    answer.unwrap_or_else(|e| {
        eprintln!("cggm: could not count the CUDA devices ({e:#}); offering the CPU only");
        0
    })
}

/// Replaces this process with `cggm-trainer <name> <args>`.
fn exec_trainer(name: &str, args: Vec<OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = trainer_binary()?;
    let error = std::process::Command::new(&bin).arg(name).args(args).exec();
    anyhow::bail!(
        "could not start {} ({error}): `cggm {name}` needs the cggm-trainer binary beside cggm \
         (`make build`, or `cargo build -p cggm-trainer --bins`), or its path in CGGM_TRAINER",
        bin.display()
    )
}
