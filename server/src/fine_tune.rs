//! Fine-tuning from the API and the form: a run request's `init_from` names a finished training
//! run of this server by its id (a request never names a folder); the server resolves it to that
//! run's folder, which the trainer reads as `init_from` in `request.json`. The same rules list
//! the runs the new-run form offers.

use crate::db::{self, Job, JobKind, JobState};
use crate::error::{Error, Result};
use cggm_core::config::{incompatibility, TrainConfig};
use cggm_core::rundir::RunDir;
use sqlx::SqlitePool;
use std::path::PathBuf;

/// A finished run a new one may start from (the form's "Start from the weights of run").
#[derive(Clone, Debug)]
pub struct SourceRun {
    pub id: i64,
    /// `#7 · cggm · tiny · demo (segmentation)`
    pub label: String,
    pub task: String,
}

/// The configuration a run trained with: its `config.json`, else the `request.json` the server
/// wrote (the same configuration, before the trainer started).
fn run_config(run: &RunDir) -> Option<TrainConfig> {
    [run.config(), run.request()]
        .iter()
        .find_map(|path| serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok())
}

fn has_checkpoint(job: &Job) -> bool {
    job.run_dir().best_or_last().is_some()
}

/// The folder (absolute) of the run `value` names, once it is a finished training run with a
/// checkpoint whose network is `target`'s; else a 422 that says why.
pub async fn source_folder(
    pool: &SqlitePool,
    value: &serde_json::Value,
    target: &TrainConfig,
) -> Result<PathBuf> {
    let refuse = |message: String| Err(Error::Unprocessable(format!("init_from: {message}")));
    let Some(id) = value.as_i64() else {
        return refuse(format!(
            "{value} is not a run's number: give the id of a finished training run (GET /api/jobs)"
        ));
    };
    let job = match db::job(pool, id).await {
        Ok(job) => job,
        Err(Error::NotFound(_)) => {
            return refuse(format!(
                "there is no run {id} on this server (GET /api/jobs lists them)"
            ))
        }
        Err(e) => return Err(e),
    };
    if job.kind != JobKind::Train {
        return refuse(format!(
            "job {id} is a segmentation, not a training run: give the id of a training run"
        ));
    }
    if job.state != JobState::Succeeded {
        return refuse(format!(
            "run {id} is {}: start from a run that finished (succeeded)",
            job.state
        ));
    }
    if !has_checkpoint(&job) {
        return refuse(format!(
            "run {id} left no checkpoint (best or last) to start from"
        ));
    }
    let Some(source) = run_config(&job.run_dir()) else {
        return refuse(format!(
            "run {id} has no readable config.json: it was not made by this application"
        ));
    };
    if let Some(why) = incompatibility(&source, target) {
        return refuse(format!("run {id} cannot start this run: {why}"));
    }
    std::path::absolute(&job.out_dir).map_err(|e| Error::Internal(e.into()))
}

/// Every finished training run with a checkpoint, newest first.
pub async fn sources(pool: &SqlitePool) -> Result<Vec<SourceRun>> {
    Ok(db::jobs(pool, Some(JobKind::Train))
        .await?
        .into_iter()
        .filter(|job| job.state == JobState::Succeeded && has_checkpoint(job))
        .map(|job| {
            let p = job.params_json();
            let text = |key: &str| p[key].as_str().unwrap_or("").to_string();
            SourceRun {
                id: job.id,
                label: format!(
                    "#{} · {} · {} · {} ({})",
                    job.id,
                    text("method"),
                    text("preset"),
                    text("dataset"),
                    text("task")
                ),
                task: text("task"),
            }
        })
        .collect())
}
