//! `cggm bench train` reports each method's peak memory measured alone, in a child process of
//! its own: the timing process holds every method's trainer at once, so its own peak is not any
//! one method's.

mod common;

use common::live::cggm;
use std::process::{Command, Stdio};

#[test]
fn bench_train_measures_each_methods_memory_alone_in_a_child_process() {
    let output = Command::new(cggm())
        .args(["bench", "train", "--preset", "tiny", "--batch-size", "2"])
        .args([
            "--crop", "32", "--steps", "1", "--rounds", "1", "--device", "cpu",
        ])
        .args(["--methods", "joint,cggm"])
        .env("OMP_WAIT_POLICY", "passive")
        .stdin(Stdio::null())
        .output()
        .expect("cggm starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench train failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("bench train prints one JSON report");
    let together = report["peak_rss_bytes"]
        .as_u64()
        .expect("the timing process's peak");
    let alone = report["alone"].as_object().expect("an `alone` entry");
    assert_eq!(
        alone.keys().collect::<Vec<_>>(),
        ["cggm", "joint"],
        "one measurement per method: {report}"
    );
    for (method, m) in alone {
        let peak = m["peak_rss_bytes"].as_u64().expect("a peak per method");
        // A real process that loaded libtorch, and smaller than the one holding both trainers.
        assert!(peak > 50 << 20, "{method}: {peak} bytes");
        assert!(
            peak < together,
            "{method}: {peak} alone vs {together} together"
        );
    }
    assert!(
        stderr.contains("peak RSS alone: cggm"),
        "the summary line names them: {stderr}"
    );
}
