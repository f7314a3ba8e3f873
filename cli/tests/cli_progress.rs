//! Progress of long CLI work when stderr is not a terminal (a pipe here, as in a log or the
//! server's job log): plain lines, one per tenth of the work and a summary, never a redrawn bar.

mod common;

use common::live::{cggm, synth};
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `cggm args` with stdout and stderr piped; returns stderr.
fn run(args: &[&str], dir: &Path) -> String {
    let output = Command::new(cggm())
        .args(args)
        .current_dir(dir)
        .env_remove("CGGM_PROGRESS")
        .stdin(Stdio::null())
        .output()
        .expect("cggm starts");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "cggm {args:?} failed: {stderr}");
    stderr
}

/// No carriage return, no escape sequence: each update is a line of its own.
fn assert_line_based(stderr: &str) {
    assert!(!stderr.contains('\r'), "carriage return in {stderr:?}");
    assert!(!stderr.contains('\u{1b}'), "escape sequence in {stderr:?}");
}

fn lines_starting<'a>(stderr: &'a str, prefix: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn piped_progress_of_validate_train_eval_and_infer_is_plain_lines_with_rate_and_eta() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 4, "32x32x16");

    let validate = run(&["validate", data.to_str().unwrap()], dir.path());
    assert_line_based(&validate);
    let summary = lines_starting(&validate, "validate: 4/4 cases in ");
    assert_eq!(summary.len(), 1, "{validate}");

    let train = run(
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            "run",
            "--preset",
            "tiny",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "5",
            "--device",
            "cpu",
        ],
        dir.path(),
    );
    assert_line_based(&train);
    // Ten steps: a line at each tenth but the last, each with rate and ETA, then the summary.
    let updates = lines_starting(&train, "train: ");
    assert_eq!(updates.len(), 10, "{train}");
    assert!(
        updates[0].starts_with("train: 1/10 steps (10%), ") && updates[0].contains(", ETA "),
        "{}",
        updates[0]
    );
    assert!(updates[9].starts_with("train: 10/10 steps in "), "{train}");
    assert!(updates[9].contains("steps/s") || updates[9].contains("s/step"));
    // A line per validation, epochs counted from 1 as the summary counts them.
    let validations = lines_starting(&train, "epoch ");
    assert_eq!(validations.len(), 2, "{train}");
    assert!(
        validations[0].starts_with("epoch 1: validation mean Dice "),
        "{train}"
    );
    assert!(validations[1].starts_with("epoch 2: "), "{train}");

    let eval = run(
        &[
            "eval",
            "--checkpoint",
            "run",
            "--split",
            "all",
            "--device",
            "cpu",
        ],
        dir.path(),
    );
    assert_line_based(&eval);
    assert_eq!(
        lines_starting(&eval, "eval: 4/4 cases in ").len(),
        1,
        "{eval}"
    );

    let case = data.join("BraTS2021_00000");
    let infer = run(
        &[
            "infer",
            "--checkpoint",
            "run",
            "--case",
            case.to_str().unwrap(),
            "--out",
            "seg.nii.gz",
            "--device",
            "cpu",
        ],
        dir.path(),
    );
    assert_line_based(&infer);
    assert!(
        !infer.contains("/100 %"),
        "a share reads as a percentage: {infer}"
    );
    assert_eq!(
        lines_starting(&infer, "infer: done in ").len(),
        1,
        "{infer}"
    );
}
