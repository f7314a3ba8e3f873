//! `cggm train --mlflow URI --tensorboard DIR` against the real thing: a real `mlflow server`
//! from PyPI on loopback (started and stopped here), a tiny CPU training through the trainer
//! binary, then the run read back with MLflow's own client and TensorBoard's own event reader
//! (tracking_readback.py beside this file), compared with the run's events.jsonl. A run stopped
//! by SIGTERM (the server's Cancel) ends KILLED; a tracking server that does not answer stops the
//! run before it starts, with what to do.
//!
//! MLflow and TensorBoard live in their own venv, made by scripts/setup-tracking.sh (`make test`
//! runs it and sets CGGM_REQUIRE_TRACKING=1, so there a missing venv fails; a plain `cargo test`
//! without it skips these tests and says so).

mod data_common;

use cggm_trainer::events::Event;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tracking venv's python: $CGGM_TRACKING_PYTHON, else where scripts/setup-tracking.sh puts it.
fn tracking_python() -> Option<PathBuf> {
    let python = match std::env::var_os("CGGM_TRACKING_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let cache = std::env::var_os("CGGM_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("cggm-studio"))
                })
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cggm-studio"))
                })
                .unwrap_or_default();
            cache.join("venv-tracking/bin/python")
        }
    };
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import mlflow, tensorboard"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            std::env::var_os("CGGM_REQUIRE_TRACKING").is_none(),
            "no MLflow/TensorBoard venv at {}: run scripts/setup-tracking.sh (make test does)",
            python.display()
        );
        eprintln!(
            "skipped: no MLflow/TensorBoard venv at {}; run scripts/setup-tracking.sh to run the \
             tracking tests",
            python.display()
        );
        return None;
    }
    Some(python)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kill -SIGNAL TARGET` (a negative target is a process group): the workspace denies the unsafe
/// code a direct call needs.
fn signal(name: &str, target: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), "--", target])
        .stderr(Stdio::null())
        .status();
}

/// A `mlflow server` in its own process group (it starts workers), stopped with all of them when
/// dropped.
struct MlflowServer {
    child: Child,
    uri: String,
}

impl MlflowServer {
    fn start(python: &Path, dir: &Path) -> Self {
        let port = free_port();
        let mlflow = python.with_file_name("mlflow");
        let log = std::fs::File::create(dir.join("mlflow-server.log")).unwrap();
        let child = Command::new(&mlflow)
            .args(["server", "--backend-store-uri"])
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--default-artifact-root")
            .arg(dir.join("artifacts"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", mlflow.display()));
        let server = Self {
            child,
            uri: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        let health = format!("127.0.0.1:{port}");
        while !healthy(&health) {
            assert!(
                Instant::now() < deadline,
                "mlflow server did not answer /health within 180 s:\n{}",
                std::fs::read_to_string(dir.join("mlflow-server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        server
    }
}

/// GET /health answers 200 (a plain request: the test needs no HTTP client for this).
fn healthy(address: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        signal("TERM", &group);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal("KILL", &group);
        let _ = self.child.wait();
    }
}

fn read_events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `cggm train` on a tiny synthetic dataset, CPU, with tracking; `steps` steps in each of 2 epochs.
fn train_command(tmp: &Path, name: &str, steps: usize, uri: &str) -> Command {
    let data = tmp.join("data");
    if !data.exists() {
        data_common::tiny_dataset(&data, 6, 7);
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_cggm-trainer"));
    command
        .args([
            "train", "--preset", "tiny", "--device", "cpu", "--epochs", "2",
        ])
        .args(["--steps-per-epoch", &steps.to_string(), "--val-cases", "1"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.join(name))
        .arg("--events")
        .arg(tmp.join(format!("{name}.jsonl")))
        .args(["--mlflow", uri, "--mlflow-experiment", "cggm-test"])
        .arg("--tensorboard")
        .arg(tmp.join("tb"))
        // The server's setting must not leak into the test from the environment.
        .env_remove("CGGM_MLFLOW_URI")
        .env_remove("CGGM_TENSORBOARD_DIR")
        .env_remove("CGGM_MLFLOW_EXPERIMENT")
        .stdin(Stdio::null());
    command
}

fn run_id(run_dir: &Path) -> String {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("tracking.json")).unwrap()).unwrap();
    record["mlflow"]["run_id"].as_str().unwrap().to_string()
}

fn read_back(python: &Path, uri: &str, run_id: &str, tb_dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tracking_readback.py");
    let out = Command::new(python)
        .arg(script)
        .args([uri, run_id])
        .arg(tb_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "read-back failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (step, value) pairs of a read-back series.
fn series(value: &serde_json::Value) -> Vec<(i64, f64)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn assert_same_series(what: &str, got: &[(i64, f64)], want: &[(i64, f64)], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for ((gs, gv), (ws, wv)) in got.iter().zip(want) {
        assert_eq!(gs, ws, "{what}: steps {got:?} vs {want:?}");
        assert!(
            (gv - wv).abs() <= tolerance * wv.abs().max(1e-6),
            "{what} at step {gs}: {gv} vs {wv}"
        );
    }
}

#[test]
fn a_tracked_run_reads_back_from_mlflow_and_tensorboard_as_its_events_say() {
    let Some(python) = tracking_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&python, tmp.path());
    let out = train_command(tmp.path(), "run-a", 3, &server.uri)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "training failed:\n{stderr}");
    let run_dir = tmp.path().join("run-a");
    let run_id = run_id(&run_dir);
    assert!(
        stderr.contains(&format!("logging to MLflow run {run_id}")) && stderr.contains(&server.uri),
        "{stderr}"
    );

    let events = read_events(&tmp.path().join("run-a.jsonl"));
    let losses: Vec<(i64, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, loss, .. } => Some((*step as i64, *loss)),
            _ => None,
        })
        .collect();
    let val_dice: Vec<(i64, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Validation { epoch, metrics, .. } => {
                Some((*epoch as i64 + 1, metrics["dice_mean"]))
            }
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), 6);
    assert_eq!(val_dice.len(), 2);

    let back = read_back(&python, &server.uri, &run_id, &tmp.path().join("tb/run-a"));
    assert_eq!(back["status"], "FINISHED", "{back}");
    assert_eq!(back["run_name"], "run-a");
    assert_eq!(back["experiment"], "cggm-test");
    let params = &back["params"];
    assert_eq!(params["method"], "cggm", "{params}");
    assert_eq!(params["preset"], "tiny", "{params}");
    assert_eq!(params["task"], "segmentation", "{params}");
    assert_eq!(params["epochs"], "2", "{params}");
    assert_eq!(params["steps_per_epoch"], "3", "{params}");
    assert_eq!(params["device"], "cpu", "{params}");
    // MLflow keeps doubles: the same numbers; TensorBoard's simple_value is a float32.
    assert_same_series("MLflow loss", &series(&back["loss"]), &losses, 1e-12);
    assert_same_series("TensorBoard loss", &series(&back["tb_loss"]), &losses, 1e-6);
    assert_same_series(
        "MLflow val/dice_mean",
        &series(&back["val_dice_mean"]),
        &val_dice,
        1e-12,
    );
    assert_same_series(
        "TensorBoard val/dice_mean",
        &series(&back["tb_val_dice_mean"]),
        &val_dice,
        1e-6,
    );
    let Some(Event::Finished { test_metrics, .. }) = events.last() else {
        panic!("the run did not finish: {:?}", events.last());
    };
    let metrics = &back["metrics"];
    for (name, value) in test_metrics {
        let logged = metrics[format!("test/{name}")].as_f64().unwrap_or(f64::NAN);
        assert!(
            (logged - value).abs() < 1e-12,
            "test/{name}: {logged} vs {value}: {metrics}"
        );
    }
    assert!(metrics["best_epoch"].as_f64().is_some(), "{metrics}");
    let tags: Vec<&str> = back["tb_tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    for tag in ["loss", "task_loss", "lr", "val/dice_mean", "test/dice_mean"] {
        assert!(tags.contains(&tag), "TensorBoard has no {tag}: {tags:?}");
    }
    assert!(tags.iter().any(|t| t.starts_with("balance/")), "{tags:?}");

    // Cancel: SIGTERM (what the server sends) mid-run ends the MLflow run KILLED.
    let mut child = train_command(tmp.path(), "run-b", 400, &server.uri)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events_b = tmp.path().join("run-b.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&events_b).is_ok_and(|t| t.contains("\"event\":\"step\"")) {
        assert!(Instant::now() < deadline, "run-b sent no step within 120 s");
        assert!(child.try_wait().unwrap().is_none(), "run-b ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal("TERM", &child.id().to_string());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    let back = read_back(
        &python,
        &server.uri,
        &run_id_of(tmp.path(), "run-b"),
        &tmp.path().join("tb/run-b"),
    );
    assert_eq!(back["status"], "KILLED", "{back}");
    assert!(!series(&back["loss"]).is_empty(), "{back}");
}

fn run_id_of(tmp: &Path, name: &str) -> String {
    run_id(&tmp.join(name))
}

#[test]
fn a_tracking_server_that_does_not_answer_stops_the_run_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let uri = format!("http://127.0.0.1:{}", free_port());
    let out = train_command(tmp.path(), "run", 2, &uri).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&uri), "{stderr}");
    assert!(stderr.contains("mlflow server"), "{stderr}");
    assert!(!tmp.path().join("run/checkpoints").exists());

    let out = train_command(tmp.path(), "run", 2, "mlflow.example:5000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:5000"), "{stderr}");
}
