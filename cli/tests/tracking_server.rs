//! `cggm serve --tensorboard DIR`: the server's tracking setting reaches every training job it
//! starts (the trainer reads it from the environment the server gives the job), and the run page
//! says where the run was logged. The MLflow side of the same setting is the same variable
//! mechanism; MLflow itself is tested against a real server in trainer/tests/tracking.rs.

mod common;

use common::live::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wide_tensorboard_folder_gets_every_training_and_the_run_page_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let tb = dir.path().join("tb");
    let server = LiveServer::start_in(
        &dir.path().join("data"),
        &["--no-demo", "--tensorboard", tb.to_str().unwrap()],
    );
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.tiny_training(dataset).await;
    server
        .follow_training_to_success(job, Duration::from_secs(120))
        .await;
    let run_tb = tb.join(format!("job-{job}"));
    let log = server.job_log(job).await;
    let files: Vec<_> = std::fs::read_dir(&run_tb)
        .unwrap_or_else(|e| panic!("{}: {e}; log: {log}", run_tb.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    // The file_version record, then the steps, the validation and the end.
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 200);
    let page = server.get_text(&format!("/jobs/{job}")).await;
    assert!(
        page.contains(&format!("TensorBoard events in {}", run_tb.display())),
        "{page}"
    );
}
