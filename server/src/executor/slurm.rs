//! The Slurm executor: each job is a batch job (`sbatch` of a generated script that runs the same
//! `cggm train`/`cggm infer` command the local executor runs, with `--events` pointing at a file on
//! the shared folder). The server follows it by polling: it reads what the events file gained
//! (stored and broadcast like a local job's stdout), copies what Slurm's output file gained into
//! the job's log, and asks `scontrol` (then `sacct`, for jobs the controller forgot) for its state.
//! Nothing needs a network path from the compute node to the server.
//!
//! Cancel is `scancel`. A server restart re-attaches to jobs still queued or running (the offsets
//! read so far are stored, so no event is stored twice). A job Slurm ends (time limit, out of
//! memory, node failure) fails with Slurm's reason; Resume submits a new batch job that continues
//! from the last checkpoint.

use super::args::ExecutorArgs;
use super::host::{Execution, JobHost};
use crate::db::{self, JobState};
use anyhow::Context;
use cggm_core::events::{Event, EventKind};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub gpus: u32,
    pub cpus: Option<u32>,
    pub sbatch_args: Vec<String>,
    /// Batch scripts, events files and Slurm's output files: `<shared>/job-<id>/`.
    pub shared_dir: PathBuf,
    /// The `cggm` binary as the nodes see it.
    pub cggm: PathBuf,
    pub poll: Duration,
    pub stall_after: Duration,
}

/// The Slurm commands the executor uses; each must run on the server's machine.
const COMMANDS: [&str; 4] = ["sbatch", "scontrol", "scancel", "squeue"];

impl SlurmConfig {
    pub fn resolve(
        args: &ExecutorArgs,
        data_dir: &Path,
        own_binary: &Path,
    ) -> anyhow::Result<Self> {
        for command in COMMANDS {
            let found = std::process::Command::new(command)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(found, Ok(status) if status.success()) {
                anyhow::bail!(
                    "--executor slurm: `{command}` was not found or does not run on this machine. \
                     Install Slurm's client commands (Debian: apt install slurm-client) and the \
                     cluster's slurm.conf and munge key, or start the server with --executor local"
                );
            }
        }
        let shared_dir = args
            .slurm_shared_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("slurm"));
        let writable = std::fs::create_dir_all(&shared_dir).and_then(|_| {
            let probe = shared_dir.join(format!(".write-test-{}", std::process::id()));
            std::fs::write(&probe, b"cggm")?;
            std::fs::remove_file(&probe)
        });
        if let Err(e) = writable {
            anyhow::bail!(
                "--executor slurm: the shared folder {} is not writable by the server ({e}). Give \
                 --slurm-shared-dir (CGGM_SLURM_SHARED_DIR) a folder on the file system the \
                 cluster's nodes share, writable by this user",
                shared_dir.display()
            );
        }
        Ok(Self {
            partition: args.slurm_partition.clone().filter(|s| !s.is_empty()),
            account: args.slurm_account.clone().filter(|s| !s.is_empty()),
            time: args.slurm_time.clone().filter(|s| !s.is_empty()),
            gpus: args.slurm_gpus,
            cpus: args.slurm_cpus,
            sbatch_args: args
                .slurm_sbatch_args
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
            shared_dir: shared_dir.canonicalize()?,
            cggm: args
                .slurm_cggm
                .clone()
                .unwrap_or_else(|| own_binary.to_path_buf()),
            poll: Duration::from_millis(args.slurm_poll_ms.max(50)),
            stall_after: Duration::from_secs(args.slurm_stall_s.max(1)),
        })
    }

    pub(crate) fn job_dir(&self, job_id: i64) -> PathBuf {
        self.shared_dir.join(format!("job-{job_id}"))
    }

    /// The batch script of one attempt: Slurm options as `#SBATCH` lines, then the command.
    fn script(&self, job_id: i64, attempt: i64, output: &Path, args: &[String]) -> String {
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!("#SBATCH --job-name=cggm-job-{job_id}"),
            format!("#SBATCH --output={}", output.display()),
            "#SBATCH --open-mode=append".to_string(),
        ];
        if let Some(partition) = &self.partition {
            lines.push(format!("#SBATCH --partition={partition}"));
        }
        if let Some(account) = &self.account {
            lines.push(format!("#SBATCH --account={account}"));
        }
        if let Some(time) = &self.time {
            lines.push(format!("#SBATCH --time={time}"));
        }
        if self.gpus > 0 {
            lines.push(format!("#SBATCH --gres=gpu:{}", self.gpus));
        }
        if let Some(cpus) = self.cpus {
            lines.push(format!("#SBATCH --cpus-per-task={cpus}"));
        }
        lines.push(format!(
            "# CGGM Studio job {job_id}, attempt {attempt}: written by the server's Slurm executor"
        ));
        // libtorch's OpenMP threads spin while idle, which wastes a shared node's cores.
        lines.push("export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}".to_string());
        let command: Vec<String> = std::iter::once(self.cggm.display().to_string())
            .chain(args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect();
        lines.push(format!("exec {}", command.join(" ")));
        lines.join("\n") + "\n"
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Submits a claimed job and follows it to its end.
pub(crate) async fn submit_and_follow<H: JobHost>(
    inner: Arc<H>,
    config: &SlurmConfig,
    job_id: i64,
    args: Vec<String>,
    cancel: Arc<Notify>,
) -> anyhow::Result<()> {
    let dir = config.job_dir(job_id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let attempt: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) + 1 FROM job_executions WHERE job_id = ? AND executor = 'slurm'",
    )
    .bind(job_id)
    .fetch_one(inner.pool())
    .await?;
    let batch = Batch::write(config, &dir, job_id, attempt, args)?;
    let submitted_at = db::now();
    let slurm_id = match sbatch(config, &dir, &batch.script, inner.job_env()).await {
        Ok(slurm_id) => slurm_id,
        Err(e) => {
            inner.forget_cancel(job_id);
            return inner
                .finish(job_id, JobState::Failed, e.code(), Some(e.to_string()))
                .await;
        }
    };
    let exec_id: i64 = sqlx::query_scalar(
        "INSERT INTO job_executions (job_id, executor, slurm_job_id, slurm_state, events_path,
             output_path, submitted_at, updated_at)
         VALUES (?, 'slurm', ?, 'PENDING', ?, ?, ?, ?) RETURNING id",
    )
    .bind(job_id)
    .bind(&slurm_id)
    .bind(batch.events.display().to_string())
    .bind(batch.output.display().to_string())
    .bind(submitted_at)
    .bind(db::now())
    .fetch_one(inner.pool())
    .await?;
    tracing::info!(job_id, slurm_job_id = %slurm_id, "job submitted to Slurm");
    inner.broadcast_state(job_id, JobState::Running);
    let execution: Execution = sqlx::query_as("SELECT * FROM job_executions WHERE id = ?")
        .bind(exec_id)
        .fetch_one(inner.pool())
        .await?;
    follow(inner, config, execution, cancel).await
}

/// One attempt's files in the job's shared folder: its batch script, the events file the job
/// writes and Slurm's output.
struct Batch {
    script: PathBuf,
    events: PathBuf,
    output: PathBuf,
}

impl Batch {
    /// Writes attempt `attempt`'s batch script, with the job's `--events` pointed at its own
    /// (emptied) events file.
    fn write(
        config: &SlurmConfig,
        dir: &Path,
        job_id: i64,
        attempt: i64,
        mut args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let events = dir.join(format!("events-{attempt}.jsonl"));
        let output = dir.join(format!("slurm-{attempt}.out"));
        let _ = std::fs::remove_file(&events);
        if let Some(at) = args.iter().position(|a| a == "--events") {
            if let Some(target) = args.get_mut(at + 1) {
                *target = events.display().to_string();
            }
        }
        let script = dir.join(format!("job-{attempt}.sh"));
        std::fs::write(&script, config.script(job_id, attempt, &output, &args))?;
        Ok(Self {
            script,
            events,
            output,
        })
    }
}

/// Why a job could not be submitted (its error).
#[derive(Debug, thiserror::Error)]
enum SbatchError {
    #[error(
        "sbatch refused the job: {message}. Check the executor's Slurm settings \
         (--slurm-partition, --slurm-account, --slurm-time, --slurm-sbatch-arg) and launch \
         it again"
    )]
    Refused { code: Option<i64>, message: String },
    #[error("could not run sbatch: {0}. Is Slurm's client installed?")]
    NotRun(std::io::Error),
}

impl SbatchError {
    /// sbatch's exit code.
    fn code(&self) -> Option<i64> {
        match self {
            SbatchError::Refused { code, .. } => *code,
            SbatchError::NotRun(_) => None,
        }
    }
}

/// Submits the batch script; Slurm's job id.
async fn sbatch(
    config: &SlurmConfig,
    dir: &Path,
    script: &Path,
    job_env: &[(String, String)],
) -> Result<String, SbatchError> {
    let answer = tokio::process::Command::new("sbatch")
        .arg("--parsable")
        .args(&config.sbatch_args)
        .arg(script)
        .current_dir(dir)
        // The job needs no access to the server: its token stays with the server.
        .env_remove("CGGM_TOKEN")
        .env_remove("CGGM_TOKEN_FILE")
        .env_remove(cggm_core::process::PARENT_PIPE_ENV)
        // sbatch hands its environment to the job: where the runs are logged goes with it.
        .envs(job_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .await;
    match answer {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string()),
        Ok(out) => {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(SbatchError::Refused {
                code: out.status.code().map(i64::from),
                message: if message.is_empty() {
                    "no message".into()
                } else {
                    message
                },
            })
        }
        Err(e) => Err(SbatchError::NotRun(e)),
    }
}

/// What Slurm says about a job.
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmStatus {
    /// PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, CANCELLED, ...
    pub state: String,
    pub node: Option<String>,
    pub reason: Option<String>,
    /// `exit:signal`
    pub exit_code: Option<String>,
}

impl SlurmStatus {
    pub fn is_active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "CONFIGURING"
                | "RUNNING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "STOPPED"
                | "RESV_DEL_HOLD"
        )
    }

    /// The job's failure as the user reads it.
    fn failure(&self, slurm_id: &str) -> String {
        let what = match self.state.as_str() {
            "TIMEOUT" => "reached its time limit (raise --slurm-time)",
            "OUT_OF_MEMORY" => "ran out of memory (ask for more with --slurm-sbatch-arg=--mem=...)",
            "NODE_FAIL" => "lost its node (node failure)",
            "PREEMPTED" => "was preempted",
            "BOOT_FAIL" => "could not boot its node",
            "DEADLINE" => "missed its deadline",
            "CANCELLED" => "was cancelled outside the application (scancel)",
            _ => "failed",
        };
        let mut text = format!("Slurm job {slurm_id} {what}: state {}", self.state);
        if let Some(reason) = self.reason.as_deref().filter(|r| *r != "None") {
            text.push_str(&format!(", reason {reason}"));
        }
        if let Some(code) = &self.exit_code {
            text.push_str(&format!(", exit code {code}"));
        }
        text.push_str("; see the log. Resume continues from the last checkpoint");
        text
    }
}

/// What asking Slurm about a job gave.
#[derive(Debug)]
enum Answer {
    Known(SlurmStatus),
    /// Neither the controller nor the accounting database knows the job.
    Unknown,
    /// The controller did not answer (it may be restarting); try again later.
    Unreachable(String),
}

/// `scontrol show job -o` (jobs the controller still holds, `MinJobAge` after they end), then
/// `sacct` (clusters with accounting).
async fn ask(slurm_id: &str) -> Answer {
    let scontrol = tokio::process::Command::new("scontrol")
        .args(["show", "job", "-o", slurm_id])
        .stdin(Stdio::null())
        .output()
        .await;
    let scontrol_error = match scontrol {
        Ok(out) if out.status.success() => {
            if let Some(status) = parse_scontrol(&String::from_utf8_lossy(&out.stdout)) {
                return Answer::Known(status);
            }
            String::from("scontrol gave no job state")
        }
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    let sacct = tokio::process::Command::new("sacct")
        .args([
            "-n",
            "-P",
            "-X",
            "-j",
            slurm_id,
            "-o",
            "State,ExitCode,NodeList,Reason",
        ])
        .stdin(Stdio::null())
        .output()
        .await;
    if let Ok(out) = sacct {
        if out.status.success() {
            if let Some(status) = parse_sacct(&String::from_utf8_lossy(&out.stdout)) {
                return Answer::Known(status);
            }
        }
    }
    if scontrol_error.contains("Invalid job id") {
        Answer::Unknown
    } else {
        Answer::Unreachable(scontrol_error)
    }
}

fn parse_scontrol(text: &str) -> Option<SlurmStatus> {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let state = field("JobState")?;
    Some(SlurmStatus {
        state,
        node: field("NodeList").filter(|n| !n.is_empty() && n != "(null)"),
        reason: field("Reason"),
        exit_code: field("ExitCode"),
    })
}

fn parse_sacct(text: &str) -> Option<SlurmStatus> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let parts: Vec<&str> = line.split('|').collect();
    // "CANCELLED by 0" -> CANCELLED
    let state = parts.first()?.split_whitespace().next()?.to_string();
    let some = |i: usize| {
        parts
            .get(i)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "None assigned")
    };
    Some(SlurmStatus {
        state,
        exit_code: some(1),
        node: some(2),
        reason: some(3),
    })
}

/// New complete lines of a file from `offset`: the text and the offset after its last newline.
async fn read_new(path: &Path, offset: i64) -> (Vec<u8>, i64) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return (Vec::new(), offset);
    };
    if file
        .seek(std::io::SeekFrom::Start(offset.max(0) as u64))
        .await
        .is_err()
    {
        return (Vec::new(), offset);
    }
    let mut bytes = Vec::new();
    let _ = (&mut file).take(8 << 20).read_to_end(&mut bytes).await;
    match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => {
            bytes.truncate(end + 1);
            let read = bytes.len() as i64;
            (bytes, offset + read)
        }
        None => (Vec::new(), offset),
    }
}

/// Follows a submitted job (just submitted, or re-attached after a restart) until Slurm ends it,
/// then finishes it in the database.
pub(crate) async fn follow<H: JobHost>(
    inner: Arc<H>,
    config: &SlurmConfig,
    execution: Execution,
    cancel: Arc<Notify>,
) -> anyhow::Result<()> {
    let job_id = execution.job_id;
    let slurm_id = execution.slurm_job_id.clone().unwrap_or_default();
    let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?")
        .bind(job_id)
        .fetch_one(inner.pool())
        .await?;
    let mut watch = Watch {
        stalled: execution.stalled,
        first_event_at: execution.first_event_at,
        last_growth: Instant::now(),
        last: None,
        cursor: Cursor {
            events_path: PathBuf::from(execution.events_path.clone().unwrap_or_default()),
            events_offset: execution.events_offset,
            output_path: PathBuf::from(execution.output_path.clone().unwrap_or_default()),
            output_offset: execution.output_offset,
            seq,
            check_stored: true,
        },
    };
    let mut cancelled = false;
    let end: Option<SlurmStatus> = loop {
        if let Some(end) = watch.poll(&*inner, config, &execution, &slurm_id).await? {
            break end;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.poll) => {}
            _ = cancel.notified(), if !cancelled => {
                cancelled = true;
                scancel(job_id, &slurm_id).await;
            }
        }
    };
    inner.forget_cancel(job_id);
    let code = end
        .as_ref()
        .and_then(|s| s.exit_code.as_deref())
        .and_then(|c| c.split(':').next())
        .and_then(|c| c.parse::<i64>().ok());
    let (state, error) = if cancelled {
        (
            JobState::Cancelled,
            Some("cancelled by the user".to_string()),
        )
    } else {
        ending(inner.pool(), &execution, &slurm_id, end.as_ref()).await?
    };
    tracing::info!(job_id, slurm_job_id = %slurm_id, state = state.as_str(), "Slurm job finished");
    inner.finish(job_id, state, code, error).await
}

/// What [`follow`] knows of a job between polls.
struct Watch {
    stalled: bool,
    first_event_at: Option<f64>,
    /// When the events file last grew.
    last_growth: Instant,
    /// The last active state Slurm reported.
    last: Option<SlurmStatus>,
    cursor: Cursor,
}

impl Watch {
    /// Asks Slurm, stores what the files gained, tells viewers of a change and records where it
    /// is; `Some(end)` when Slurm ended the job (`Some(None)`: Slurm no longer knows it).
    async fn poll<H: JobHost>(
        &mut self,
        inner: &H,
        config: &SlurmConfig,
        execution: &Execution,
        slurm_id: &str,
    ) -> anyhow::Result<Option<Option<SlurmStatus>>> {
        let job_id = execution.job_id;
        let status = ask(slurm_id).await;
        // Read after asking: a job Slurm calls ended has written everything it will write.
        let grew = drain(inner, job_id, &mut self.cursor).await;
        if grew {
            self.last_growth = Instant::now();
            self.first_event_at.get_or_insert_with(db::now);
        }
        let finished = match status {
            Answer::Known(status) if status.is_active() => {
                let now_stalled =
                    status.state == "RUNNING" && self.last_growth.elapsed() >= config.stall_after;
                if now_stalled != self.stalled || self.last.as_ref() != Some(&status) {
                    self.stalled = now_stalled;
                    inner.send_state_detail(
                        job_id,
                        &status.state,
                        status.node.as_deref(),
                        now_stalled,
                    );
                }
                self.last = Some(status);
                None
            }
            Answer::Known(status) => Some(Some(status)),
            Answer::Unknown => Some(None),
            Answer::Unreachable(message) => {
                tracing::warn!(job_id, slurm_job_id = %slurm_id, %message, "Slurm did not answer; asking again");
                None
            }
        };
        let shown = finished.clone().flatten().or_else(|| self.last.clone());
        self.record(inner.pool(), execution.id, shown.as_ref(), grew)
            .await?;
        Ok(finished)
    }

    /// Stores the offsets read, the state shown and when events last arrived in the execution's
    /// row: a restarted server continues from there.
    async fn record(
        &self,
        pool: &sqlx::SqlitePool,
        execution_id: i64,
        shown: Option<&SlurmStatus>,
        grew: bool,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE job_executions SET events_offset = ?, output_offset = ?, stalled = ?,
                 slurm_state = COALESCE(?, slurm_state), slurm_node = COALESCE(?, slurm_node),
                 slurm_reason = ?, first_event_at = ?, last_event_at = CASE WHEN ? THEN ? ELSE last_event_at END,
                 updated_at = ?
             WHERE id = ?",
        )
        .bind(self.cursor.events_offset)
        .bind(self.cursor.output_offset)
        .bind(self.stalled)
        .bind(shown.map(|s| s.state.clone()))
        .bind(shown.and_then(|s| s.node.clone()))
        .bind(shown.and_then(|s| s.reason.clone()))
        .bind(self.first_event_at)
        .bind(grew)
        .bind(db::now())
        .bind(db::now())
        .bind(execution_id)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// Asks Slurm to cancel the job; a refusal is logged (the next poll still sees how it ends).
async fn scancel(job_id: i64, slurm_id: &str) {
    let out = tokio::process::Command::new("scancel")
        .arg(slurm_id)
        .stdin(Stdio::null())
        .output()
        .await;
    if let Ok(out) = out {
        if !out.status.success() {
            tracing::warn!(job_id, slurm_job_id = %slurm_id,
                message = %String::from_utf8_lossy(&out.stderr), "scancel failed");
        }
    }
}

/// How a job that was not cancelled ended: Slurm's final state (`end`; None when Slurm no longer
/// knows the job) and the trainer's own events of this attempt.
async fn ending(
    pool: &sqlx::SqlitePool,
    execution: &Execution,
    slurm_id: &str,
    end: Option<&SlurmStatus>,
) -> anyhow::Result<(JobState, Option<String>)> {
    let job_id = execution.job_id;
    // The trainer's own last word, when it reported a failure during this attempt.
    let failure: Option<String> = sqlx::query_scalar(
        "SELECT data FROM events WHERE job_id = ? AND kind = ? AND time >= ?
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(job_id)
    .bind(EventKind::Failed.as_str())
    .bind(execution.submitted_at)
    .fetch_optional(pool)
    .await?
    .and_then(|data: String| serde_json::from_str::<serde_json::Value>(&data).ok())
    .and_then(|v| v["reason"].as_str().map(str::to_string));
    Ok(match end {
        Some(status) if status.state == "COMPLETED" && failure.is_none() => {
            (JobState::Succeeded, None)
        }
        Some(status) => (
            JobState::Failed,
            Some(match failure {
                Some(reason) => format!("{reason} (Slurm job {slurm_id}: {})", status.state),
                None => status.failure(slurm_id),
            }),
        ),
        None => {
            let finished: bool = sqlx::query_scalar(
                "SELECT COUNT(*) > 0 FROM events WHERE job_id = ? AND kind = ? AND time >= ?",
            )
            .bind(job_id)
            .bind(EventKind::Finished.as_str())
            .bind(execution.submitted_at)
            .fetch_one(pool)
            .await?;
            if finished && failure.is_none() {
                (JobState::Succeeded, None)
            } else {
                (
                    JobState::Failed,
                    Some(format!(
                        "Slurm no longer knows job {slurm_id} and its events file has no end: it \
                         ended while nobody watched. See the log; Resume continues from the last \
                         checkpoint"
                    )),
                )
            }
        }
    })
}

/// How far a job's files have been read, and the last stored event's number.
struct Cursor {
    events_path: PathBuf,
    events_offset: i64,
    output_path: PathBuf,
    output_offset: i64,
    seq: i64,
    /// A server killed between storing events and storing the offset left events past the
    /// stored offset: the first lines read after (re)starting are checked against what is stored.
    check_stored: bool,
}

/// Reads what the events and output files gained: events are stored and broadcast, output goes
/// to the job's log. True when there were new events.
async fn drain<H: JobHost>(inner: &H, job_id: i64, cursor: &mut Cursor) -> bool {
    let (bytes, offset) = read_new(&cursor.events_path, cursor.events_offset).await;
    cursor.events_offset = offset;
    let mut grew = false;
    for line in String::from_utf8_lossy(&bytes).lines() {
        match serde_json::from_str::<Event>(line) {
            Ok(event) => {
                if cursor.check_stored {
                    let value = serde_json::to_value(&event).unwrap_or_default();
                    let stored: Option<i64> = sqlx::query_scalar(
                        "SELECT seq FROM events WHERE job_id = ? AND kind = ? AND time = ?",
                    )
                    .bind(job_id)
                    .bind(event.kind().as_str())
                    .bind(value["time"].as_f64().unwrap_or_default())
                    .fetch_optional(inner.pool())
                    .await
                    .unwrap_or(None);
                    if stored.is_some() {
                        continue;
                    }
                    cursor.check_stored = false;
                }
                cursor.seq += 1;
                inner.store_event(job_id, cursor.seq, &event).await;
                grew = true;
            }
            Err(_) => tracing::debug!(job_id, %line, "non-event line in a job's events file"),
        }
    }
    let (bytes, offset) = read_new(&cursor.output_path, cursor.output_offset).await;
    if !bytes.is_empty() {
        let log = inner.log_path(job_id);
        let appended = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .await;
        if let Ok(mut file) = appended {
            use tokio::io::AsyncWriteExt;
            if file.write_all(&bytes).await.is_ok() {
                cursor.output_offset = offset;
            }
        }
    }
    grew
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_and_sacct_lines_give_state_node_reason_and_exit_code() {
        let line = "JobId=5 JobName=cggm-job-3 UserId=root(0) JobState=TIMEOUT Reason=TimeLimit \
                    Dependency=(null) ExitCode=0:15 RunTime=00:01:00 NodeList=gpu07 BatchHost=gpu07";
        let status = parse_scontrol(line).unwrap();
        assert_eq!(status.state, "TIMEOUT");
        assert_eq!(status.node.as_deref(), Some("gpu07"));
        assert!(!status.is_active());
        let message = status.failure("5");
        assert!(
            message.contains("time limit") && message.contains("TimeLimit"),
            "{message}"
        );

        let pending =
            parse_scontrol("JobId=6 JobState=PENDING Reason=Resources NodeList=").unwrap();
        assert!(pending.is_active());
        assert_eq!(pending.node, None);

        let status = parse_sacct("CANCELLED by 0|0:15|node1|None\n").unwrap();
        assert_eq!(status.state, "CANCELLED");
        assert_eq!(status.node.as_deref(), Some("node1"));
    }

    #[test]
    fn the_batch_script_runs_the_same_command_with_the_options_as_sbatch_lines() {
        let config = SlurmConfig {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            time: Some("1-00:00:00".into()),
            gpus: 1,
            cpus: Some(8),
            sbatch_args: vec![],
            shared_dir: "/shared".into(),
            cggm: "/opt/cggm/bin/cggm".into(),
            poll: Duration::from_secs(1),
            stall_after: Duration::from_secs(60),
        };
        let args = vec![
            "train".to_string(),
            "--out".into(),
            "/data/runs/it's".into(),
        ];
        let script = config.script(3, 1, Path::new("/shared/job-3/slurm-1.out"), &args);
        for line in [
            "#SBATCH --partition=gpu",
            "#SBATCH --account=lab",
            "#SBATCH --time=1-00:00:00",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --output=/shared/job-3/slurm-1.out",
            r"exec '/opt/cggm/bin/cggm' 'train' '--out' '/data/runs/it'\''s'",
        ] {
            assert!(script.contains(line), "{line} missing from:\n{script}");
        }
    }
}
