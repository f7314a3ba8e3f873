//! Deleting what the application stored: studies (with their predictions), predictions, training
//! runs and datasets. Files go with their rows; nothing a queued or running job uses is deleted
//! (409), and only folders inside the data directory are ever removed (a registered dataset's
//! folder belongs to its owner: only its entry goes).

use crate::db;
use crate::error::{Error, Result};
use crate::job_store::Input as Use;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::delete;
use axum::Router;
use std::path::PathBuf;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studies/{id}", delete(delete_study))
        .route("/predictions/{id}", delete(delete_prediction))
        .route("/jobs/{id}", delete(delete_run))
        .route("/datasets/{id}", delete(delete_dataset))
        .route("/comparisons/{id}", delete(delete_comparison))
}

/// `DELETE /api/comparisons/N[?runs=delete]`.
#[derive(serde::Deserialize)]
struct ComparisonDeletion {
    /// `keep` (default): the runs stay as ordinary runs; `delete`: they go too.
    #[serde(default)]
    runs: RunsOfAComparison,
}

#[derive(Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum RunsOfAComparison {
    #[default]
    Keep,
    Delete,
}

/// Every run of comparison `id` has finished and no active job uses its checkpoint; 409 naming
/// those that have not, or the job that uses one.
async fn check_runs_deletable(state: &AppState, id: i64, runs: &[db::Job]) -> Result<()> {
    let active: Vec<i64> = runs
        .iter()
        .filter(|j| !j.is_finished() || state.runner.is_active(j.id))
        .map(|j| j.id)
        .collect();
    if !active.is_empty() {
        let list: Vec<String> = active.iter().map(|j| format!("run {j}")).collect();
        return Err(Error::Conflict(format!(
            "comparison {id} still has {} that {} not finished: cancel {} or wait, then delete \
             (or delete the comparison alone, keeping its runs)",
            list.join(", "),
            if active.len() == 1 { "has" } else { "have" },
            if active.len() == 1 { "it" } else { "them" },
        )));
    }
    for job in runs {
        refuse_if_used(
            &format!("the checkpoint of run {}", job.id),
            &active_jobs(state, Use::Checkpoint, job.id).await?,
        )?;
    }
    Ok(())
}

/// A comparison (a study of methods): its entry always; its runs only with `runs=delete`, and
/// then only when every one of them has finished (409 naming those that have not: nothing is
/// deleted until they are cancelled or done).
async fn delete_comparison(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    axum::extract::Query(query): axum::extract::Query<ComparisonDeletion>,
) -> Result<StatusCode> {
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM comparisons WHERE id = ?")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?;
    if exists.is_none() {
        return Err(Error::NotFound(format!("comparison {id}")));
    }
    let runs: Vec<db::Job> = sqlx::query_as(
        "SELECT jobs.* FROM jobs JOIN comparison_runs ON comparison_runs.job_id = jobs.id \
         WHERE comparison_runs.comparison_id = ? ORDER BY jobs.id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    if query.runs == RunsOfAComparison::Delete {
        check_runs_deletable(&state, id, &runs).await?;
    }
    let mut tx = state.pool.begin().await?;
    sqlx::query("DELETE FROM comparison_runs WHERE comparison_id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM comparisons WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut removed = 0;
    if query.runs == RunsOfAComparison::Delete {
        for job in &runs {
            remove_job(&state, job).await?;
            removed += 1;
        }
    }
    tracing::info!(
        comparison = id,
        runs_deleted = removed,
        "comparison deleted"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Ids of queued or running jobs that use the study, dataset or run `id`.
async fn active_jobs(state: &AppState, what: Use, id: i64) -> Result<Vec<i64>> {
    Ok(crate::job_store::active_using(&state.pool, what, id).await?)
}

fn refuse_if_used(what: &str, users: &[i64]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = users.iter().map(|j| format!("job {j}")).collect();
    Err(Error::Conflict(format!(
        "{what} is in use by {}: cancel or wait for it, then delete",
        list.join(", ")
    )))
}

/// Removes a folder the application created, refusing anything outside the data directory.
fn remove_owned_dir(state: &AppState, dir: &str) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    let dir = PathBuf::from(dir);
    let Ok(resolved) = dir.canonicalize() else {
        return Ok(()); // already gone
    };
    if !resolved.starts_with(state.data_dir()) || resolved == state.data_dir() {
        return Err(Error::Internal(anyhow::anyhow!(
            "refusing to delete {} (outside the data directory)",
            resolved.display()
        )));
    }
    state.volumes.forget_under(&resolved);
    std::fs::remove_dir_all(&resolved)?;
    Ok(())
}

/// A job's folder on the Slurm executor's shared folder (`<shared>/job-<id>`: batch scripts,
/// events files, Slurm's output), and the one under the default shared folder `<data dir>/slurm`
/// that an earlier Slurm server may have left. Both paths are made here, never read from the
/// database.
fn remove_slurm_dirs(state: &AppState, job_id: i64) -> Result<()> {
    let mut dirs = vec![state.data_dir().join("slurm").join(format!("job-{job_id}"))];
    if let crate::executor::Executor::Slurm(config) = &state.config.executor {
        dirs.push(config.job_dir(job_id));
    }
    for dir in dirs {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A finished job's files (output folder, log, its folder on Slurm's shared folder), events and
/// row.
pub(crate) async fn remove_job(state: &AppState, job: &db::Job) -> Result<()> {
    remove_owned_dir(state, &job.out_dir)?;
    remove_slurm_dirs(state, job.id)?;
    let log = state.runner.log_path(job.id);
    for file in [crate::jobs::rotated_log(&log), log] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut tx = state.pool.begin().await?;
    sqlx::query("DELETE FROM events WHERE job_id = ?")
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    // Predictions made with a deleted run keep their segmentation; they lose the link.
    sqlx::query("UPDATE jobs SET checkpoint_job_id = NULL WHERE checkpoint_job_id = ?")
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM jobs WHERE id = ?")
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A study, its files, and its predictions (derived patient data).
async fn delete_study(State(state): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode> {
    remove_study(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a study, its files and its predictions; 409 while a queued or running job uses it.
pub(crate) async fn remove_study(state: &AppState, id: i64) -> Result<()> {
    let state = state.clone();
    let study = db::study(&state.pool, id).await?;
    refuse_if_used(
        &format!("study {id}"),
        &active_jobs(&state, Use::Study, id).await?,
    )?;
    let predictions: Vec<db::Job> = sqlx::query_as("SELECT * FROM jobs WHERE study_id = ?")
        .bind(id)
        .fetch_all(&state.pool)
        .await?;
    for job in &predictions {
        remove_job(&state, job).await?;
    }
    remove_owned_dir(&state, &study.dir)?;
    sqlx::query("DELETE FROM studies WHERE id = ?")
        .bind(id)
        .execute(&state.pool)
        .await?;
    tracing::info!(study = id, predictions = predictions.len(), "study deleted");
    Ok(())
}

pub(crate) async fn finished_job(
    state: &AppState,
    id: i64,
    kind: db::JobKind,
    what: &str,
) -> Result<db::Job> {
    let job = db::job(&state.pool, id).await?;
    if job.kind != kind {
        return Err(Error::NotFound(format!("{what} {id}")));
    }
    if !job.is_finished() || state.runner.is_active(id) {
        return Err(Error::Conflict(format!(
            "{what} {id} is {}: cancel it first, then delete",
            job.state
        )));
    }
    Ok(job)
}

async fn delete_prediction(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    let job = finished_job(&state, id, db::JobKind::Infer, "prediction").await?;
    remove_job(&state, &job).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A training run: its folder (checkpoints included), log, events and row.
async fn delete_run(State(state): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode> {
    remove_run(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a finished training run; 409 while it runs or a queued/running job uses its checkpoint.
pub(crate) async fn remove_run(state: &AppState, id: i64) -> Result<()> {
    let job = finished_job(state, id, db::JobKind::Train, "training run").await?;
    refuse_if_used(
        &format!("the checkpoint of run {id}"),
        &active_jobs(state, Use::Checkpoint, id).await?,
    )?;
    remove_job(state, &job).await
}

/// A dataset entry; its folder too when the application made it (uploaded cases, the demo).
async fn delete_dataset(State(state): State<AppState>, Path(id): Path<i64>) -> Result<StatusCode> {
    let dataset = db::dataset(&state.pool, id).await?;
    refuse_if_used(
        &format!("dataset {}", dataset.name),
        &active_jobs(&state, Use::Dataset, id).await?,
    )?;
    if dataset.source != "registered" {
        remove_owned_dir(&state, &dataset.path)?;
    }
    let mut tx = state.pool.begin().await?;
    sqlx::query("UPDATE jobs SET dataset_id = NULL WHERE dataset_id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM datasets WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
