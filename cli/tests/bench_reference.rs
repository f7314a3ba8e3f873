//! `cggm bench train --against-torch` runs the PyTorch reference (scripts/bench_torch.py, through
//! `$CGGM_PYTHON`) beside our step and fails when the two models' parameter counts differ: one
//! short round per task kind shows the reference still copies the project's feature-task network
//! (classification and regression heads) and segmentation network.

use cggm_cli::bench::{run, BenchCommand, TrainBenchArgs};
use std::path::PathBuf;

fn one_round(preset: &str) -> anyhow::Result<()> {
    let python = std::env::var_os("CGGM_PYTHON").expect(
        "CGGM_PYTHON is not set: this test runs the PyTorch reference. Run it through \
         `scripts/with-torch.sh cargo test ...`, which sets it to the project venv's python.",
    );
    run(BenchCommand::Train(TrainBenchArgs {
        preset: preset.into(),
        batch_size: Some(4),
        crop: Some(32),
        steps: 1,
        rounds: 1,
        methods: "joint,cggm".into(),
        device: "cpu".into(),
        precision: "fp32".into(),
        against_torch: true,
        python: Some(PathBuf::from(python)),
        torch_script: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_torch.py"),
        ),
        // The per-method memory children re-run the current executable, here this test binary.
        no_memory: true,
        memory_of: None,
    }))
}

#[test]
fn the_pytorch_reference_has_our_feature_classification_model() {
    one_round("cpu-features").unwrap();
}

#[test]
fn the_pytorch_reference_has_our_feature_regression_model() {
    // paper-mosi: the MOSI shapes, a regression head (one output, L1 loss, Acc-2 as eps).
    one_round("paper-mosi").unwrap();
}

#[test]
fn the_pytorch_reference_has_our_segmentation_model() {
    one_round("tiny").unwrap();
}
