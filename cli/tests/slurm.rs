//! The Slurm executor against a real one-node Slurm cluster on this machine (Debian's slurmctld,
//! slurmd and munge, started by scripts/setup-slurm.sh, which installs them when missing — as root
//! or with sudo). A tiny training is submitted with sbatch through the API and followed to its end
//! through its events file; a second job is cancelled (scancel); the server is killed mid-run and
//! a new one re-attaches to the Slurm job without storing an event twice; sbatch refusing a job,
//! a stalled job and the start-up checks are each seen as the user sees them.
//!
//! Prints the executor's overhead per job (sbatch submission to the first stored event).

mod common;

use common::live::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(180);

fn slurm_server(data_dir: &Path, extra: &[&str]) -> LiveServer {
    let mut args = vec!["--no-demo", "--executor", "slurm", "--slurm-poll-ms", "200"];
    args.extend_from_slice(extra);
    LiveServer::start_in(data_dir, &args)
}

fn scontrol_state(slurm_id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", slurm_id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .find_map(|t| t.strip_prefix("JobState="))
        .unwrap_or("UNKNOWN")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_submitted_with_sbatch_streams_its_events_to_the_end() {
    if !slurm_cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = slurm_server(&dir.path().join("data"), &[]);
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.tiny_training(dataset).await;
    server.follow_training_to_success(job, DEADLINE).await;
    let view = server.get_json(&format!("/api/jobs/{job}")).await;
    let execution = &view["execution"];
    assert_eq!(execution["executor"], "slurm", "{view}");
    let slurm_id = execution["slurm_job_id"].as_str().unwrap().to_string();
    assert_eq!(execution["slurm_state"], "COMPLETED", "{view}");
    assert_eq!(scontrol_state(&slurm_id), "COMPLETED");
    assert!(
        execution["slurm_node"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{view}"
    );
    // Every line of the events file is stored once.
    let stored = server.get_json(&format!("/api/jobs/{job}/events")).await;
    let file = std::fs::read_to_string(
        server
            .data_dir
            .join(format!("slurm/job-{job}/events-1.jsonl")),
    )
    .unwrap();
    assert_eq!(stored.as_array().unwrap().len(), file.lines().count());
    assert!(server
        .data_dir
        .join(format!("runs/job-{job}/metrics.json"))
        .is_file());
    let overhead =
        execution["first_event_at"].as_f64().unwrap() - execution["submitted_at"].as_f64().unwrap();
    eprintln!("slurm executor overhead: submission to first stored event {overhead:.2} s (job {job}, Slurm job {slurm_id})");

    // Deleting the run removes its folder on the shared folder too.
    let job_dir = server.data_dir.join(format!("slurm/job-{job}"));
    assert!(job_dir.is_dir());
    let deleted = server
        .client
        .delete(server.url(&format!("/api/jobs/{job}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(!job_dir.exists(), "{} is left behind", job_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_scancel_and_a_restarted_server_reattaches_to_the_running_job() {
    if !slurm_cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = slurm_server(&data_dir, &[]);
    let dataset = server.tiny_dataset("tiny").await;

    // Cancel: the Slurm job is cancelled, the job too.
    let cancelled = server.joint_training(dataset, 1000).await;
    let running = server
        .poll_json(&format!("/api/jobs/{cancelled}"), DEADLINE, |j| {
            j["execution"]["slurm_state"] == "RUNNING"
        })
        .await;
    let cancelled_slurm = running["execution"]["slurm_job_id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .post_json(
            &format!("/api/jobs/{cancelled}/cancel"),
            serde_json::json!({}),
        )
        .await;
    let done = server.job_when_ended(cancelled, DEADLINE).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(scontrol_state(&cancelled_slurm), "CANCELLED");

    // Restart mid-run: SIGKILL the server while the Slurm job runs; it keeps running, and the
    // next server follows it to its end.
    let job = server.joint_training(dataset, 40).await;
    let first = server
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["execution"]["first_event_at"].is_number()
        })
        .await;
    let slurm_id = first["execution"]["slurm_job_id"]
        .as_str()
        .unwrap()
        .to_string();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let before = server.data_dir.join("cggm.sqlite");
    assert!(before.is_file());
    assert_eq!(
        scontrol_state(&slurm_id),
        "RUNNING",
        "the Slurm job outlives the server"
    );
    let stored_before = {
        let restarted = slurm_server(&data_dir, &[]);
        let view = restarted.get_json(&format!("/api/jobs/{job}")).await;
        assert_eq!(
            view["state"], "running",
            "re-attached, not interrupted: {view}"
        );
        let stored = restarted
            .get_json(&format!("/api/jobs/{job}/events"))
            .await
            .as_array()
            .unwrap()
            .len();
        let done = restarted.job_when_ended(job, DEADLINE).await;
        assert_eq!(
            done["state"],
            "succeeded",
            "{done}; log: {}",
            restarted.job_log(job).await
        );
        let events = restarted.get_json(&format!("/api/jobs/{job}/events")).await;
        let events = events.as_array().unwrap();
        let file =
            std::fs::read_to_string(data_dir.join(format!("slurm/job-{job}/events-1.jsonl")))
                .unwrap();
        assert_eq!(
            events.len(),
            file.lines().count(),
            "every event stored exactly once across the restart"
        );
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        assert!(kinds.contains(&"finished"), "{kinds:?}");
        stored
    };
    assert!(stored_before > 0);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sbatch_refuses_fails_at_once_with_slurms_message() {
    if !slurm_cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = slurm_server(
        &dir.path().join("data"),
        &["--slurm-partition", "no-such-partition"],
    );
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.tiny_training(dataset).await;
    let done = server.job_when_ended(job, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("sbatch refused") && error.contains("partition"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_whose_events_file_stops_growing_is_stalled_not_failed() {
    if !slurm_cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A "cggm" on the nodes that runs but never writes an event.
    let fake = dir.path().join("silent-cggm.sh");
    std::fs::write(&fake, "#!/bin/sh\nsleep 300\n").unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let server = slurm_server(
        &dir.path().join("data"),
        &[
            "--slurm-stall-s",
            "1",
            "--slurm-cggm",
            fake.to_str().unwrap(),
        ],
    );
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.tiny_training(dataset).await;
    let stalled = server
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["execution"]["stalled"] == true
        })
        .await;
    assert_eq!(stalled["state"], "running", "{stalled}");
    assert_eq!(stalled["execution"]["slurm_state"], "RUNNING");
    server
        .post_json(&format!("/api/jobs/{job}/cancel"), serde_json::json!({}))
        .await;
    let done = server.job_when_ended(job, DEADLINE).await;
    assert_eq!(done["state"], "cancelled");
}

#[test]
fn the_server_refuses_to_start_without_sbatch_or_with_an_unwritable_shared_folder() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str], path: Option<&str>| {
        let mut args = vec!["--no-demo", "--executor", "slurm"];
        args.extend_from_slice(extra);
        let mut command = serve_command(&dir.path().join("data"), &args);
        command.stdin(Stdio::null());
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let started = Instant::now();
        let out = command.output().unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let no_sbatch = serve(&[], Some("/nonexistent"));
    assert!(
        no_sbatch.contains("`sbatch` was not found") && no_sbatch.contains("--executor local"),
        "{no_sbatch}"
    );
    if Command::new("sbatch").arg("--version").output().is_ok() {
        // A file where the folder should be: not writable as a folder, whoever runs the test.
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "x").unwrap();
        let unwritable = serve(
            &[
                "--slurm-shared-dir",
                blocker.join("shared").to_str().unwrap(),
            ],
            None,
        );
        assert!(
            unwritable.contains("is not writable") && unwritable.contains("--slurm-shared-dir"),
            "{unwritable}"
        );
    }
}
