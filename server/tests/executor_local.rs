//! The local executor across a server killed with SIGKILL: the job's trainer (its pid recorded in
//! the database) is never left running beside a resumed one — after the restart no process works
//! in the run directory until Resume starts exactly one.

mod common;

use common::live::*;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// Live (not zombie) processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                matches!(
                    s.rsplit(')').next().unwrap_or("").split_whitespace().next(),
                    Some("Z") | Some("X")
                )
            })
            .unwrap_or(true);
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_restart_the_run_directory_never_has_two_trainers() {
    let mut server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let job = server
        .post_json(
            "/api/jobs",
            serde_json::json!({ "dataset_id": dataset, "method": "joint", "preset": "tiny",
                                "epochs": 1000, "steps_per_epoch": 2, "device": "cpu" }),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let view = server
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["execution"]["pid"].is_number()
        })
        .await;
    assert_eq!(view["execution"]["executor"], "local");
    let pid = view["execution"]["pid"].as_u64().unwrap() as u32;
    let run_dir = server
        .data_dir
        .canonicalize()
        .unwrap()
        .join(format!("runs/job-{job}"))
        .display()
        .to_string();
    assert_eq!(
        processes_mentioning(&run_dir),
        vec![pid],
        "the recorded pid is the trainer"
    );

    // A checkpoint to resume from.
    server
        .poll_json(
            &format!("/api/jobs/{job}/events?kind=checkpoint_saved"),
            DEADLINE,
            |events| !events.as_array().unwrap().is_empty(),
        )
        .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let restarted = LiveServer::start_in(&server.data_dir, &["--no-demo"]);
    let view = restarted.get_json(&format!("/api/jobs/{job}")).await;
    assert_eq!(view["state"], "interrupted", "{view}");
    // Recovery has run before the server answers: the old trainer is gone (it exited with its
    // server, or recovery stopped it).
    assert!(processes_mentioning(&run_dir).is_empty());

    restarted
        .post_json(&format!("/api/jobs/{job}/resume"), serde_json::json!({}))
        .await;
    let resumed = restarted
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["state"] == "running"
                && j["execution"]["pid"]
                    .as_u64()
                    .is_some_and(|p| p as u32 != pid)
        })
        .await;
    let new_pid = resumed["execution"]["pid"].as_u64().unwrap() as u32;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let trainers = processes_mentioning(&run_dir);
        assert!(
            trainers.len() <= 1 && trainers.iter().all(|p| *p == new_pid),
            "{trainers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restarted
        .post_json(&format!("/api/jobs/{job}/cancel"), serde_json::json!({}))
        .await;
    restarted
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["state"] == "cancelled"
        })
        .await;
    drop(server);
}
