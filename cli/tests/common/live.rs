//! The real thing: `cggm serve` as a child process on port 0 with a temporary data directory, an
//! HTTP client, a Server-Sent Events reader, and tiny synthetic data made by `cggm synth`.

use futures_util::StreamExt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CGGM_BUILT: &str = env!("CARGO_BIN_EXE_cggm");

/// The binary under test: this package's `cggm`, or `CGGM_BIN` (e.g. the release build, for the
/// load measurements).
pub fn cggm() -> String {
    let bin = std::env::var("CGGM_BIN").unwrap_or_else(|_| CGGM_BUILT.to_string());
    // `cggm train|eval|infer|bench` start `cggm-trainer` from the same folder: another package's
    // binary, which `cargo test -p cggm-cli` alone does not build.
    let trainer = Path::new(&bin).with_file_name("cggm-trainer");
    assert!(
        std::env::var_os("CGGM_TRAINER").is_some() || trainer.is_file(),
        "{} is missing: run the tests with `make test` or `cargo test --workspace`, or build it \
         first (`cargo build -p cggm-trainer --bins`)",
        trainer.display()
    );
    bin
}

/// An HTTP client that sends what the application's pages send on every request: the
/// `X-CGGM-Request: 1` header the server requires on changes.
pub fn app_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-cggm-request",
        reqwest::header::HeaderValue::from_static("1"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

pub struct LiveServer {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub started_in: Duration,
    pub client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl LiveServer {
    /// Starts `cggm serve --bind 127.0.0.1:0` on a fresh data directory and waits (with a
    /// deadline) for the line that gives its address.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut server = Self::start_in(&data_dir, extra);
        server._dir = Some(dir);
        server
    }

    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// As [`LiveServer::start_in`], with extra environment variables for the server (and so for
    /// the jobs it starts).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let started = Instant::now();
        let mut child = serve_command(data_dir, extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,cggm_server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cggm serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("open http://").nth(1) {
                        let address = rest.split('/').next().unwrap().to_string();
                        let _ = tx.send(address);
                        sent = true;
                    }
                }
                if std::env::var_os("CGGM_TEST_SERVER_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server announces its address within 60 s");
        let started_in = started.elapsed();
        Self {
            child,
            base: format!("http://{address}"),
            data_dir: data_dir.to_path_buf(),
            started_in,
            client: app_client(),
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {answer}");
        answer
    }

    /// Polls `GET path` until `done` holds, or fails at the deadline.
    pub async fn poll_json(
        &self,
        path: &str,
        deadline: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + deadline;
        loop {
            let value = self.get_json(path).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < until,
                "GET {path} did not reach the expected state in {deadline:?}: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a tiny synthetic dataset with `cggm synth` into `datasets/<name>` and registers it.
    pub async fn tiny_dataset(&self, name: &str) -> i64 {
        let folder = self.data_dir.join("datasets").join(name);
        synth(&folder, 4, "32x32x16");
        let dataset = self.register_dataset(name, &folder).await;
        assert_eq!(dataset["report"]["valid_cases"], 4, "{dataset}");
        dataset["id"].as_i64().unwrap()
    }

    /// Launches a tiny training job (preset `tiny`, 1 epoch, 2 steps, CPU).
    pub async fn tiny_training(&self, dataset: i64) -> i64 {
        self.post_job(
            serde_json::json!({ "dataset_id": dataset, "method": "cggm", "preset": "tiny", "epochs": 1,
                                "steps_per_epoch": 2, "device": "cpu", "seed": 1 }),
        )
        .await
    }

    /// Launches a joint training of `epochs` epochs of two steps (preset `tiny`, CPU): with many
    /// epochs, one that is still running when the test kills, restarts or cancels something.
    pub async fn joint_training(&self, dataset: i64, epochs: u32) -> i64 {
        self.post_job(
            serde_json::json!({ "dataset_id": dataset, "method": "joint", "preset": "tiny",
                                "epochs": epochs, "steps_per_epoch": 2, "device": "cpu" }),
        )
        .await
    }

    /// Follows a training job's live event stream to its end: it must succeed, and the stream
    /// must carry its start, steps, validations and end. The messages, in order.
    pub async fn follow_training_to_success(
        &self,
        job: i64,
        deadline: Duration,
    ) -> Vec<SseMessage> {
        let stream = self.url(&format!("/api/jobs/{job}/stream"));
        let messages = read_sse(&self.client, &stream, deadline, ends_the_stream).await;
        let kinds: Vec<&str> = messages.iter().map(|m| m.event.as_str()).collect();
        let last = messages.last().unwrap();
        assert!(
            last.data.contains("\"succeeded\""),
            "{kinds:?} {last:?}; log: {}",
            self.job_log(job).await
        );
        for kind in ["run_started", "step", "validation", "finished"] {
            assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
        }
        messages
    }

    /// `POST /api/jobs` with `body`; the new job's id.
    pub async fn post_job(&self, body: serde_json::Value) -> i64 {
        self.post_json("/api/jobs", body).await["id"]
            .as_i64()
            .unwrap()
    }

    /// Registers `folder` as the dataset `name`; the server's answer (id and validation report).
    pub async fn register_dataset(&self, name: &str, folder: &Path) -> serde_json::Value {
        self.post_json(
            "/api/datasets",
            serde_json::json!({ "name": name, "path": folder.display().to_string() }),
        )
        .await
    }

    /// Segments `study` with the checkpoint of the training job `run` on the CPU; the prediction's
    /// (job) id.
    pub async fn predict(&self, study: i64, run: i64) -> i64 {
        self.post_json(
            "/api/predictions",
            serde_json::json!({ "study_id": study, "checkpoint_job_id": run, "device": "cpu" }),
        )
        .await["id"]
            .as_i64()
            .unwrap()
    }

    /// Polls `GET /api/jobs/<job>` until the job has ended (see [`has_ended`]); its view.
    pub async fn job_when_ended(&self, job: i64, deadline: Duration) -> serde_json::Value {
        self.poll_json(&format!("/api/jobs/{job}"), deadline, has_ended)
            .await
    }

    /// As [`LiveServer::job_when_ended`], and the job succeeded.
    pub async fn job_succeeded(&self, job: i64, deadline: Duration) -> serde_json::Value {
        let ended = self.job_when_ended(job, deadline).await;
        assert_eq!(ended["state"], "succeeded", "{ended}");
        ended
    }

    /// The job's log, as the run page shows it.
    pub async fn job_log(&self, job: i64) -> String {
        self.get_text(&format!("/api/jobs/{job}/log")).await
    }

    /// `GET path`'s body as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    /// `GET path`'s body as bytes, whatever the status.
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        self.get(path).await.bytes().await.unwrap().to_vec()
    }

    /// `GET path` as sent, for a test that checks the status or headers itself.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `POST path` with a multipart form, for a test that checks the answer itself.
    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }
}

/// `cggm serve` on a free port of the loopback interface over `data_dir`, with `extra` flags.
pub fn serve_command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(cggm());
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra);
    command
}

/// A job's view says it has ended: neither queued nor running.
pub fn has_ended(job: &serde_json::Value) -> bool {
    !matches!(job["state"].as_str(), Some("queued") | Some("running"))
}

/// A study upload of a case folder's files `<case>_<role>.nii.gz` (as `files` parts) for each of
/// `roles`, under `name` when given.
pub fn case_form(case_dir: &Path, name: Option<&str>, roles: &[&str]) -> reqwest::multipart::Form {
    let case = case_dir.file_name().unwrap().to_string_lossy().to_string();
    let mut form = reqwest::multipart::Form::new();
    if let Some(name) = name {
        form = form.text("name", name.to_string());
    }
    for role in roles {
        let file = format!("{case}_{role}.nii.gz");
        let bytes = std::fs::read(case_dir.join(&file)).unwrap();
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes).file_name(file),
        );
    }
    form
}

impl Drop for LiveServer {
    /// Ctrl-C first, so that the server stops its job processes too; SIGKILL after a deadline.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn synth(out: &Path, cases: usize, size: &str) {
    let status = Command::new(cggm())
        .args(["synth", "--out"])
        .arg(out)
        .args(["--cases", &cases.to_string(), "--seed", "7", "--size", size])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cggm synth failed");
}

/// The job's `state` event that says it has ended (the last one its stream sends).
pub fn ends_the_stream(message: &SseMessage) -> bool {
    message.event == "state"
        && !message.data.contains("\"queued\"")
        && !message.data.contains("\"running\"")
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads an SSE stream until it ends (the job finished) or `stop` says so; fails at the deadline.
pub async fn read_sse(
    client: &reqwest::Client,
    url: &str,
    deadline: Duration,
    mut stop: impl FnMut(&SseMessage) -> bool,
) -> Vec<SseMessage> {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut message = SseMessage {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut is_comment = true;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        message.event = v.trim().to_string();
                        is_comment = false;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        message.data.push_str(v.trim_start());
                        is_comment = false;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        message.id = Some(v.trim().to_string());
                    }
                }
                if is_comment {
                    continue;
                }
                let done = stop(&message);
                messages.push(message);
                if done {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .expect("the event stream finished before the deadline");
    messages
}

pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x89, b'P', b'N', b'G'])
}

/// Whether the one-node Slurm cluster of scripts/setup-slurm.sh is up. The tests never install
/// or configure it (that writes /etc and needs root): `make test` runs the script first and sets
/// `CGGM_REQUIRE_SLURM=1`, so there a missing cluster fails the test; a plain `cargo test` on a
/// machine without Slurm skips the Slurm tests and says so.
pub fn slurm_cluster() -> bool {
    let up = Command::new("sinfo")
        .args(["-h", "-N", "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|state| matches!(state.trim(), "idle" | "mixed" | "allocated"))
        });
    if !up {
        assert!(
            std::env::var_os("CGGM_REQUIRE_SLURM").is_none(),
            "no Slurm cluster is up although make test started one: see scripts/setup-slurm.sh's \
             output above"
        );
        eprintln!(
            "skipped: no Slurm cluster is up; run scripts/setup-slurm.sh (as root or with sudo; \
             make test does) to run the Slurm tests"
        );
    }
    up
}
