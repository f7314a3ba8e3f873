//! Issue-17 findings 5, 6 and 7 against a real `cggm serve` (the in-process checks are in
//! resource_bounds.rs): run options past their bounds and devices the machine lacks are refused
//! before anything is queued, the queue stops at `--max-queued-jobs`, and a huge multipart text
//! field is refused without the server buffering it.

mod common;

use common::live::*;
use common::procs::memory_mb;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_hold_on_a_real_server_options_queue_and_text_fields() {
    let server = LiveServer::start(&["--no-demo", "--max-queued-jobs", "2"]);
    let dataset = server.tiny_dataset("tiny").await;
    let post = |body: serde_json::Value| {
        let server = &server;
        async move {
            let response = server
                .client
                .post(server.url("/api/jobs"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Finding 7: the requests, each named in its 422; nothing queued.
    for (option, value) in [
        ("workers", serde_json::json!(100000)),
        ("crop", serde_json::json!(65536)),
        ("batch_size", serde_json::json!(1_000_000_000u64)),
        ("epochs", serde_json::json!(1_000_000_000_000u64)),
        ("device", serde_json::json!("cuda:99")),
    ] {
        let mut body =
            serde_json::json!({ "dataset_id": dataset, "method": "joint", "preset": "tiny" });
        body[option] = value;
        let (status, answer) = post(body).await;
        assert_eq!(status, 422, "{option}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(option),
            "{option}: {answer}"
        );
    }
    assert!(server
        .get_json("/api/jobs")
        .await
        .as_array()
        .unwrap()
        .is_empty());

    // Finding 6: one running and two waiting, then 503.
    let long = serde_json::json!({ "dataset_id": dataset, "method": "joint", "preset": "tiny",
                                   "epochs": 1000, "steps_per_epoch": 2, "device": "cpu" });
    let first = server.post_job(long.clone()).await;
    server
        .poll_json(&format!("/api/jobs/{first}"), DEADLINE, |j| {
            j["state"] == "running"
        })
        .await;
    for _ in 0..2 {
        assert_eq!(post(long.clone()).await.0, 201);
    }
    let (status, answer) = post(long.clone()).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("queue"),
        "{answer}"
    );

    // Finding 5: a 64 MiB study name is refused; the server does not grow by it.
    let before = memory_mb(server.child.id(), "VmHWM");
    let form = reqwest::multipart::Form::new().text("name", "x".repeat(64 << 20));
    let response = server
        .client
        .post(server.url("/api/studies"))
        .multipart(form)
        .send()
        .await;
    if let Ok(response) = response {
        // The server may also close the connection once it has refused the field.
        assert!(
            [413, 422].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
    }
    let after = memory_mb(server.child.id(), "VmHWM");
    assert!(
        after < before + 32.0,
        "server peak memory {before:.0} -> {after:.0} MB"
    );
    println!(
        "server peak memory (VmHWM) around the 64 MiB name field: {before:.0} -> {after:.0} MB"
    );
    assert!(server
        .get_json("/api/studies")
        .await
        .as_array()
        .unwrap()
        .is_empty());
}
