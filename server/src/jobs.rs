//! The job runner: a queue with a concurrency limit; each job is a child process of the `cggm`
//! binary (`cggm train` / `cggm infer` with `--events -`). Its stdout carries JSON-lines progress
//! events, which are stored (every point) and broadcast to live viewers; its stderr is the log.

use crate::db::{self, JobKind, JobState};
use crate::executor::{Executor, JobHost};
use crate::job_store;
use anyhow::Context;
use cggm_core::events::{Event, EventKind};
use serde::Serialize;
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{broadcast, Notify, Semaphore};

/// What live viewers receive: a stored progress event, or a change of the job's state.
#[derive(Clone, Debug, Serialize)]
pub struct LiveMessage {
    /// The event's sequence number; 0 for state changes (not stored as events).
    pub seq: i64,
    /// Event kind (`step`, `validation`, ...) or `state`.
    pub kind: String,
    /// JSON text.
    pub data: String,
}

#[derive(Clone)]
pub struct JobRunner {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: SqlitePool,
    /// Where jobs run: child processes (local) or Slurm batch jobs (see `crate::executor`).
    executor: crate::executor::Executor,
    cggm_bin: PathBuf,
    data_dir: PathBuf,
    slots: Semaphore,
    /// A job's log is rotated past this size (see [`cap_log`]).
    max_log_bytes: u64,
    cancels: Mutex<HashMap<i64, Arc<Notify>>>,
    /// The queued and running jobs, and the live channels of those that have viewers.
    live: Mutex<Live>,
    idle: broadcast::Sender<LiveMessage>,
    /// Jobs whose (resumed) trainer announced `run_started` and has not sent a step yet: its first
    /// step supersedes what a previous process stored from that step on (see `supersede`).
    restarted: Mutex<std::collections::HashSet<i64>>,
    /// `--max-jobs`: whether a job has the machine's cores to itself (see `omp_wait_policy`).
    max_jobs: usize,
    /// Variables every job gets (see `crate::tracking`).
    job_env: Vec<(String, String)>,
}

/// OpenMP's wait policy for a local job, and why. Spinning threads (`active`: they spin until
/// the next parallel region; libgomp's default spins ~ms, then sleeps) are the fastest when the
/// job has the cores to itself (`--max-jobs 1`; a whole 30-step cpu-small CGGM run with its data
/// loader, validation and test: 9.6-10.1 s active, 10.2-10.4 s libgomp's default, 13.8-15.9 s
/// passive); when jobs share the cores, spinning threads steal them from each other, so
/// `passive`. `OMP_WAIT_POLICY` in the server's environment overrides.
pub fn omp_wait_policy(max_jobs: usize) -> (String, &'static str) {
    match std::env::var("OMP_WAIT_POLICY") {
        Ok(set) if !set.trim().is_empty() => (set, "set in the server's environment"),
        _ if max_jobs <= 1 => (
            "active".into(),
            "--max-jobs 1: the job has the cores to itself",
        ),
        _ => ("passive".into(), "--max-jobs above 1: jobs share the cores"),
    }
}

/// A channel is made only when a viewer of a queued or running job connects (a queued job costs
/// an id in `active`, not a 1,024-message channel) and removed when the job finishes. Viewers of
/// any other job get a receiver of `idle`, which never sends, so that requests for unknown or
/// finished jobs leave nothing behind.
#[derive(Default)]
struct Live {
    active: std::collections::HashSet<i64>,
    channels: HashMap<i64, broadcast::Sender<LiveMessage>>,
}

/// How many live messages a slow viewer may fall behind before it catches up from the database.
const CHANNEL_CAPACITY: usize = 1024;

/// How long a cancelled job gets to stop after SIGTERM before it is killed.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl JobRunner {
    pub fn new(
        pool: SqlitePool,
        cggm_bin: PathBuf,
        data_dir: PathBuf,
        max_jobs: usize,
        executor: crate::executor::Executor,
        max_log_bytes: u64,
        job_env: Vec<(String, String)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                executor,
                cggm_bin,
                data_dir,
                slots: Semaphore::new(max_jobs.max(1)),
                max_log_bytes,
                cancels: Mutex::new(HashMap::new()),
                live: Mutex::new(Live::default()),
                idle: broadcast::channel(1).0,
                restarted: Mutex::default(),
                max_jobs,
                job_env,
            }),
        }
    }

    /// After a restart: Slurm jobs still known to Slurm are followed again; a local job's trainer
    /// that still runs is stopped; the other jobs that were running lost their process and are
    /// marked `interrupted` (their run folders and checkpoints stay); queued jobs are queued again.
    pub async fn recover(&self) -> anyhow::Result<()> {
        crate::executor::recover_running(&self.inner, &self.inner.executor, CANCEL_GRACE).await?;
        let queued = job_store::ids_in(&self.inner.pool, JobState::Queued).await?;
        for id in queued {
            self.enqueue(id);
        }
        Ok(())
    }

    /// Marks the job queued or running here: its viewers get a live channel from now on.
    fn activate(&self, job_id: i64) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .insert(job_id);
    }

    /// Starts the job when a slot is free.
    pub fn enqueue(&self, job_id: i64) {
        self.activate(job_id);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.clone().run(job_id).await {
                tracing::error!(job_id, error = ?e, "job runner error");
                let _ = inner
                    .finish(job_id, JobState::Failed, None, Some(format!("{e:#}")))
                    .await;
            }
        });
    }

    /// Cancels a queued or running job. Returns false when it had already finished.
    pub async fn cancel(&self, job_id: i64) -> crate::error::Result<bool> {
        if job_store::cancel_queued(&self.inner.pool, job_id).await? {
            self.inner.broadcast_state(job_id, JobState::Cancelled);
            self.inner.drop_channel(job_id);
            return Ok(true);
        }
        let notify = self
            .inner
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job_id)
            .cloned();
        match notify {
            Some(notify) => {
                notify.notify_one();
                Ok(true)
            }
            None => Ok(!db::job(&self.inner.pool, job_id).await?.is_finished()),
        }
    }

    /// A receiver of the job's live messages. Subscribe *before* reading the stored history, then
    /// skip live messages with `seq` at or below the last stored one. A job that is not queued or
    /// running has no channel, and none is made for it: its receiver never receives.
    pub fn subscribe(&self, job_id: i64) -> broadcast::Receiver<LiveMessage> {
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        if !live.active.contains(&job_id) {
            return self.inner.idle.subscribe();
        }
        live.channels
            .entry(job_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// How many live channels exist (queued and running jobs that have had a viewer); for tests
    /// and diagnostics.
    pub fn live_channels(&self) -> usize {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .channels
            .len()
    }

    /// Whether a job of this runner is queued here or running now (a job in the database marked
    /// running but not here is a leftover of a previous server).
    pub fn is_active(&self, job_id: i64) -> bool {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .contains(&job_id)
    }

    pub fn log_path(&self, job_id: i64) -> PathBuf {
        log_path(&self.inner.data_dir, job_id)
    }
}

/// The last `max` bytes of a file (empty when it does not exist), read from its end: a log of
/// gigabytes costs no more than its tail.
pub async fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let length = file.metadata().await?.len();
    file.seek(std::io::SeekFrom::Start(length.saturating_sub(max)))
        .await?;
    let mut tail = Vec::with_capacity(length.min(max) as usize);
    file.take(max).read_to_end(&mut tail).await?;
    Ok(tail)
}

/// How often a running job's log size is checked.
const LOG_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A log over `max` bytes has its last `max` bytes moved to `<log>.1` (replacing an older one)
/// and starts again empty: at most about twice `max` on disk, the newest output always kept. The
/// child appends (`O_APPEND`), so its next write lands at the start of the emptied file; what it
/// writes between the copy and the truncation (a moment) is lost, and the new log says where the
/// rest went.
fn cap_log(path: &Path, max: u64) {
    let over = std::fs::metadata(path).is_ok_and(|m| m.len() > max);
    if !over {
        return;
    }
    let rotated = rotated_log(path);
    let moved = (|| -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(max)))?;
        let mut older = std::fs::File::create(&rotated)?;
        std::io::copy(&mut std::io::Read::take(&mut file, max), &mut older)?;
        file.set_len(0)
    })();
    match moved {
        Ok(()) => {
            let note = format!(
                "[cggm serve: the log passed {} MiB; its last part before this line is in {}]\n",
                max / (1024 * 1024),
                rotated.file_name().unwrap_or_default().to_string_lossy()
            );
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
        }
        Err(e) => tracing::warn!(log = %path.display(), error = %e, "could not rotate a job's log"),
    }
}

/// Where [`cap_log`] keeps a log's earlier part: `job-N.log.1`.
pub fn rotated_log(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    path.with_file_name(name)
}

pub fn log_path(data_dir: &Path, job_id: i64) -> PathBuf {
    data_dir.join("logs").join(format!("job-{job_id}.log"))
}

/// The runner as its executors see it (see `crate::executor::host`).
impl JobHost for Inner {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn job_env(&self) -> &[(String, String)] {
        &self.job_env
    }

    fn log_path(&self, job_id: i64) -> PathBuf {
        log_path(&self.data_dir, job_id)
    }

    fn attach(&self, job_id: i64) -> Arc<Notify> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .insert(job_id);
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job_id)
            .or_default()
            .clone()
    }

    fn forget_cancel(&self, job_id: i64) {
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_id);
    }

    fn broadcast_state(&self, job_id: i64, state: JobState) {
        self.send_state_message(job_id, serde_json::json!({ "state": state.as_str() }));
    }

    fn send_state_detail(
        &self,
        job_id: i64,
        executor_state: &str,
        node: Option<&str>,
        stalled: bool,
    ) {
        let data = serde_json::json!({
            "state": JobState::Running.as_str(), "executor_state": executor_state,
            "node": node, "stalled": stalled,
        });
        self.send_state_message(job_id, data);
    }

    /// Stores an event (retried a few times) and sends it to live viewers. A database that
    /// refuses it costs that event its storage, logged, never the training.
    async fn store_event(&self, job_id: i64, seq: i64, event: &Event) {
        self.store_and_send(job_id, seq, event).await
    }

    async fn finish(
        &self,
        job_id: i64,
        state: JobState,
        code: Option<i64>,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        job_store::finish(&self.pool, job_id, state, code, error).await?;
        self.broadcast_state(job_id, state);
        self.drop_channel(job_id);
        Ok(())
    }
}

impl Inner {
    async fn run(self: Arc<Self>, job_id: i64) -> anyhow::Result<()> {
        // The local queue's limit; a cluster schedules its own jobs.
        let _slot = match self.executor {
            Executor::Local => Some(self.slots.acquire().await.context("job queue closed")?),
            Executor::Slurm(_) => None,
        };
        let job = db::job(&self.pool, job_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let args = command_args(&job)?;
        let log_file = self.open_log(job_id)?;
        let (cancel, created) = self.register_cancel(job_id);
        // Only a job still queued starts: one cancelled (or started by someone else) meanwhile
        // stays as it is, and no second trainer ever runs in its directory.
        if !job_store::claim(&self.pool, job_id).await? {
            // Cancelled meanwhile (its channel is gone already) or running in another task (whose
            // channel and notify stay).
            if created {
                self.forget_cancel(job_id);
            }
            return Ok(());
        }
        match &self.executor {
            Executor::Slurm(config) => {
                let config = config.clone();
                crate::executor::slurm::submit_and_follow(
                    self.clone(),
                    &config,
                    job_id,
                    args,
                    cancel,
                )
                .await
            }
            Executor::Local => self.run_local(&job, &args, log_file, cancel).await,
        }
    }

    /// The job's cancel signal, registered before its state changes: a cancel that sees `running`
    /// finds it (a notify sent before anyone waits is kept for the first waiter). One per job,
    /// shared with a duplicate task of the same job (resume, cancel, resume), which must not
    /// replace the running one's; `true` when this call made it.
    fn register_cancel(&self, job_id: i64) -> (Arc<Notify>, bool) {
        let mut cancels = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        let created = !cancels.contains_key(&job_id);
        let cancel = cancels.entry(job_id).or_default().clone();
        (cancel, created)
    }

    /// Runs a claimed job as a child process here, follows its events to its end and finishes it.
    async fn run_local(
        &self,
        job: &db::Job,
        args: &[String],
        log_file: std::fs::File,
        cancel: Arc<Notify>,
    ) -> anyhow::Result<()> {
        let job_id = job.id;
        let spawned = self
            .child_command(&log_file)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.forget_cancel(job_id);
                let reason = format!("could not start {}: {e}", self.cggm_bin.display());
                return self
                    .finish(job_id, JobState::Failed, None, Some(reason))
                    .await;
            }
        };
        let _parent_pipe = child.stdin.take();
        if let Some(pid) = child.id() {
            if let Err(e) = crate::executor::local::record(&self.pool, job_id, pid).await {
                tracing::warn!(job_id, error = %e, "could not record the job's process id");
            }
        }
        tracing::info!(job_id, kind = %job.kind, ?args, pid = child.id(), "job started");
        self.broadcast_state(job_id, JobState::Running);

        let stdout = child.stdout.take().context("child stdout")?;
        let (failure, cancelled) = self.follow_stdout(job_id, stdout, &cancel).await?;
        let status = if cancelled {
            stop_gracefully(&mut child).await?
        } else {
            child.wait().await?
        };
        cap_log(&log_path(&self.data_dir, job_id), self.max_log_bytes);
        self.forget_cancel(job_id);
        let code = status.code().map(i64::from);
        let (state, error) = outcome(cancelled, status, failure);
        tracing::info!(job_id, state = state.as_str(), "job finished");
        self.finish(job_id, state, code, error).await
    }

    /// The `cggm` command of a local job, with its environment; the OpenMP policy it gets is noted
    /// in its log.
    fn child_command(&self, log_file: &std::fs::File) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.cggm_bin);
        let (policy, why) = omp_wait_policy(self.max_jobs);
        command.env("OMP_WAIT_POLICY", &policy);
        {
            use std::io::Write;
            let mut log = log_file;
            let _ = writeln!(log, "cggm serve: OMP_WAIT_POLICY={policy} ({why})");
        }
        // A job needs no access to the server: its token stays with the server.
        command
            .env_remove("CGGM_TOKEN")
            .env_remove("CGGM_TOKEN_FILE");
        // The child's stdin is a pipe the server never writes to: when the server dies (even by
        // SIGKILL) the pipe closes and the trainer exits (see `cggm`'s main).
        command.env(cggm_core::process::PARENT_PIPE_ENV, "1");
        command.envs(self.job_env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Stores every event on the child's stdout until it closes or the job is cancelled, keeping
    /// the log under its cap meanwhile: the trainer's own failure reason (if it sent one) and
    /// whether it was cancelled.
    async fn follow_stdout(
        &self,
        job_id: i64,
        stdout: tokio::process::ChildStdout,
        cancel: &Notify,
    ) -> anyhow::Result<(Option<String>, bool)> {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?")
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?;
        let mut failure: Option<String> = None;
        let log = log_path(&self.data_dir, job_id);
        let mut log_check = tokio::time::interval(LOG_CHECK_EVERY);
        loop {
            tokio::select! {
                _ = log_check.tick() => cap_log(&log, self.max_log_bytes),
                line = lines.next_line() => {
                    let Some(line) = line? else { return Ok((failure, false)) };
                    match serde_json::from_str::<Event>(&line) {
                        Ok(event) => {
                            if let Event::Failed { reason, .. } = &event {
                                failure = Some(reason.clone());
                            }
                            seq += 1;
                            self.store_event(job_id, seq, &event).await;
                        }
                        Err(_) => tracing::debug!(job_id, %line, "non-event line on a job's stdout"),
                    }
                }
                _ = cancel.notified() => return Ok((failure, true)),
            }
        }
    }

    fn open_log(&self, job_id: i64) -> anyhow::Result<std::fs::File> {
        let path = log_path(&self.data_dir, job_id);
        std::fs::create_dir_all(path.parent().context("log folder")?)?;
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?)
    }

    /// [`JobHost::store_event`].
    async fn store_and_send(&self, job_id: i64, seq: i64, event: &Event) {
        let value = match serde_json::to_value(event) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(job_id, seq, error = %e, "event not serialisable; skipped");
                return;
            }
        };
        let kind = event.kind().as_str().to_string();
        let time = value["time"].as_f64().unwrap_or_else(db::now);
        let data = value.to_string();
        match event.kind() {
            EventKind::RunStarted => {
                self.restarted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(job_id);
            }
            EventKind::Step => {
                let first = self
                    .restarted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&job_id);
                if first {
                    self.supersede(job_id, seq, &value).await;
                }
            }
            _ => {}
        }
        let mut attempt = 0;
        loop {
            let stored = sqlx::query(
                "INSERT INTO events (job_id, seq, kind, time, data) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(job_id)
            .bind(seq)
            .bind(&kind)
            .bind(time)
            .bind(&data)
            .execute(&self.pool)
            .await;
            match stored {
                Ok(_) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(job_id, seq, attempt, error = %e, "storing an event failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(job_id, seq, error = %e, "event could not be stored; training continues");
                    break;
                }
            }
        }
        self.send(job_id, LiveMessage { seq, kind, data });
    }

    /// A resumed trainer restarts from its last checkpoint and sends again the steps (and the
    /// validations and checkpoints of the epochs) a cancelled or killed process had already sent:
    /// those stored rows are deleted when the first new step arrives, so every step is stored once
    /// and the pages count and draw it once.
    async fn supersede(&self, job_id: i64, seq: i64, first_step: &serde_json::Value) {
        let (Some(step), Some(epoch)) = (first_step["step"].as_i64(), first_step["epoch"].as_i64())
        else {
            return;
        };
        let deleted = sqlx::query(
            "DELETE FROM events WHERE job_id = ? AND seq < ? AND (
                 (kind = ? AND json_extract(data, '$.step') >= ?)
                 OR (kind IN (?, ?, ?) AND json_extract(data, '$.epoch') >= ?))",
        )
        .bind(job_id)
        .bind(seq)
        .bind(EventKind::Step.as_str())
        .bind(step)
        .bind(EventKind::Validation.as_str())
        .bind(EventKind::CheckpointSaved.as_str())
        .bind(EventKind::BalanceDiagnostics.as_str())
        .bind(epoch)
        .execute(&self.pool)
        .await;
        match deleted {
            Ok(done) if done.rows_affected() > 0 => tracing::info!(
                job_id,
                from_step = step,
                rows = done.rows_affected(),
                "resumed: events the previous process sent from this step on are replaced"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(job_id, error = %e, "could not remove superseded events"),
        }
    }

    /// A live `state` message (not stored: it carries no sequence number).
    fn send_state_message(&self, job_id: i64, data: serde_json::Value) {
        self.send(
            job_id,
            LiveMessage {
                seq: 0,
                kind: "state".into(),
                data: data.to_string(),
            },
        );
    }

    fn send(&self, job_id: i64, message: LiveMessage) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = live.channels.get(&job_id) {
            let _ = sender.send(message);
        }
    }

    /// The job is no longer queued or running here: its channel (if any) and its mark go.
    fn drop_channel(&self, job_id: i64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.channels.remove(&job_id);
        live.active.remove(&job_id);
    }
}

/// How a local job ended: cancelled, succeeded (exit 0 and no `failed` event), or failed with the
/// trainer's reason (or the exit code or signal when it gave none).
fn outcome(
    cancelled: bool,
    status: std::process::ExitStatus,
    failure: Option<String>,
) -> (JobState, Option<String>) {
    if cancelled {
        return (
            JobState::Cancelled,
            Some("cancelled by the user".to_string()),
        );
    }
    if status.success() && failure.is_none() {
        return (JobState::Succeeded, None);
    }
    let reason = failure.unwrap_or_else(|| match status.code() {
        Some(c) => format!("the process exited with code {c}; see the log"),
        None => "the process was killed by a signal (out of memory?); see the log".into(),
    });
    (JobState::Failed, Some(reason))
}

/// Stops a cancelled job: SIGTERM first, so that it can end what it is writing, then SIGKILL
/// after [`CANCEL_GRACE`].
async fn stop_gracefully(
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        // `kill` the command: sending a signal directly needs unsafe code, which the workspace
        // denies.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if let Ok(status) = tokio::time::timeout(CANCEL_GRACE, child.wait()).await {
            return status;
        }
    }
    let _ = child.start_kill();
    child.wait().await
}

/// The `cggm` arguments of a stored job. A training job's configuration is the `request.json`
/// the server wrote into its run directory when it was created (see `routes::jobs::create`).
fn command_args(job: &db::Job) -> anyhow::Result<Vec<String>> {
    let params = job.params_json();
    let text = |key: &str| params[key].as_str().map(str::to_string);
    let mut args: Vec<String> = Vec::new();
    match job.kind {
        JobKind::Train => {
            let run = job.run_dir();
            args.push("train".into());
            if params["resume"] == serde_json::Value::Bool(true) {
                // The run's own config.json is the configuration; nothing may change it.
                args.push("--resume".into());
            } else {
                let request = run.request();
                anyhow::ensure!(
                    request.is_file(),
                    "{} is missing (the job was queued by an older version of the server): launch the run again",
                    request.display()
                );
                args.extend(["--config".into(), request.display().to_string()]);
            }
            args.extend([
                "--out".into(),
                run.root().display().to_string(),
                "--events".into(),
                "-".into(),
            ]);
        }
        JobKind::Infer => {
            args.extend([
                "infer".into(),
                "--checkpoint".into(),
                text("checkpoint").context("params.checkpoint")?,
            ]);
            for case in params["cases"].as_array().context("params.cases")? {
                args.extend([
                    "--case".into(),
                    case.as_str().context("case path")?.to_string(),
                ]);
            }
            let out = PathBuf::from(&job.out_dir);
            std::fs::create_dir_all(&out)?;
            args.extend(["--out".into(), out.join("seg.nii.gz").display().to_string()]);
            args.extend([
                "--summary".into(),
                out.join("summary.json").display().to_string(),
            ]);
            args.extend(["--events".into(), "-".into()]);
            if let Some(device) = text("device") {
                args.extend(["--device".into(), device]);
            }
        }
    }
    Ok(args)
}
