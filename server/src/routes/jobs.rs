//! Training jobs: launch, list, cancel, logs, stored events and the live event stream (SSE), and
//! the checkpoints finished runs left.

use crate::db::{self, Job, JobKind, JobState, StoredEvent};
use crate::error::{Error, Result};
use crate::feature_datasets::DatasetFacts;
use crate::jobs::LiveMessage;
use crate::run_labels::RunLabels;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use cggm_core::request::{RunOptions, Vocabulary};
use cggm_core::rundir::CheckpointName;
use cggm_core::task::TaskKind;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list).post(create))
        .route("/jobs/{id}", get(show).patch(update_labels))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/resume", post(resume))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/stream", get(stream_events))
        .route("/jobs/{id}/log", get(log))
        .route("/jobs/{id}/metrics", get(metrics))
        .route("/checkpoints", get(checkpoints))
        .route("/vocabulary", get(vocabulary))
}

#[derive(Debug, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    pub params: serde_json::Value,
    /// The best (or last) validation event of a training job.
    pub best_validation: Option<serde_json::Value>,
    /// Where the job runs or ran last: executor, pid or Slurm job id, node and state.
    pub execution: Option<crate::executor::Execution>,
    /// The run's name, notes and tags (`name`, `notes`, `tags`).
    #[serde(flatten)]
    pub labels: RunLabels,
}

pub async fn job_view(state: &AppState, job: Job) -> Result<JobView> {
    let best_validation = if job.kind == JobKind::Train {
        db::best_validation(&state.pool, job.id).await?
    } else {
        None
    };
    let execution = crate::executor::current(&state.pool, job.id).await?;
    let labels = crate::run_labels::load(&state.pool, job.id).await?;
    Ok(JobView {
        execution,
        labels,
        params: job.params_json(),
        job,
        best_validation,
    })
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub kind: Option<JobKind>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>> {
    let mut views = Vec::new();
    for job in db::jobs(&state.pool, q.kind).await? {
        views.push(job_view(&state, job).await?);
    }
    Ok(Json(views))
}

async fn show(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<JobView>> {
    let job = db::job(&state.pool, id).await?;
    Ok(Json(job_view(&state, job).await?))
}

/// `PATCH /api/jobs/N` `{"name": ..., "notes": ..., "tags": [...]}`: changes the labels given
/// (the others stay) of a training run, in any state.
async fn update_labels(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(mut body): Json<serde_json::Value>,
) -> Result<Json<JobView>> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Train {
        return Err(Error::Unprocessable(format!(
            "job {id} is a prediction: only training runs have a name, notes and tags"
        )));
    }
    let Some(object) = body.as_object_mut() else {
        return Err(Error::Unprocessable(
            "send a JSON object: {\"name\": ..., \"notes\": ..., \"tags\": [...]}".into(),
        ));
    };
    let mut labels = crate::run_labels::load(&state.pool, id).await?;
    labels.take_from(object)?;
    if let Some(unknown) = object.keys().next() {
        return Err(Error::Unprocessable(format!(
            "{unknown} cannot be changed after launch: only name, notes and tags can"
        )));
    }
    let mut conn = state.pool.acquire().await?;
    crate::run_labels::save(&mut conn, id, &labels).await?;
    Ok(Json(job_view(&state, job).await?))
}

/// `POST /api/jobs`: `{"dataset_id": N, ...run options}` (the trainer's [`RunOptions`]: every
/// `cggm train` knob, under its JSON name), plus `"init_from": <run id>` to start from the
/// weights of a finished run ([`crate::fine_tune`]). The server builds the run configuration with the
/// trainer's own types and validation and answers 422 with the reason before anything is queued;
/// the configuration goes to the child as `request.json` in the run directory.
pub async fn create(
    State(state): State<AppState>,
    Json(mut body): Json<serde_json::Value>,
) -> Result<(StatusCode, Json<JobView>)> {
    // The run's name, notes and tags are not run options: taken out before those are checked.
    let mut labels = RunLabels::default();
    if let Some(object) = body.as_object_mut() {
        labels.take_from(object)?;
    }
    let run = check_train_request(&state, body).await?;
    let mut tx = state.pool.begin().await?;
    let id = insert_train_job(&state, &mut tx, &run).await?;
    if labels != RunLabels::default() {
        crate::run_labels::save(&mut tx, id, &labels).await?;
    }
    tx.commit().await?;
    state.runner.enqueue(id);
    let job = db::job(&state.pool, id).await?;
    Ok((StatusCode::CREATED, Json(job_view(&state, job).await?)))
}

/// A training request checked against its dataset and this server, ready to be stored.
pub struct TrainRequest {
    dataset_id: i64,
    /// What the jobs table stores (`params`).
    params: serde_json::Value,
    /// The run's configuration, written as the run directory's `request.json`.
    config: cggm_core::config::TrainConfig,
}

/// The run request's `dataset_id`, taken out of it (the run options do not hold it).
fn take_dataset_id(object: &mut serde_json::Map<String, serde_json::Value>) -> Result<i64> {
    match object.remove("dataset_id") {
        Some(v) => v.as_i64().ok_or_else(|| {
            Error::Unprocessable(format!(
                "dataset_id must be a dataset's number (see GET /api/datasets), got {v}"
            ))
        }),
        None => Err(Error::Unprocessable(
            "dataset_id is missing: choose a dataset (GET /api/datasets lists them)".into(),
        )),
    }
}

/// Checks a `POST /api/jobs` body (see [`create`]) without storing anything: a comparison checks
/// every run of its grid this way before it stores any.
pub async fn check_train_request(
    state: &AppState,
    mut body: serde_json::Value,
) -> Result<TrainRequest> {
    let Some(object) = body.as_object_mut() else {
        return Err(Error::Unprocessable(
            "the run request must be a JSON object: {\"dataset_id\": N, \"method\": ..., ...}"
                .into(),
        ));
    };
    let dataset_id = take_dataset_id(object)?;
    // A finished run's id, resolved below once the new run's network is known.
    let init_from = object.remove("init_from").filter(|v| !v.is_null());
    let options = RunOptions::from_json(&body).map_err(|e| Error::Unprocessable(e.to_string()))?;
    let dataset = db::dataset(&state.pool, dataset_id).await?;
    let facts = DatasetFacts::of(&dataset);
    if facts.samples == 0 {
        return Err(Error::Unprocessable(format!(
            "dataset {} has no valid case to train on: fix the problems its page lists, or choose another",
            dataset.name
        )));
    }
    let mut config = options
        .to_config(std::path::Path::new(&dataset.path))
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    check_device(state, &config.device)?;
    // A feature preset trains the dataset's own task (as `cggm train` does), when it can.
    config.train_task(facts.task).map_err(|e| {
        Error::Unprocessable(format!(
            "dataset {} holds {} data, but {e}",
            dataset.name, facts.task
        ))
    })?;
    if let Some(source) = &init_from {
        config.init_from =
            Some(crate::fine_tune::source_folder(&state.pool, source, &config).await?);
    }
    let mut params = serde_json::json!({
        "dataset": dataset.name,
        "data": dataset.path,
        "task": facts.task,
        "method": config.method,
        "preset": config.preset,
        "epochs": config.epochs,
        "options": options,
    });
    if let Some(source) = init_from {
        params["init_from"] = source;
    }
    Ok(TrainRequest {
        dataset_id: dataset.id,
        params,
        config,
    })
}

/// Stores a checked training request as a queued job inside `tx` and writes its `request.json`;
/// returns the job's id. Nothing is enqueued: the caller enqueues once `tx` is committed. If
/// `tx` is rolled back, the job's run folder may be left with its request only; a folder without
/// a job is never read.
pub async fn insert_train_job(
    state: &AppState,
    tx: &mut sqlx::SqliteConnection,
    run: &TrainRequest,
) -> Result<i64> {
    let id = insert_job_in(
        state,
        tx,
        JobKind::Train,
        &run.params,
        Some(run.dataset_id),
        None,
        None,
    )
    .await?;
    let out_dir: String = sqlx::query_scalar("SELECT out_dir FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    cggm_core::rundir::RunDir::new(&out_dir)
        .write_request(&run.config)
        .map_err(|e| Error::Internal(e.context("writing the run's request.json")))?;
    Ok(id)
}

/// `GET /api/vocabulary`: every list the new-run form offers, from the trainer's own types.
async fn vocabulary(State(state): State<AppState>) -> Json<Vocabulary> {
    Json(Vocabulary::current(state.config.cuda_devices))
}

/// The device of a job exists where the job will run: on this machine with the local executor (the
/// trainer would fail at once otherwise); with Slurm only its form is checked (the node decides).
pub fn check_device(state: &AppState, device: &str) -> Result<()> {
    let checked = match state.config.executor {
        crate::executor::Executor::Local => {
            cggm_core::request::check_device_present(device, state.config.cuda_devices)
        }
        crate::executor::Executor::Slurm(_) => cggm_core::request::check_device_spec(device),
    };
    checked.map_err(|e| Error::Unprocessable(format!("device: {e}")))
}

/// Jobs waiting in the queue now.
pub async fn queued_jobs(state: &AppState) -> Result<i64> {
    Ok(crate::job_store::count(&state.pool, JobState::Queued).await?)
}

/// The answer when the queue holds `--max-queued-jobs` jobs.
pub fn queue_full(state: &AppState, adding: usize) -> Error {
    let max = state.config.bounds.max_queued_jobs;
    Error::Unavailable(format!(
        "the job queue is full: at most {max} jobs may wait (--max-queued-jobs) and this request \
         adds {adding}; wait for queued jobs to start, or cancel some"
    ))
}

/// Stores a queued job; its output folder is `runs/job-<id>` or `predictions/job-<id>`. Refused
/// (503) when the queue already holds `--max-queued-jobs` jobs: the count and the insert are one
/// statement, so concurrent requests cannot pass the limit together.
pub async fn insert_job(
    state: &AppState,
    kind: JobKind,
    params: &serde_json::Value,
    dataset_id: Option<i64>,
    study_id: Option<i64>,
    checkpoint_job_id: Option<i64>,
) -> Result<i64> {
    let mut tx = state.pool.begin().await?;
    let id = insert_job_in(
        state,
        &mut tx,
        kind,
        params,
        dataset_id,
        study_id,
        checkpoint_job_id,
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// [`insert_job`] inside a transaction the caller commits.
pub async fn insert_job_in(
    state: &AppState,
    tx: &mut sqlx::SqliteConnection,
    kind: JobKind,
    params: &serde_json::Value,
    dataset_id: Option<i64>,
    study_id: Option<i64>,
    checkpoint_job_id: Option<i64>,
) -> Result<i64> {
    let job = crate::job_store::NewJob {
        kind,
        params,
        dataset_id,
        study_id,
        checkpoint_job_id,
    };
    let max_queued = state.config.bounds.max_queued_jobs as i64;
    let Some(id) = crate::job_store::insert_queued(&mut *tx, job, max_queued).await? else {
        return Err(queue_full(state, 1));
    };
    let out_dir = state
        .data_dir()
        .join(kind.folder())
        .join(format!("job-{id}"));
    sqlx::query("UPDATE jobs SET out_dir = ? WHERE id = ?")
        .bind(out_dir.display().to_string())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>> {
    let job = db::job(&state.pool, id).await?;
    if job.is_finished() || !state.runner.cancel(id).await? {
        return Err(Error::Conflict(format!(
            "job {id} has already finished ({})",
            job.state
        )));
    }
    Ok(Json(serde_json::json!({ "id": id, "cancelling": true })))
}

/// Queues an interrupted, failed or cancelled training run again with `cggm train --resume`: it
/// continues from its last checkpoint and appends to the same event history.
async fn resume(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<JobView>> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Train || !job.state.is_resumable() {
        return Err(Error::Conflict(format!(
            "job {id} is {} {}: only a stopped training run can be resumed",
            job.state, job.kind
        )));
    }
    // Stopped before its first checkpoint: it starts again from step 0 in its own run folder
    // (as nnU-Net's `--c` does); its first step then replaces the events stored before.
    let from_checkpoint = job.run_dir().has_weights(CheckpointName::Last);
    let mut params = job.params_json();
    params["resume"] = from_checkpoint.into();
    let max_queued = state.config.bounds.max_queued_jobs as i64;
    let requeued =
        crate::job_store::requeue(&state.pool, id, job.state, &params, max_queued).await?;
    if !requeued {
        if queued_jobs(&state).await? >= state.config.bounds.max_queued_jobs as i64 {
            return Err(queue_full(&state, 1));
        }
        return Err(Error::Conflict(format!("job {id} changed state meanwhile")));
    }
    state.runner.enqueue(id);
    let job = db::job(&state.pool, id).await?;
    Ok(Json(job_view(&state, job).await?))
}

/// The most events one request returns (`limit` is capped to it; it is also the default).
pub const EVENTS_PAGE_MAX: i64 = 10_000;
/// How many stored events the live stream replays on connect unless `history` says otherwise;
/// older ones are paged in through `/events?before=`.
pub const STREAM_HISTORY_DEFAULT: i64 = 2_000;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Only events with a larger sequence number.
    #[serde(default)]
    pub after: i64,
    /// Only events with a smaller sequence number; the page is then the last `limit` of them
    /// (for paging backwards from what the live stream sent).
    pub before: Option<i64>,
    /// At most this many events (default and maximum [`EVENTS_PAGE_MAX`]).
    pub limit: Option<i64>,
    /// Only events of this kind (step, validation, ...).
    pub kind: Option<String>,
}

/// A page size from the query: at least 1, at most [`EVENTS_PAGE_MAX`].
fn page_limit(limit: Option<i64>, default: i64) -> i64 {
    limit.unwrap_or(default).clamp(1, EVENTS_PAGE_MAX)
}

fn event_json(e: &StoredEvent) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(&e.data).unwrap_or_default();
    value["seq"] = e.seq.into();
    value
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<serde_json::Value>>> {
    db::job(&state.pool, id).await?;
    let limit = page_limit(q.limit, EVENTS_PAGE_MAX);
    let rows =
        db::events_page(&state.pool, id, q.after, q.before, q.kind.as_deref(), limit).await?;
    Ok(Json(rows.iter().map(event_json).collect()))
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// How many of the newest stored events to replay on connect (default
    /// [`STREAM_HISTORY_DEFAULT`], at most [`EVENTS_PAGE_MAX`]).
    pub history: Option<i64>,
    /// Start after this event (the page has loaded the history up to it through `/events`); the
    /// `Last-Event-ID` header of a reconnecting EventSource takes precedence.
    pub after: Option<i64>,
}

fn sse_stored(e: &StoredEvent) -> SseEvent {
    SseEvent::default()
        .event(&e.kind)
        .id(e.seq.to_string())
        .data(&e.data)
}

fn sse_state(job: &Job) -> SseEvent {
    let data = serde_json::json!({ "state": job.state, "error": job.error }).to_string();
    SseEvent::default().event("state").data(data)
}

/// Server-Sent Events: the newest stored events (at most `history`, after `Last-Event-ID` when
/// given), its state, then live events until the job finishes (a final `state` event ends the
/// stream). When older events were left out, a `history` event comes first:
/// `{"truncated": true, "before": <first seq sent>}` — `/events?before=<seq>` pages them in.
async fn stream_events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // Subscribe first, then read: nothing falls between the stored history and the live feed.
    let receiver = state.runner.subscribe(id);
    let job = db::job(&state.pool, id).await?;
    // Held as long as the stream is open (it moves into the stream below).
    let permit = state.gates.open_stream(id)?;
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(q.after)
        .unwrap_or(0);
    let keep = page_limit(q.history, STREAM_HISTORY_DEFAULT);
    let (initial, last) = stored_history(&state, &job, resume_after, keep).await?;
    let feed = LiveFeed {
        rx: receiver,
        last,
        done: job.is_finished(),
        pool: state.pool.clone(),
        id,
    };
    let live = stream::unfold(feed, LiveFeed::next).flat_map(stream::iter);
    let all = stream::iter(initial).chain(live).map(move |event| {
        let _open = &permit;
        Ok(event)
    });
    Ok(Sse::new(all).keep_alive(KeepAlive::default()))
}

/// The events stored after `resume_after` (at most `keep`, with a `history` event saying what
/// was left out), then the job's state; and the last event's number.
async fn stored_history(
    state: &AppState,
    job: &Job,
    resume_after: i64,
    keep: i64,
) -> Result<(Vec<SseEvent>, i64)> {
    let mut history = db::events_page(
        &state.pool,
        job.id,
        resume_after,
        Some(i64::MAX),
        None,
        keep + 1,
    )
    .await?;
    let mut initial: Vec<SseEvent> = Vec::new();
    if history.len() as i64 > keep {
        history.remove(0);
        let before = history.first().map_or(0, |e| e.seq);
        let data = serde_json::json!({ "truncated": true, "before": before }).to_string();
        initial.push(SseEvent::default().event("history").data(data));
    }
    let last = history.last().map_or(resume_after, |e| e.seq);
    // The state follows the history: a client that closes on a final state has drawn it all.
    initial.extend(history.iter().map(sse_stored));
    initial.push(sse_state(job));
    Ok((initial, last))
}

/// The live part of a job's event stream: what the runner broadcasts after event `last`, until
/// the job ends (`done`).
struct LiveFeed {
    rx: tokio::sync::broadcast::Receiver<LiveMessage>,
    last: i64,
    done: bool,
    pool: sqlx::SqlitePool,
    id: i64,
}

impl LiveFeed {
    /// The next events to send, or `None` once the job has ended.
    async fn next(mut self) -> Option<(Vec<SseEvent>, Self)> {
        if self.done {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Ok(LiveMessage { kind, data, .. }) if kind == "state" => {
                    let (out, terminal) = self.on_state(data).await;
                    self.done = terminal;
                    return Some((out, self));
                }
                Ok(message) if message.seq <= self.last => continue,
                Ok(message) => {
                    self.last = message.seq;
                    let event = SseEvent::default()
                        .event(&message.kind)
                        .id(message.seq.to_string())
                        .data(&message.data);
                    return Some((vec![event], self));
                }
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => {
                    // A slow viewer (or a finished job): catch up from the database.
                    let (out, finished) = self.catch_up().await;
                    if finished {
                        self.done = true;
                        return Some((out, self));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((out, self));
                }
            }
        }
    }

    /// A state message: sent as it is, or, when it is a final state, after anything stored since
    /// the last live message and as the stored job's state; whether it was final.
    async fn on_state(&self, data: String) -> (Vec<SseEvent>, bool) {
        let terminal = serde_json::from_str::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v["state"].as_str().and_then(JobState::parse))
            .is_some_and(JobState::is_terminal);
        let mut out = Vec::new();
        if terminal {
            // Anything stored after the last live message (none, normally).
            if let Ok(rest) = db::events(&self.pool, self.id, self.last, None).await {
                out.extend(rest.iter().map(sse_stored));
            }
            match db::job(&self.pool, self.id).await {
                Ok(job) => out.push(sse_state(&job)),
                Err(_) => out.push(SseEvent::default().event("state").data(data)),
            }
        } else {
            out.push(SseEvent::default().event("state").data(data));
        }
        (out, terminal)
    }

    /// The events stored since the last one sent, and the job's state when it has ended (or is
    /// gone); whether it has.
    async fn catch_up(&mut self) -> (Vec<SseEvent>, bool) {
        let rest = db::events(&self.pool, self.id, self.last, None)
            .await
            .unwrap_or_default();
        self.last = rest.last().map_or(self.last, |e| e.seq);
        let job = db::job(&self.pool, self.id).await.ok();
        let finished = job.as_ref().is_none_or(Job::is_finished);
        let mut out: Vec<SseEvent> = rest.iter().map(sse_stored).collect();
        if finished {
            if let Some(job) = &job {
                out.push(sse_state(job));
            }
        }
        (out, finished)
    }
}

/// The job's log (the child's stderr), at most its last 512 KiB.
async fn log(State(state): State<AppState>, Path(id): Path<i64>) -> Result<impl IntoResponse> {
    db::job(&state.pool, id).await?;
    const TAIL: u64 = 512 * 1024;
    let path = state.runner.log_path(id);
    let mut tail = crate::jobs::read_tail(&path, TAIL).await?;
    // Just after a rotation the newest log is short: the rest of the tail is in the older part.
    if (tail.len() as u64) < TAIL {
        let rotated = crate::jobs::rotated_log(&path);
        let older = crate::jobs::read_tail(&rotated, TAIL - tail.len() as u64).await?;
        tail = [older, tail].concat();
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        String::from_utf8_lossy(&tail).into_owned(),
    ))
}

/// The run's `metrics.json` (its report: best validation and test scores, and for
/// classification the confusion matrix, for regression the predicted-vs-true pairs).
async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != JobKind::Train {
        return Err(Error::NotFound(format!(
            "metrics of job {id} (not a training run)"
        )));
    }
    job.run_dir()
        .read_metrics()
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("metrics of run {id} (it has not finished)")))
}

#[derive(Debug, Serialize)]
pub struct CheckpointView {
    pub job_id: i64,
    pub state: JobState,
    pub task: TaskKind,
    pub method: String,
    pub preset: String,
    pub dataset: String,
    pub created_at: f64,
    pub best_checkpoint: bool,
    pub last_checkpoint: bool,
    pub best_validation: Option<serde_json::Value>,
    /// The run's `metrics.json` (best validation and test scores; for classification the
    /// confusion matrix, for regression the predicted-vs-true pairs).
    pub metrics: Option<serde_json::Value>,
}

/// The task a training job trains (segmentation for jobs stored before tasks existed).
pub fn job_task(params: &serde_json::Value) -> TaskKind {
    serde_json::from_value(params["task"].clone()).unwrap_or_default()
}

/// Every training run that left a checkpoint (finished, or interrupted after saving one).
pub async fn checkpoint_list(state: &AppState) -> Result<Vec<CheckpointView>> {
    let mut out = Vec::new();
    for job in db::jobs(&state.pool, Some(JobKind::Train)).await? {
        let run = job.run_dir();
        let best = run.has_weights(CheckpointName::Best);
        let last = run.has_weights(CheckpointName::Last);
        if !best && !last {
            continue;
        }
        let params = job.params_json();
        out.push(CheckpointView {
            job_id: job.id,
            state: job.state,
            task: job_task(&params),
            method: params["method"].as_str().unwrap_or_default().into(),
            preset: params["preset"].as_str().unwrap_or_default().into(),
            dataset: params["dataset"].as_str().unwrap_or_default().into(),
            created_at: job.created_at,
            best_checkpoint: best,
            last_checkpoint: last,
            best_validation: db::best_validation(&state.pool, job.id).await?,
            metrics: run.read_metrics(),
        });
    }
    Ok(out)
}

async fn checkpoints(State(state): State<AppState>) -> Result<Json<Vec<CheckpointView>>> {
    Ok(Json(checkpoint_list(&state).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary lists every job state with its flags, and the pages take them from there:
    /// no script or template retypes a list of states (the old `["queued", "running"]` and
    /// `state != "queued" && ...` fail this), and the scripts read `job_states`.
    #[test]
    fn the_pages_take_the_job_states_from_the_vocabulary() {
        let vocabulary = serde_json::to_value(Vocabulary::current(0)).unwrap();
        let listed: Vec<(String, bool, bool)> = vocabulary["job_states"]
            .as_array()
            .expect("job_states")
            .iter()
            .map(|s| {
                let flag = |key: &str| s[key].as_bool().unwrap();
                let name = s["name"].as_str().unwrap().to_string();
                (name, flag("terminal"), flag("resumable"))
            })
            .collect();
        let expected: Vec<(String, bool, bool)> = JobState::ALL
            .iter()
            .map(|s| (s.to_string(), s.is_terminal(), s.is_resumable()))
            .collect();
        assert_eq!(listed, expected);

        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
        let mut files = Vec::new();
        for folder in ["static", "templates"] {
            for entry in std::fs::read_dir(web.join(folder)).unwrap() {
                let path = entry.unwrap().path();
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("js" | "html")
                ) {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 5, "{files:?}");
        // `failed` is an event's name as well, and one page asks for `succeeded` by name; a list
        // of states (two quoted names side by side) or any other state's name is a retyped list.
        let mut found = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            for state in JobState::ALL {
                let quoted = format!("\"{state}\"");
                let named = !matches!(state, JobState::Failed | JobState::Succeeded)
                    && text.contains(&quoted);
                let listed = text.contains(&format!("{quoted}, \""))
                    || text.contains(&format!("\", {quoted}"))
                    || text.contains(&format!("[{quoted}"));
                if named || listed {
                    found.push(format!("{} names {quoted}", path.display()));
                }
            }
        }
        assert!(found.is_empty(), "{found:#?}");
        let app = std::fs::read_to_string(web.join("static/app.js")).unwrap();
        assert!(
            app.contains("job_states"),
            "app.js reads the vocabulary's job_states"
        );
    }
}
