//! Where jobs run. `local` (the default): each job is a child process of the server, as
//! [`crate::jobs`] has always done; its pid is recorded so that a restarted server never leaves a
//! second trainer in a run directory. `slurm`: each job is a batch job submitted with `sbatch`,
//! followed through `scontrol`/`sacct` and the events file it writes on a folder the server and the
//! cluster's nodes share (see [`slurm`]).
//!
//! Every start of a job is a row of `job_executions` (the latest row is the current one).

pub mod local;
pub mod slurm;

use serde::Serialize;
use sqlx::SqlitePool;
use std::path::PathBuf;

/// `cggm serve` flags that choose and configure the executor (each with its environment variable).
#[derive(Clone, Debug, clap::Args)]
pub struct ExecutorArgs {
    /// Where jobs run: `local` (child processes of this server) or `slurm` (batch jobs submitted
    /// with sbatch; needs --slurm-shared-dir on a folder the nodes see).
    #[arg(long, env = "CGGM_EXECUTOR", default_value = "local")]
    pub executor: ExecutorKind,
    /// Slurm partition for the jobs (sbatch --partition); the cluster's default when unset.
    #[arg(long, env = "CGGM_SLURM_PARTITION")]
    pub slurm_partition: Option<String>,
    /// Slurm account to charge (sbatch --account).
    #[arg(long, env = "CGGM_SLURM_ACCOUNT")]
    pub slurm_account: Option<String>,
    /// Time limit per job (sbatch --time, e.g. `1-00:00:00` or `90` minutes).
    #[arg(long, env = "CGGM_SLURM_TIME")]
    pub slurm_time: Option<String>,
    /// GPUs per job (sbatch --gres=gpu:N); 0 asks for none.
    #[arg(long, env = "CGGM_SLURM_GPUS", default_value_t = 0)]
    pub slurm_gpus: u32,
    /// CPUs per job (sbatch --cpus-per-task); the cluster's default when unset.
    #[arg(long, env = "CGGM_SLURM_CPUS")]
    pub slurm_cpus: Option<u32>,
    /// An extra sbatch option, e.g. `--qos=long` (repeat the flag for several; separate them with
    /// ';' in the environment variable).
    #[arg(
        long = "slurm-sbatch-arg",
        env = "CGGM_SLURM_SBATCH_ARGS",
        value_delimiter = ';',
        allow_hyphen_values = true
    )]
    pub slurm_sbatch_args: Vec<String>,
    /// A folder the server and every node see at the same path: batch scripts, events files and
    /// Slurm's output go there. Defaults to `<data dir>/slurm` (then the data directory itself
    /// must be on the shared file system, as the run folders must be in any case).
    #[arg(long, env = "CGGM_SLURM_SHARED_DIR")]
    pub slurm_shared_dir: Option<PathBuf>,
    /// The `cggm` binary as the nodes see it; defaults to this server's own executable.
    #[arg(long, env = "CGGM_SLURM_CGGM")]
    pub slurm_cggm: Option<PathBuf>,
    /// How often the server reads the events files and asks Slurm for the jobs' states (ms).
    #[arg(long, env = "CGGM_SLURM_POLL_MS", default_value_t = 2000)]
    pub slurm_poll_ms: u64,
    /// A running job whose events file has not grown for this long is shown as stalled (s).
    #[arg(long, env = "CGGM_SLURM_STALL_S", default_value_t = 600)]
    pub slurm_stall_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

/// The executor a server runs its jobs with.
#[derive(Clone, Debug, Default)]
pub enum Executor {
    #[default]
    Local,
    Slurm(slurm::SlurmConfig),
}

impl Executor {
    /// Resolves the flags; for Slurm, checks that its commands exist and the shared folder is
    /// writable, and refuses to start with what to fix otherwise.
    pub fn from_args(
        args: &ExecutorArgs,
        data_dir: &std::path::Path,
        own_binary: &std::path::Path,
    ) -> anyhow::Result<Self> {
        match args.executor {
            ExecutorKind::Local => Ok(Executor::Local),
            ExecutorKind::Slurm => Ok(Executor::Slurm(slurm::SlurmConfig::resolve(
                args, data_dir, own_binary,
            )?)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Slurm(_) => "slurm",
        }
    }
}

/// One start of a job (a row of `job_executions`).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Execution {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub job_id: i64,
    pub executor: String,
    pub pid: Option<i64>,
    #[serde(skip)]
    pub pid_start: Option<i64>,
    pub slurm_job_id: Option<String>,
    pub slurm_state: Option<String>,
    pub slurm_node: Option<String>,
    pub slurm_reason: Option<String>,
    #[serde(skip)]
    pub events_path: Option<String>,
    #[serde(skip)]
    pub events_offset: i64,
    #[serde(skip)]
    pub output_path: Option<String>,
    #[serde(skip)]
    pub output_offset: i64,
    pub stalled: bool,
    pub submitted_at: f64,
    pub first_event_at: Option<f64>,
    pub last_event_at: Option<f64>,
}

/// The current (latest) execution of a job, if it ever started.
pub async fn current(pool: &SqlitePool, job_id: i64) -> sqlx::Result<Option<Execution>> {
    sqlx::query_as("SELECT * FROM job_executions WHERE job_id = ? ORDER BY id DESC LIMIT 1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// After a restart, every job the database says is running: a Slurm job is followed again (when
/// this server runs the Slurm executor); a local job whose trainer still runs has it stopped (it
/// could not report to this server, and a resume must not start a second trainer beside it); the
/// rest are marked `interrupted`, with what happened.
pub async fn recover_running(
    runner: &crate::jobs::JobRunner,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    let pool = runner.inner.pool().clone();
    let running: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, out_dir FROM jobs WHERE state = 'running' ORDER BY id")
            .fetch_all(&pool)
            .await?;
    for (job_id, out_dir) in running {
        let execution = current(&pool, job_id).await?;
        let mut error = String::from("the server stopped while this job ran; its files are kept");
        match (execution, runner.inner.executor()) {
            (Some(execution), Executor::Slurm(config))
                if execution.executor == "slurm" && execution.slurm_job_id.is_some() =>
            {
                tracing::info!(job_id, slurm_job_id = ?execution.slurm_job_id, "re-attaching to a Slurm job");
                let cancel = runner.attach(job_id);
                let inner = runner.inner.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    if let Err(e) = slurm::follow(inner.clone(), &config, execution, cancel).await {
                        tracing::error!(job_id, error = ?e, "following a Slurm job failed");
                        let _ = inner
                            .finish(
                                job_id,
                                crate::db::JobState::Failed,
                                None,
                                Some(format!("{e:#}")),
                            )
                            .await;
                    }
                });
                continue;
            }
            (Some(execution), _) if execution.executor == "slurm" => {
                error = format!(
                    "this job was submitted to Slurm (job {}), and this server runs the local \
                     executor: start it with --executor slurm to follow the job, or cancel it \
                     with `scancel {0}`",
                    execution.slurm_job_id.unwrap_or_default()
                );
            }
            (Some(execution), _) => {
                if let Some(pid) = execution.pid.and_then(|p| u32::try_from(p).ok()) {
                    let start = execution.pid_start.and_then(|s| u64::try_from(s).ok());
                    if local::stop_leftover(pid, start, &out_dir, grace).await {
                        error = format!(
                            "the server stopped while this job ran; its trainer (pid {pid}) was \
                             still running and has been stopped. Its files are kept: resume it"
                        );
                    }
                }
            }
            (None, _) => {}
        }
        sqlx::query(
            "UPDATE jobs SET state = 'interrupted', finished_at = ?, error = ?
             WHERE id = ? AND state = 'running'",
        )
        .bind(crate::db::now())
        .bind(error)
        .bind(job_id)
        .execute(&pool)
        .await?;
    }
    Ok(())
}
