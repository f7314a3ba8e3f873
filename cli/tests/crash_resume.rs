//! Crashes as they happen, with the real `cggm` binary: the trainer SIGKILLed in the middle of a
//! checkpoint write (held there by the `CGGM_TEST_PAUSE_IN_CHECKPOINT` hook, so the kill lands at
//! a known point), and the server SIGKILLed while it trains. Each time a resume must finish the run
//! with the results of an uninterrupted run of the same seed (every step's loss, the final
//! validation scores, the final weights), and one run directory never has two trainers.

mod common;

use cggm_core::data::features::safetensors::SafetensorsFile;
use cggm_core::rundir::{RunDir, PAUSE_IN_CHECKPOINT_ENV};
use common::live::*;
use common::procs::{live_processes, run_dir_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(300);

const RUN_FLAGS: [&str; 14] = [
    "--method",
    "cggm",
    "--preset",
    "tiny",
    "--epochs",
    "3",
    "--steps-per-epoch",
    "2",
    "--device",
    "cpu",
    "--seed",
    "1",
    "--workers",
    "1",
];

fn train(data: &Path, out: &Path, events: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(cggm());
    command
        .arg("train")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--events")
        .arg(events)
        .args(RUN_FLAGS)
        .args(extra)
        .env("OMP_WAIT_POLICY", "passive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn run_to_the_end(mut command: Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "cggm train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wait_for_file(path: &Path, child: &mut std::process::Child) {
    let until = Instant::now() + DEADLINE;
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the trainer ended ({status}) before it reached the pause point");
        }
        assert!(Instant::now() < until, "no pause marker {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The events of an events file (`--events`), one JSON object a line.
fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Each step's (step, loss, L_gm); a step written twice (before a crash and again after the
/// resume) counts once, as written last.
fn step_losses(events: &[serde_json::Value]) -> Vec<(u64, f64, f64)> {
    let mut by_step = std::collections::BTreeMap::new();
    for event in events.iter().filter(|e| e["event"] == "step") {
        let step = event["step"].as_u64().unwrap();
        by_step.insert(
            step,
            (
                event["loss"].as_f64().unwrap(),
                event["gm_loss"].as_f64().unwrap(),
            ),
        );
    }
    by_step.into_iter().map(|(s, (l, g))| (s, l, g)).collect()
}

fn last_event(events: &[serde_json::Value], kind: &str) -> serde_json::Value {
    events
        .iter()
        .rfind(|e| e["event"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} event"))
}

/// Every number in `a` equals the one at the same place in `b` within `tol` (keys named `time`
/// or ending in `seconds` are wall-clock and skipped, `seq` is where the server stored it).
fn assert_same_numbers(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol, "{at}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            for (key, value) in x {
                if key == "time" || key.ends_with("seconds") || key == "seq" {
                    continue;
                }
                let other = y.get(key).unwrap_or_else(|| panic!("{at}.{key} missing"));
                assert_same_numbers(value, other, tol, &format!("{at}.{key}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_same_numbers(p, q, tol, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

fn checkpoint_dir(run: &Path) -> PathBuf {
    RunDir::new(run).checkpoints()
}

/// The largest absolute difference between the two runs' final weights (`last.safetensors`).
fn weight_difference(a: &Path, b: &Path) -> f64 {
    // The weights are F32 (read through the core's safetensors reader: this test links no libtorch).
    let read =
        |run: &Path| SafetensorsFile::open(&checkpoint_dir(run).join("last.safetensors")).unwrap();
    let (a, b) = (read(a), read(b));
    assert_eq!(a.tensors.len(), b.tensors.len());
    a.tensors
        .keys()
        .map(|name| {
            let x = a.read_f32(name).unwrap();
            let y = b.read_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            x.iter()
                .zip(&y)
                .map(|(p, q)| f64::from((p - q).abs()))
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}

/// Two runs of the same seed, (run directory, events) each, one interrupted and resumed: the same
/// loss and L_gm at every step, the same last validation and the same final weights.
fn assert_same_run(
    straight: (&Path, &[serde_json::Value]),
    crashed: (&Path, &[serde_json::Value]),
) {
    let (a, b) = (step_losses(straight.1), step_losses(crashed.1));
    assert_eq!(a.len(), 6, "3 epochs x 2 steps");
    assert_eq!(
        a.iter().map(|s| s.0).collect::<Vec<_>>(),
        b.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        for (what, p, q) in [("loss", x.1, y.1), ("L_gm", x.2, y.2)] {
            assert!((p - q).abs() < 1e-5, "{what} at step {}: {p} vs {q}", x.0);
        }
    }
    assert_same_numbers(
        &last_event(straight.1, "validation"),
        &last_event(crashed.1, "validation"),
        1e-5,
        "last validation",
    );
    let difference = weight_difference(straight.0, crashed.0);
    assert!(difference < 1e-4, "final weights differ by {difference}");
}

#[test]
fn a_trainer_killed_in_the_middle_of_a_checkpoint_write_resumes_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 5, "32x32x16");
    let straight = (
        tmp.path().join("straight"),
        tmp.path().join("straight.jsonl"),
    );
    run_to_the_end(train(&data, &straight.0, &straight.1, &[]));

    // `weights`: the new weights are on disk beside the previous optimiser state and JSON (the
    // mix a resume must never load); `json`: the whole new checkpoint is on disk, not renamed.
    for stage in ["weights", "json"] {
        let run = tmp.path().join(format!("crashed-{stage}"));
        let events = tmp.path().join(format!("crashed-{stage}.jsonl"));
        let marker = tmp.path().join(format!("paused-{stage}"));
        let mut command = train(&data, &run, &events, &[]);
        command.env(
            PAUSE_IN_CHECKPOINT_ENV,
            format!("last:2:{stage}:{}", marker.display()),
        );
        let mut child = command.spawn().unwrap();
        wait_for_file(&marker, &mut child);
        child.kill().unwrap(); // SIGKILL, in the middle of the second `last` checkpoint
        child.wait().unwrap();
        let pending: Vec<String> = std::fs::read_dir(checkpoint_dir(&run))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".pending-last"))
            .collect();
        assert!(
            !pending.is_empty(),
            "{stage}: the kill left a half-written checkpoint"
        );

        run_to_the_end(train(&data, &run, &events, &["--resume"]));
        assert_same_run(
            (&straight.0, &read_events(&straight.1)),
            (&run, &read_events(&events)),
        );
    }
}

/// Trainers working in `run_dir` (their command line names it).
fn trainers_in(run_dir: &str) -> Vec<u32> {
    live_processes(|cmdline| cmdline.contains(" train") && cmdline.contains(run_dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_training_then_restarted_resumes_the_job_to_the_uninterrupted_result(
) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let marker = tmp.path().join("paused");
    let request = serde_json::json!({ "method": "cggm", "preset": "tiny", "epochs": 3,
                                      "steps_per_epoch": 2, "device": "cpu", "seed": 1, "workers": 1 });
    // The first server's trainer stops inside its second `last` checkpoint (all of it on disk,
    // nothing renamed) and waits there: the server is killed while it trains.
    let pause = format!("last:2:json:{}", marker.display());
    let mut server = LiveServer::start_with_env(
        &data_dir,
        &["--no-demo"],
        &[(PAUSE_IN_CHECKPOINT_ENV, &pause)],
    );
    let dataset = server.tiny_dataset("tiny").await;
    let mut body = request.clone();
    body["dataset_id"] = dataset.into();
    let crashed = server.post_job(body.clone()).await;
    let until = Instant::now() + DEADLINE;
    while !marker.exists() {
        assert!(
            Instant::now() < until,
            "the job never reached its second checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = server.get_json(&format!("/api/jobs/{crashed}")).await;
    assert_eq!(job["state"], "running", "{job}");
    let run_dir = run_dir_of(&data_dir, crashed);
    assert_eq!(trainers_in(&run_dir).len(), 1);
    server.child.kill().unwrap(); // SIGKILL: no handler runs in the server
    server.child.wait().unwrap();

    // The orphaned trainer notices its server is gone and exits; nothing else trains there.
    let until = Instant::now() + Duration::from_secs(60);
    while !trainers_in(&run_dir).is_empty() {
        assert!(
            Instant::now() < until,
            "a trainer outlived its killed server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = LiveServer::start_in(&data_dir, &["--no-demo"]);
    let job = restarted.get_json(&format!("/api/jobs/{crashed}")).await;
    assert_eq!(job["state"], "interrupted", "{job}");
    restarted
        .post_json(
            &format!("/api/jobs/{crashed}/resume"),
            serde_json::json!({}),
        )
        .await;
    let mut most = 0;
    let until = Instant::now() + DEADLINE;
    loop {
        most = most.max(trainers_in(&run_dir).len());
        let job = restarted.get_json(&format!("/api/jobs/{crashed}")).await;
        if !["queued", "running"].contains(&job["state"].as_str().unwrap()) {
            assert_eq!(job["state"], "succeeded", "{job}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the resumed job did not finish: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= 1, "{most} trainers shared {run_dir}");

    // The same request, never interrupted.
    let straight = restarted.post_job(body).await;
    restarted.job_succeeded(straight, DEADLINE).await;
    let straight_dir = run_dir_of(&data_dir, straight);

    let events = |id: i64| {
        let restarted = &restarted;
        async move {
            restarted
                .get_json(&format!("/api/jobs/{id}/events"))
                .await
                .as_array()
                .unwrap()
                .clone()
        }
    };
    assert_same_run(
        (Path::new(&straight_dir), &events(straight).await),
        (Path::new(&run_dir), &events(crashed).await),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_resume_stores_every_step_and_validation_once() {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let (epochs, steps_per_epoch) = (4, 5);
    let job = server
        .post_job(
            serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny",
                                       "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                       "device": "cpu", "seed": 3, "workers": 1 }),
        )
        .await;
    // Cancel in the second epoch, after its first checkpoint and some steps past it.
    cancel_after_steps(&server, job, steps_per_epoch + 2).await;
    server
        .post_json(&format!("/api/jobs/{job}/resume"), serde_json::json!({}))
        .await;
    server.job_succeeded(job, DEADLINE).await;

    let events = server.get_json(&format!("/api/jobs/{job}/events")).await;
    let steps = each_step_once(&events);
    assert_eq!(
        steps.len(),
        epochs * steps_per_epoch,
        "every step once: {steps:?}"
    );
    let mut epochs_validated: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "validation")
        .map(|e| e["epoch"].as_i64().unwrap())
        .collect();
    let validations = epochs_validated.len();
    epochs_validated.dedup();
    assert_eq!(validations, epochs_validated.len(), "{epochs_validated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_a_job_stopped_before_its_first_checkpoint_starts_it_again_from_step_0() {
    let server = LiveServer::start(&["--no-demo"]);
    let dataset = server.tiny_dataset("tiny").await;
    let (epochs, steps_per_epoch) = (1, 40);
    let job = server
        .post_job(
            serde_json::json!({ "dataset_id": dataset, "method": "joint", "preset": "tiny",
                                       "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                       "device": "cpu", "seed": 5, "workers": 1 }),
        )
        .await;
    // Cancel at the first stored step: long before the epoch's checkpoint.
    cancel_after_steps(&server, job, 1).await;
    let response = server
        .client
        .post(server.url(&format!("/api/jobs/{job}/resume")))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    server.job_succeeded(job, DEADLINE).await;
    let events = server.get_json(&format!("/api/jobs/{job}/events")).await;
    assert_eq!(each_step_once(&events).len(), epochs * steps_per_epoch);
}

/// Waits until `job` has stored `steps` step events, cancels it and waits for `cancelled`.
async fn cancel_after_steps(server: &LiveServer, job: i64, steps: usize) {
    let until = Instant::now() + DEADLINE;
    loop {
        let events = server.get_json(&format!("/api/jobs/{job}/events")).await;
        let stored = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "step")
            .count();
        if stored >= steps {
            break;
        }
        assert!(
            Instant::now() < until,
            "job {job} never stored {steps} steps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
        .post_json(&format!("/api/jobs/{job}/cancel"), serde_json::json!({}))
        .await;
    let cancelled = server.job_when_ended(job, DEADLINE).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
}

/// The step numbers of a job's stored events, sorted; fails when one is stored twice.
fn each_step_once(events: &serde_json::Value) -> Vec<i64> {
    let mut steps: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_i64().unwrap())
        .collect();
    let stored = steps.len();
    steps.sort();
    steps.dedup();
    assert_eq!(stored, steps.len(), "a step is stored twice: {steps:?}");
    steps
}
