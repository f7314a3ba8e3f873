//! The shapes the benchmark reports share, and how a report is printed.
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// One value per timed method of the ratios (`joint`, the baseline, and `cggm`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PerMethod<T = f64> {
    pub joint: T,
    pub cggm: T,
}

/// One value per implementation: ours and the PyTorch reference's.
#[derive(Clone, Debug, Serialize)]
pub struct Sides<T> {
    pub ours: T,
    pub torch: T,
}

/// Trainable parameter counts: the model's and the per-modality classifiers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Params {
    pub model: i64,
    pub classifiers: i64,
}

/// Peak memory of a process: resident (VmHWM) and, on CUDA, what nvidia-smi shows it holding.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Memory {
    pub peak_rss_bytes: Option<u64>,
    pub gpu_memory_bytes: Option<u64>,
}

/// Prints a report as pretty JSON on stdout. Through a `serde_json::Value`, whose maps sort their
/// keys: the key order is the one the reports had when they were built with `json!`.
pub fn print(report: &impl Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(report)?)?
    );
    Ok(())
}
