//! An MLflow run over MLflow's REST API 2.0 (no Python in the trainer): the experiment is found or
//! created and the run created when training starts, in the open, so that a wrong URI stops the
//! run before it costs anything. From then on a worker thread owns the HTTP client: the training
//! thread only queues metrics and params, the worker sends them in batches (`runs/log-batch`,
//! within MLflow's limits) every couple of seconds, and a slow or vanished server costs the run
//! nothing but a warning (once) and the lost batches.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the worker sends what has been queued.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// MLflow's limits on one `runs/log-batch`.
const METRICS_PER_BATCH: usize = 1000;
const PARAMS_PER_BATCH: usize = 100;
/// MLflow refuses longer param values.
const PARAM_VALUE_CHARS: usize = 6000;
/// How long the end of a run waits for the worker to send the rest and close the run: within the
/// 10 s a cancelled job gets between SIGTERM and SIGKILL (server/src/jobs.rs, CANCEL_GRACE).
const CLOSE_WAIT: Duration = Duration::from_secs(8);

/// One metric point.
#[derive(Clone, Debug)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub step: i64,
}

/// How a run ended, in MLflow's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Finished,
    Failed,
    Killed,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Finished => "FINISHED",
            Status::Failed => "FAILED",
            Status::Killed => "KILLED",
        }
    }
}

enum Message {
    Metrics(Vec<Metric>),
    Params(Vec<(String, String)>),
    End(Status),
}

/// The REST calls, with the server's own error message in ours.
struct Api {
    client: reqwest::blocking::Client,
    base: String,
}

impl Api {
    fn new(uri: &str) -> Result<Self> {
        let base = uri.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            bail!(
                "--mlflow {uri}: this build speaks plain HTTP only; give the tracking server's \
                 http:// address (or reach an https server through a local proxy)"
            );
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            bail!(
                "--mlflow {uri:?} is no tracking server address: give one like \
                 http://127.0.0.1:5000 (where `mlflow server` listens)"
            );
        }
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .context("starting the HTTP client for MLflow")?;
        Ok(Self { client, base })
    }

    fn answer(
        &self,
        path: &str,
        response: reqwest::Result<reqwest::blocking::Response>,
    ) -> Result<Value> {
        let response = response.map_err(|e| anyhow!("MLflow at {}: {path}: {e}", self.base))?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        if !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = body["error_code"].as_str().unwrap_or("");
            let message = body["message"].as_str().unwrap_or(text.as_str());
            bail!(
                "MLflow at {}: {path} answered {status} {code}: {message}",
                self.base
            );
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        self.answer(path, self.client.post(url).json(body).send())
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        self.answer(path, self.client.get(url).query(query).send())
    }

    /// The experiment's id, created when it does not exist yet (another trainer may create it
    /// at the same moment: then its id is read).
    fn experiment_id(&self, name: &str) -> Result<String> {
        let find = || -> Result<Option<String>> {
            match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
                Ok(v) => Ok(v["experiment"]["experiment_id"]
                    .as_str()
                    .map(str::to_string)),
                Err(e) if format!("{e}").contains("RESOURCE_DOES_NOT_EXIST") => Ok(None),
                Err(e) => Err(e),
            }
        };
        if let Some(id) = find()? {
            return Ok(id);
        }
        match self.post("experiments/create", &json!({ "name": name })) {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("MLflow at {}: experiments/create gave no id", self.base)),
            Err(e) => find()?.ok_or(e),
        }
    }

    fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
    ) -> Result<()> {
        let metrics: Vec<Value> = metrics
            .iter()
            .map(|m| json!({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}))
            .collect();
        let params: Vec<Value> = params
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        self.post(
            "runs/log-batch",
            &json!({"run_id": run_id, "metrics": metrics, "params": params}),
        )
        .map(|_| ())
    }
}

/// Where a run was logged (written to the run folder's `tracking.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RunRef {
    pub uri: String,
    pub experiment_id: String,
    pub run_id: String,
}

/// The open run: the training side of the worker.
pub struct MlflowRun {
    pub run: RunRef,
    queue: mpsc::Sender<Message>,
    closed: mpsc::Receiver<()>,
}

impl MlflowRun {
    /// Finds or creates experiment `experiment` and creates run `run_name` in it, or, with
    /// `reopen`, sets that earlier run (a resumed one) running again. Fails with the server's
    /// answer when the server cannot be reached or refuses.
    pub fn start(
        uri: &str,
        experiment: &str,
        run_name: &str,
        tags: &[(String, String)],
        reopen: Option<&RunRef>,
    ) -> Result<Self> {
        let api = Api::new(uri)?;
        let fix = || {
            format!(
                "logging to MLflow at {uri}: start the tracking server (`mlflow server --host \
                 127.0.0.1 --port 5000`) or leave out --mlflow / CGGM_MLFLOW_URI"
            )
        };
        let run = match reopen.filter(|r| r.uri.trim_end_matches('/') == api.base) {
            Some(run) => {
                api.post(
                    "runs/update",
                    &json!({"run_id": run.run_id, "status": "RUNNING"}),
                )
                .with_context(fix)?;
                run.clone()
            }
            None => {
                let experiment_id = api.experiment_id(experiment).with_context(fix)?;
                let tags: Vec<Value> = tags
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect();
                let created = api
                    .post(
                        "runs/create",
                        &json!({
                            "experiment_id": experiment_id,
                            "run_name": run_name,
                            "start_time": millis(cggm_core::events::now()),
                            "tags": tags,
                        }),
                    )
                    .with_context(fix)?;
                let run_id = created["run"]["info"]["run_id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("MLflow at {uri}: runs/create gave no run id"))?
                    .to_string();
                RunRef {
                    uri: uri.to_string(),
                    experiment_id,
                    run_id,
                }
            }
        };
        let (queue, inbox) = mpsc::channel();
        let (done, closed) = mpsc::channel();
        let run_id = run.run_id.clone();
        std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || worker(api, run_id, inbox, done))
            .context("starting the MLflow thread")?;
        Ok(Self { run, queue, closed })
    }

    pub fn metrics(&self, metrics: Vec<Metric>) {
        if !metrics.is_empty() {
            let _ = self.queue.send(Message::Metrics(metrics));
        }
    }

    pub fn params(&self, params: Vec<(String, String)>) {
        if !params.is_empty() {
            let _ = self.queue.send(Message::Params(params));
        }
    }

    /// Sends the rest and closes the run with `status`; waits for that at most [`CLOSE_WAIT`].
    pub fn end(&self, status: Status) {
        if self.queue.send(Message::End(status)).is_err() {
            return;
        }
        if self.closed.recv_timeout(CLOSE_WAIT).is_err() {
            eprintln!(
                "warning: MLflow at {}: run {} was not closed within {} s; it may still show RUNNING",
                self.run.uri,
                self.run.run_id,
                CLOSE_WAIT.as_secs()
            );
        }
    }
}

pub fn millis(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// MLflow's key rule: letters, digits, `_ - . / space`; anything else becomes `_`.
pub fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn worker(api: Api, run_id: String, inbox: mpsc::Receiver<Message>, done: mpsc::Sender<()>) {
    let mut outbox = Outbox {
        api,
        run_id,
        metrics: Vec::new(),
        params: Vec::new(),
        warned: false,
    };
    let mut last = Instant::now();
    loop {
        let wait = FLUSH_EVERY.saturating_sub(last.elapsed());
        match inbox.recv_timeout(wait) {
            Ok(Message::Metrics(m)) => outbox.metrics.extend(m),
            Ok(Message::Params(p)) => outbox
                .params
                .extend(p.into_iter().map(|(k, v)| (k, truncated(v)))),
            Ok(Message::End(status)) => {
                outbox.close(status);
                let _ = done.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if last.elapsed() >= FLUSH_EVERY || outbox.metrics.len() >= METRICS_PER_BATCH {
            outbox.send();
            last = Instant::now();
        }
    }
}

/// A parameter value cut to the `PARAM_VALUE_CHARS` characters MLflow accepts.
fn truncated(v: String) -> String {
    if v.chars().count() > PARAM_VALUE_CHARS {
        v.chars().take(PARAM_VALUE_CHARS).collect()
    } else {
        v
    }
}

/// What the worker has yet to log to its run.
struct Outbox {
    api: Api,
    run_id: String,
    metrics: Vec<Metric>,
    params: Vec<(String, String)>,
    /// A failed batch was reported once; later failures are silent.
    warned: bool,
}

impl Outbox {
    /// Logs the pending params, then metrics, in batches of MLflow's limits; a failure warns once
    /// and drops them (training goes on).
    fn send(&mut self) {
        let result = self
            .params
            .chunks(PARAMS_PER_BATCH)
            .try_for_each(|chunk| self.api.log_batch(&self.run_id, &[], chunk))
            .and_then(|()| {
                self.metrics
                    .chunks(METRICS_PER_BATCH)
                    .try_for_each(|chunk| self.api.log_batch(&self.run_id, chunk, &[]))
            });
        if let Err(e) = result {
            if !self.warned {
                self.warned = true;
                eprintln!(
                    "warning: {e:#}; training goes on, these metrics are not logged to MLflow"
                );
            }
        }
        self.metrics.clear();
        self.params.clear();
    }

    /// Sends what is pending and ends the run as `status`.
    fn close(&mut self, status: Status) {
        self.send();
        let closed = self.api.post(
            "runs/update",
            &json!({
                "run_id": self.run_id,
                "status": status.name(),
                "end_time": millis(cggm_core::events::now()),
            }),
        );
        if let Err(e) = closed {
            eprintln!(
                "warning: {e:#}: the MLflow run was not closed as {}",
                status.name()
            );
        }
    }
}
