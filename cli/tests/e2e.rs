//! End to end: the real `cggm serve` on port 0 with a temporary data directory runs a real tiny
//! training job (a `cggm train` child process), streams its events live, then segments an
//! uploaded study and serves its slices.

mod common;

use common::live::*;
use std::time::Duration;

const TRAIN_DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_follow_live_events_upload_segment_and_view() {
    let server = LiveServer::start(&[]);

    // First start: the demo dataset appears without anyone asking.
    let datasets = server
        .poll_json("/api/datasets", Duration::from_secs(120), |d| {
            d.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(datasets[0]["name"], "demo");
    assert!(
        datasets[0]["report"]["valid_cases"].as_u64().unwrap() >= 4,
        "{datasets}"
    );

    // Training, followed live until the job ends.
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.tiny_training(dataset).await;
    let messages = server.follow_training_to_success(job, TRAIN_DEADLINE).await;
    let step: serde_json::Value =
        serde_json::from_str(&messages.iter().find(|m| m.event == "step").unwrap().data).unwrap();
    assert!(step["loss"].as_f64().unwrap().is_finite());
    assert_eq!(step["balance"].as_object().unwrap().len(), 4);

    // Every point is stored: a viewer arriving later gets the same history.
    let stored = server.get_json(&format!("/api/jobs/{job}/events")).await;
    let live_events = messages.iter().filter(|m| m.id.is_some()).count();
    assert_eq!(stored.as_array().unwrap().len(), live_events);
    let checkpoints = server.get_json("/api/checkpoints").await;
    assert!(
        checkpoints
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["job_id"] == job && c["best_checkpoint"] == true),
        "{checkpoints}"
    );

    // Upload one case's four modalities as a study.
    let case = server.data_dir.join("datasets/tiny/BraTS2021_00000");
    let form = case_form(&case, Some("patient-x"), &["flair", "t1ce", "t1", "t2"]);
    let response = server.post_multipart("/api/studies", form).await;
    assert_eq!(response.status(), 201);
    let study: serde_json::Value = response.json().await.unwrap();
    assert_eq!(study["shape"], serde_json::json!([32, 32, 16]));
    let study = study["id"].as_i64().unwrap();

    // Inference as a job, with progress events.
    let prediction = server.predict(study, job).await;
    let done = server
        .poll_json(
            &format!("/api/predictions/{prediction}"),
            TRAIN_DEADLINE,
            has_ended,
        )
        .await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}; log: {}",
        server.job_log(prediction).await
    );
    assert!(
        done["volumes"]["wt_ml"].as_f64().unwrap() >= done["volumes"]["tc_ml"].as_f64().unwrap()
    );
    let progress = server
        .get_json(&format!("/api/jobs/{prediction}/events?kind=progress"))
        .await;
    assert_eq!(
        progress.as_array().unwrap().last().unwrap()["fraction"],
        1.0
    );

    // Slices: background and overlay, every plane.
    for plane in ["axial", "coronal", "sagittal"] {
        for url in [
            format!("/api/studies/{study}/slice?plane={plane}&index=5&modality=t1ce"),
            format!("/api/predictions/{prediction}/slice?plane={plane}&index=5"),
        ] {
            let response = server.get(&url).await;
            assert_eq!(response.status(), 200, "{url}");
            assert!(is_png(&response.bytes().await.unwrap()), "{url}");
        }
    }
    let seg = server
        .get(&format!("/api/predictions/{prediction}/seg.nii.gz"))
        .await;
    assert_eq!(seg.status(), 200);
    let seg_path = server.data_dir.join("tmp/downloaded_seg.nii.gz");
    std::fs::write(&seg_path, seg.bytes().await.unwrap()).unwrap();
    let header = nifti::NiftiHeader::from_file(&seg_path).unwrap();
    assert_eq!(&header.dim[1..4], &[32, 32, 16]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_marks_the_lost_job_interrupted_and_keeps_finished_runs() {
    let mut server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let finished = server.tiny_training(dataset).await;
    server
        .poll_json(&format!("/api/jobs/{finished}"), TRAIN_DEADLINE, |j| {
            j["state"] == "succeeded"
        })
        .await;
    // A job lost when the server dies (short: its orphaned process finishes on its own soon).
    let lost = server.joint_training(dataset, 3).await;
    server
        .poll_json(&format!("/api/jobs/{lost}"), TRAIN_DEADLINE, |j| {
            j["state"] == "running"
        })
        .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let data_dir = server.data_dir.clone();
    let restarted = LiveServer::start_in(&data_dir, &["--no-demo"]);
    let job = restarted.get_json(&format!("/api/jobs/{lost}")).await;
    assert_eq!(job["state"], "interrupted");
    let kept = restarted.get_json(&format!("/api/jobs/{finished}")).await;
    assert_eq!(kept["state"], "succeeded");
    assert!(data_dir
        .join(format!("runs/job-{finished}/checkpoints/best.safetensors"))
        .is_file());
    let events = restarted
        .get_json(&format!("/api/jobs/{finished}/events?kind=validation"))
        .await;
    assert!(!events.as_array().unwrap().is_empty());
    drop(server);
}
