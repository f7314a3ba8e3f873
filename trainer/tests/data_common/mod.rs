//! Helpers shared by the data-layer tests: the nibabel oracle and tiny synthetic datasets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cggm_trainer::data::synth::{write_synthetic_dataset, SynthConfig};

/// The Python interpreter that has nibabel (set by `scripts/with-torch.sh`).
pub fn python() -> PathBuf {
    match std::env::var_os("CGGM_PYTHON").or(option_env!("CGGM_BUILD_PYTHON").map(Into::into)) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "CGGM_PYTHON is not set: the NIfTI tests use nibabel as an independent oracle. Run the \
             tests through `scripts/with-torch.sh cargo test ...` (or `make test`), which sets it \
             to the project venv's python."
        ),
    }
}

/// Runs `script` with nibabel/numpy available and `args` as `sys.argv[1:]`; returns stdout.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("the CGGM_PYTHON interpreter starts");
    assert!(
        output.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// A tiny synthetic BraTS dataset (32x32x16) under `dir`.
pub fn tiny_dataset(dir: &Path, cases: usize, seed: u64) -> Vec<PathBuf> {
    write_synthetic_dataset(
        dir,
        &SynthConfig {
            cases,
            seed,
            size: [32, 32, 16],
            imbalance: 1.0,
        },
    )
    .expect("synthetic dataset is written")
}

/// Path of modality/label `suffix` of synthetic case folder `case_dir`.
pub fn case_file(case_dir: &Path, suffix: &str) -> PathBuf {
    let name = case_dir.file_name().unwrap().to_string_lossy().into_owned();
    case_dir.join(format!("{name}_{suffix}.nii.gz"))
}
