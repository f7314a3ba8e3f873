//! Where jobs run. `local` (the default): each job is a child process of the server, as
//! [`crate::jobs`] has always done; its pid is recorded so that a restarted server never leaves a
//! second trainer in a run directory. `slurm`: each job is a batch job submitted with `sbatch`,
//! followed through `scontrol`/`sacct` and the events file it writes on a folder the server and the
//! cluster's nodes share (see [`slurm`]).
//!
//! Every start of a job is a row of `job_executions` (the latest row is the current one).

pub mod args;
pub mod host;
pub mod local;
pub mod slurm;

pub use args::{ExecutorArgs, ExecutorKind};
pub use host::{current, Execution, JobHost};
use std::sync::Arc;

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

/// After a restart, every job the database says is running: a Slurm job is followed again (when
/// this server runs the Slurm executor); a local job whose trainer still runs has it stopped (it
/// could not report to this server, and a resume must not start a second trainer beside it); the
/// rest are marked `interrupted`, with what happened.
pub async fn recover_running<H: JobHost>(
    host: &Arc<H>,
    executor: &Executor,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    let pool = host.pool().clone();
    let running = crate::job_store::running(&pool).await?;
    for (job_id, out_dir) in running {
        let execution = current(&pool, job_id).await?;
        let mut error = String::from("the server stopped while this job ran; its files are kept");
        match (execution, executor) {
            (Some(execution), Executor::Slurm(config))
                if execution.executor == "slurm" && execution.slurm_job_id.is_some() =>
            {
                tracing::info!(job_id, slurm_job_id = ?execution.slurm_job_id, "re-attaching to a Slurm job");
                let cancel = host.attach(job_id);
                let host = host.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    if let Err(e) = slurm::follow(host.clone(), &config, execution, cancel).await {
                        tracing::error!(job_id, error = ?e, "following a Slurm job failed");
                        let _ = host
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
        crate::job_store::interrupt(&pool, job_id, &error).await?;
    }
    Ok(())
}
