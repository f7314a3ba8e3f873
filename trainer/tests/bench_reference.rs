//! `cggm bench train --against-torch` runs the PyTorch reference (scripts/bench_torch.py, through
//! `$CGGM_PYTHON`) beside our step and fails when the two models' parameter counts differ: one
//! short round per task kind shows the reference still copies the project's feature-task network
//! (classification and regression heads) and segmentation network.

use std::process::Command;

fn one_round(preset: &str) -> Result<(), String> {
    let report = report_of(preset)?;
    // Utilisation (issue 22): FLOPs counted by the reference, a peak with its derivation, and an
    // MFU for each side that is a fraction of that peak.
    let u = &report["utilisation"];
    for method in ["joint", "cggm"] {
        let flops = u["flops_per_step"][method].as_f64().unwrap_or(0.0);
        if flops <= 0.0 {
            return Err(format!("{preset}: no FLOPs per step for {method}: {u}"));
        }
        for side in ["ours", "torch"] {
            let mfu = u["mfu"][side][method].as_f64().unwrap_or(-1.0);
            if !(mfu > 0.0 && mfu < 2.0) {
                return Err(format!("{preset}: MFU {mfu} of {side} {method}: {u}"));
            }
        }
    }
    if !u["peak"]["ours"]["derivation"]
        .as_str()
        .is_some_and(|d| d.contains("GHz") || d.contains("TFLOP/s"))
    {
        return Err(format!("{preset}: the peak does not show its numbers: {u}"));
    }
    Ok(())
}

/// One short `bench train --against-torch` round; its JSON report.
fn report_of(preset: &str) -> Result<serde_json::Value, String> {
    let python = std::env::var_os("CGGM_PYTHON")
        .or(option_env!("CGGM_BUILD_PYTHON").map(Into::into))
        .expect(
            "CGGM_PYTHON is not set: this test runs the PyTorch reference. Run it through \
             `scripts/with-torch.sh cargo test ...`, which sets it to the project venv's python.",
        );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_torch.py");
    let out = Command::new(env!("CARGO_BIN_EXE_cggm-trainer"))
        .args([
            "bench",
            "train",
            "--preset",
            preset,
            "--batch-size",
            "4",
            "--crop",
            "32",
        ])
        .args([
            "--steps",
            "1",
            "--rounds",
            "1",
            "--methods",
            "joint,cggm",
            "--device",
            "cpu",
        ])
        .args([
            "--precision",
            "fp32",
            "--against-torch",
            "--no-memory",
            "--torch-script",
            script,
        ])
        .arg("--python")
        .arg(python)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        serde_json::from_slice(&out.stdout).map_err(|e| format!("report: {e}"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
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

#[test]
fn bench_infer_reports_the_flops_of_a_case_and_its_utilisation() {
    let python = std::env::var_os("CGGM_PYTHON")
        .or(option_env!("CGGM_BUILD_PYTHON").map(Into::into))
        .expect("CGGM_PYTHON is not set: run through `scripts/with-torch.sh cargo test ...`");
    let out = Command::new(env!("CARGO_BIN_EXE_cggm-trainer"))
        .args(["bench", "infer", "--preset", "tiny", "--size", "32x32x8"])
        .args([
            "--repeats",
            "1",
            "--no-reference",
            "--device",
            "cpu",
            "--flops",
        ])
        .arg("--python")
        .arg(python)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = &report["utilisation"];
    let slices = u["brain_slices"].as_u64().unwrap();
    assert!((1..=8).contains(&slices), "{u}");
    let per_slice = u["forward_flops_per_slice"].as_f64().unwrap();
    assert!(per_slice > 1e6, "{u}");
    assert_eq!(
        u["flops_per_case"].as_f64().unwrap(),
        per_slice * slices as f64
    );
    let mfu = u["mfu"].as_f64().unwrap();
    assert!(mfu > 0.0 && mfu < 2.0, "{u}");
    assert!(stderr.contains("MFU"), "{stderr}");
}
