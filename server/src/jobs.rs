//! The job runner: a queue with a concurrency limit; each job is a child process of the `cggm`
//! binary (`cggm train` / `cggm infer` with `--events -`). Its stdout carries JSON-lines progress
//! events, which are stored (every point) and broadcast to live viewers; its stderr is the log.

use crate::db::{self, JobKind, JobState};
use anyhow::Context;
use cggm_core::events::Event;
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
        crate::executor::recover_running(self, CANCEL_GRACE).await?;
        let queued: Vec<(i64,)> =
            sqlx::query_as("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id")
                .fetch_all(&self.inner.pool)
                .await?;
        for (id,) in queued {
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
        let queued = sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'")
            .bind(db::now())
            .bind(job_id)
            .execute(&self.inner.pool)
            .await?;
        if queued.rows_affected() == 1 {
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

    /// Makes a running job live again (active, so that viewers get a channel, and its cancel
    /// notify), for an executor that re-attaches to it after a restart.
    pub(crate) fn attach(&self, job_id: i64) -> Arc<Notify> {
        self.activate(job_id);
        self.inner
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job_id)
            .or_default()
            .clone()
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

impl Inner {
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn executor(&self) -> &crate::executor::Executor {
        &self.executor
    }

    pub(crate) fn job_env(&self) -> &[(String, String)] {
        &self.job_env
    }

    pub(crate) fn forget_cancel(&self, job_id: i64) {
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_id);
    }

    async fn run(self: Arc<Self>, job_id: i64) -> anyhow::Result<()> {
        // The local queue's limit; a cluster schedules its own jobs.
        let _slot = match self.executor {
            crate::executor::Executor::Local => {
                Some(self.slots.acquire().await.context("job queue closed")?)
            }
            crate::executor::Executor::Slurm(_) => None,
        };
        let job = db::job(&self.pool, job_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let args = command_args(&job)?;
        let log_file = self.open_log(job_id)?;
        // Registered before the state changes: a cancel that sees `running` finds it (a notify
        // sent before anyone waits is kept for the first waiter).
        // One notify per job, shared with a duplicate task of the same job (resume, cancel,
        // resume), which must not replace the running one's.
        let (cancel, created) = {
            let mut cancels = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
            let created = !cancels.contains_key(&job_id);
            let cancel = cancels.entry(job_id).or_default().clone();
            (cancel, created)
        };
        // Only a job still queued starts: one cancelled (or started by someone else) meanwhile
        // stays as it is, and no second trainer ever runs in its directory.
        let claimed = sqlx::query(
            "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'",
        )
        .bind(db::now())
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        if claimed.rows_affected() != 1 {
            // Cancelled meanwhile (its channel is gone already) or running in another task (whose
            // channel and notify stay).
            if created {
                self.cancels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&job_id);
            }
            return Ok(());
        }
        if let crate::executor::Executor::Slurm(config) = &self.executor {
            let config = config.clone();
            return crate::executor::slurm::submit_and_follow(
                self.clone(),
                &config,
                job_id,
                args,
                cancel,
            )
            .await;
        }

        let mut command = tokio::process::Command::new(&self.cggm_bin);
        let (policy, why) = omp_wait_policy(self.max_jobs);
        command.env("OMP_WAIT_POLICY", &policy);
        {
            use std::io::Write;
            let _ = writeln!(&log_file, "cggm serve: OMP_WAIT_POLICY={policy} ({why})");
        }
        // A job needs no access to the server: its token stays with the server.
        command
            .env_remove("CGGM_TOKEN")
            .env_remove("CGGM_TOKEN_FILE");
        // The child's stdin is a pipe the server never writes to: when the server dies (even by
        // SIGKILL) the pipe closes and the trainer exits (see `cggm`'s main).
        command.env(crate::PARENT_PIPE_ENV, "1");
        command.envs(self.job_env.iter().map(|(k, v)| (k, v)));
        let mut child = match command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                self.cancels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&job_id);
                let reason = format!("could not start {}: {e}", self.cggm_bin.display());
                self.finish(job_id, JobState::Failed, None, Some(reason))
                    .await?;
                return Ok(());
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
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?")
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?;
        let mut failure: Option<String> = None;
        let mut cancelled = false;
        let log = log_path(&self.data_dir, job_id);
        let mut log_check = tokio::time::interval(LOG_CHECK_EVERY);
        loop {
            tokio::select! {
                _ = log_check.tick() => cap_log(&log, self.max_log_bytes),
                line = lines.next_line() => {
                    let Some(line) = line? else { break };
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
                _ = cancel.notified() => {
                    cancelled = true;
                    break;
                }
            }
        }
        let status = if cancelled {
            stop_gracefully(&mut child).await?
        } else {
            child.wait().await?
        };
        cap_log(&log, self.max_log_bytes);
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_id);
        let code = status.code().map(i64::from);
        let (state, error) = if cancelled {
            (
                JobState::Cancelled,
                Some("cancelled by the user".to_string()),
            )
        } else if status.success() && failure.is_none() {
            (JobState::Succeeded, None)
        } else {
            let reason = failure.unwrap_or_else(|| match code {
                Some(c) => format!("the process exited with code {c}; see the log"),
                None => "the process was killed by a signal (out of memory?); see the log".into(),
            });
            (JobState::Failed, Some(reason))
        };
        tracing::info!(job_id, state = state.as_str(), "job finished");
        self.finish(job_id, state, code, error).await
    }

    fn open_log(&self, job_id: i64) -> anyhow::Result<std::fs::File> {
        let path = log_path(&self.data_dir, job_id);
        std::fs::create_dir_all(path.parent().context("log folder")?)?;
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?)
    }

    /// Stores an event (retried a few times) and sends it to live viewers. A database that
    /// refuses it costs that event its storage, logged, never the training.
    pub(crate) async fn store_event(&self, job_id: i64, seq: i64, event: &Event) {
        let value = match serde_json::to_value(event) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(job_id, seq, error = %e, "event not serialisable; skipped");
                return;
            }
        };
        let kind = value["event"].as_str().unwrap_or("unknown").to_string();
        let time = value["time"].as_f64().unwrap_or_else(db::now);
        let data = value.to_string();
        match kind.as_str() {
            "run_started" => {
                self.restarted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(job_id);
            }
            "step" => {
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
                 (kind = 'step' AND json_extract(data, '$.step') >= ?)
                 OR (kind IN ('validation', 'checkpoint_saved', 'balance_diagnostics')
                     AND json_extract(data, '$.epoch') >= ?))",
        )
        .bind(job_id)
        .bind(seq)
        .bind(step)
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

    pub(crate) async fn finish(
        &self,
        job_id: i64,
        state: JobState,
        code: Option<i64>,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = ?, finished_at = ?, exit_code = ?, error = ? WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(db::now())
        .bind(code)
        .bind(error)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        self.broadcast_state(job_id, state);
        self.drop_channel(job_id);
        Ok(())
    }

    /// A running job's executor state for live viewers (Slurm's state and node, stalled or not).
    pub(crate) fn send_state_detail(
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

    pub(crate) fn broadcast_state(&self, job_id: i64, state: JobState) {
        self.send_state_message(job_id, serde_json::json!({ "state": state.as_str() }));
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
