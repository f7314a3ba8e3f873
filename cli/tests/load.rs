//! Measurements for the README, not assertions on wall-clock time (ignored by default):
//!
//! ```text
//! cargo build --release -p cggm-server
//! CGGM_BIN=$PWD/target/release/cggm CGGM_LOAD_VIEWERS=500 scripts/with-torch.sh \
//!     cargo test -p cggm-server --test load -- --ignored --nocapture
//! ```
//! Prints the server's start time, the latency of a slice PNG of a 240x240x155 study (median and
//! p99 over 300 requests) and how many concurrent live-event viewers one training job served.

mod common;

use common::live::*;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn measure_start_time_slice_latency_and_live_viewers() {
    // Start time: process spawn until the server prints its address, then until it answers.
    let spawned = Instant::now();
    // The live-viewer measurement opens more streams on one job than the default caps allow.
    let server = LiveServer::start(&[
        "--no-demo",
        "--max-streams",
        "2000",
        "--max-streams-per-job",
        "2000",
        "--max-connections",
        "2048",
    ]);
    let announce = server.started_in;
    server.get_json("/api/health").await;
    println!(
        "server start: {:.0} ms to listen, {:.0} ms to the first answer",
        announce.as_secs_f64() * 1e3,
        spawned.elapsed().as_secs_f64() * 1e3
    );

    // Slice latency on a BraTS-sized study (240x240x155), decoded once then cached.
    let study_dir = server.data_dir.join("tmp/big");
    synth(&study_dir, 1, "240x240x155");
    let case = study_dir.join("BraTS2021_00000");
    let form = case_form(&case, None, &["flair", "t1ce", "t1", "t2"]);
    let response = server.post_multipart("/api/studies", form).await;
    assert_eq!(response.status(), 201);
    let study = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let first = Instant::now();
    let cold = server
        .get_bytes(&format!("/api/studies/{study}/slice?index=77"))
        .await;
    assert!(is_png(&cold));
    let cold = first.elapsed();
    let mut times = Vec::new();
    for i in 0..300usize {
        let (plane, depth) = [("axial", 155), ("coronal", 240), ("sagittal", 240)][i % 3];
        let path = format!(
            "/api/studies/{study}/slice?plane={plane}&index={}&modality=flair",
            (i * 37) % depth
        );
        let started = Instant::now();
        let bytes = server.get_bytes(&path).await;
        times.push(started.elapsed());
        assert!(is_png(&bytes));
    }
    times.sort();
    println!(
        "slice PNG (240x240x155, 300 requests, one client): cold {:.1} ms, median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        cold.as_secs_f64() * 1e3,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );

    // Live viewers: N concurrent SSE connections on one training job, each must see every event
    // and the final state.
    let viewers: usize = std::env::var("CGGM_LOAD_VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let dataset = server.tiny_dataset("tiny").await;
    let job = server
        .post_job(serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny", "epochs": 2,
                                      "steps_per_epoch": 10, "device": "cpu" }))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..viewers {
        let client = reqwest::Client::new();
        let url = server.url(&format!("/api/jobs/{job}/stream"));
        tasks.push(tokio::spawn(async move {
            let messages = read_sse(&client, &url, Duration::from_secs(600), ends_the_stream).await;
            let events = messages.iter().filter(|m| m.id.is_some()).count();
            let succeeded = messages
                .last()
                .is_some_and(|m| m.data.contains("succeeded"));
            (events, succeeded)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await);
    }
    let stored = server
        .get_json(&format!("/api/jobs/{job}/events"))
        .await
        .as_array()
        .unwrap()
        .len();
    let complete = results
        .iter()
        .filter(|r| matches!(r, Ok((n, true)) if *n == stored))
        .count();
    println!("live viewers: {complete} of {viewers} concurrent SSE viewers received all {stored} events and the final state");
    assert_eq!(complete, viewers);
}
