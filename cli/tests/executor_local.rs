//! The local executor across a server killed with SIGKILL: the job's trainer (its pid recorded in
//! the database) is never left running beside a resumed one — after the restart no process works
//! in the run directory until Resume starts exactly one.

mod common;

use common::live::*;
use common::procs::{processes_mentioning, run_dir_of};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_restart_the_run_directory_never_has_two_trainers() {
    let mut server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let job = server.joint_training(dataset, 1000).await;
    let view = server
        .poll_json(&format!("/api/jobs/{job}"), DEADLINE, |j| {
            j["execution"]["pid"].is_number()
        })
        .await;
    assert_eq!(view["execution"]["executor"], "local");
    let pid = view["execution"]["pid"].as_u64().unwrap() as u32;
    let run_dir = run_dir_of(&server.data_dir, job);
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

/// OpenMP spins (`active`) when a job has the cores to itself and waits passively when jobs share
/// them; the job's log says which and why (a policy set in the server's environment wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openmp_wait_policy_follows_max_jobs_and_the_log_says_which() {
    let inherited = std::env::var("OMP_WAIT_POLICY")
        .ok()
        .filter(|p| !p.trim().is_empty());
    for (flags, expected) in [
        (&["--no-demo"][..], "OMP_WAIT_POLICY=active (--max-jobs 1"),
        (
            &["--no-demo", "--max-jobs", "2"][..],
            "OMP_WAIT_POLICY=passive (--max-jobs above 1",
        ),
    ] {
        let server = LiveServer::start(flags);
        let dataset = server.tiny_dataset("tiny").await;
        let job = server.tiny_training(dataset).await;
        server.job_succeeded(job, DEADLINE).await;
        let log = server.job_log(job).await;
        let expected = match &inherited {
            Some(policy) => format!("OMP_WAIT_POLICY={policy} (set in the server's environment)"),
            None => expected.to_string(),
        };
        assert!(log.contains(&expected), "{flags:?}: {log}");
    }
}
