//! SQLite storage: connection, migrations and the queries the routes and the job runner share.

use crate::error::{Error, Result};
use cggm_core::events::EventKind;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::collections::HashMap;
use std::path::Path;

pub async fn connect(data_dir: &Path) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("cggm.sqlite"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    Ok(pool)
}

pub fn now() -> f64 {
    cggm_core::events::now()
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Dataset {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub source: String,
    pub created_at: f64,
    #[serde(skip)]
    pub report: String,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Study {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub dir: String,
    #[serde(skip)]
    pub files: String,
    #[serde(skip)]
    pub shape: String,
    pub created_at: f64,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    #[serde(skip)]
    pub params: String,
    pub dataset_id: Option<i64>,
    pub study_id: Option<i64>,
    pub checkpoint_job_id: Option<i64>,
    #[serde(skip)]
    pub out_dir: String,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

impl Job {
    pub fn params_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.params).unwrap_or(serde_json::Value::Null)
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_terminal()
    }

    /// The job's run directory (training jobs).
    pub fn run_dir(&self) -> cggm_core::rundir::RunDir {
        cggm_core::rundir::RunDir::new(&self.out_dir)
    }

    /// A finished prediction's segmentation file; 404 for any other job, or before it exists.
    pub fn segmentation(&self) -> Result<std::path::PathBuf> {
        let path = Path::new(&self.out_dir).join("seg.nii.gz");
        if self.kind != JobKind::Infer || self.state != JobState::Succeeded || !path.is_file() {
            return Err(Error::NotFound(format!("segmentation of job {}", self.id)));
        }
        Ok(path)
    }
}

/// What a job runs. Stored as its name (`train`, `infer`) in `jobs.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum JobKind {
    /// `cggm train`: a training run in `runs/job-<id>`.
    Train,
    /// `cggm infer`: a segmentation in `predictions/job-<id>`.
    Infer,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Infer => "infer",
        }
    }

    /// The folder of the data directory that holds this kind's job folders.
    pub fn folder(self) -> &'static str {
        match self {
            JobKind::Train => "runs",
            JobKind::Infer => "predictions",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is in its life: core's list (the vocabulary hands the same one to the browser),
/// stored as its name in `jobs.state` and bound with [`JobState::as_str`].
pub use cggm_core::job_state::JobState;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub time: f64,
    #[serde(skip)]
    pub data: String,
}

pub async fn dataset(pool: &SqlitePool, id: i64) -> Result<Dataset> {
    sqlx::query_as("SELECT * FROM datasets WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("dataset {id}")))
}

pub async fn datasets(pool: &SqlitePool) -> Result<Vec<Dataset>> {
    Ok(sqlx::query_as("SELECT * FROM datasets ORDER BY id")
        .fetch_all(pool)
        .await?)
}

pub async fn study(pool: &SqlitePool, id: i64) -> Result<Study> {
    sqlx::query_as("SELECT * FROM studies WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("study {id}")))
}

pub async fn studies(pool: &SqlitePool) -> Result<Vec<Study>> {
    Ok(sqlx::query_as("SELECT * FROM studies ORDER BY id DESC")
        .fetch_all(pool)
        .await?)
}

pub async fn job(pool: &SqlitePool, id: i64) -> Result<Job> {
    sqlx::query_as("SELECT * FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("job {id}")))
}

pub async fn jobs(pool: &SqlitePool, kind: Option<JobKind>) -> Result<Vec<Job>> {
    Ok(match kind {
        Some(kind) => {
            sqlx::query_as("SELECT * FROM jobs WHERE kind = ? ORDER BY id DESC")
                .bind(kind)
                .fetch_all(pool)
                .await?
        }
        None => {
            sqlx::query_as("SELECT * FROM jobs ORDER BY id DESC")
                .fetch_all(pool)
                .await?
        }
    })
}

/// The jobs with these ids, by id, in one query (ids that name no job are left out).
pub async fn jobs_by_id(pool: &SqlitePool, ids: &[i64]) -> Result<HashMap<i64, Job>> {
    let jobs: Vec<Job> =
        sqlx::query_as("SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(?))")
            .bind(serde_json::json!(ids).to_string())
            .fetch_all(pool)
            .await?;
    Ok(jobs.into_iter().map(|job| (job.id, job)).collect())
}

/// Events of a job with `seq > after`, optionally of one kind, in order.
pub async fn events(
    pool: &SqlitePool,
    job_id: i64,
    after: i64,
    kind: Option<&str>,
) -> Result<Vec<StoredEvent>> {
    Ok(sqlx::query_as(
        "SELECT seq, kind, time, data FROM events
         WHERE job_id = ? AND seq > ? AND (? IS NULL OR kind = ?) ORDER BY seq",
    )
    .bind(job_id)
    .bind(after)
    .bind(kind)
    .bind(kind)
    .fetch_all(pool)
    .await?)
}

/// One page of a job's events, oldest first: with `before`, the last `limit` events below it
/// (and above `after`); without, the first `limit` events above `after`. A request never loads
/// more than `limit` rows, however long the run.
pub async fn events_page(
    pool: &SqlitePool,
    job_id: i64,
    after: i64,
    before: Option<i64>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let limit = limit.max(0);
    match before {
        Some(before) => {
            let mut rows: Vec<StoredEvent> = sqlx::query_as(
                "SELECT seq, kind, time, data FROM events
                 WHERE job_id = ? AND seq > ? AND seq < ? AND (? IS NULL OR kind = ?)
                 ORDER BY seq DESC LIMIT ?",
            )
            .bind(job_id)
            .bind(after)
            .bind(before)
            .bind(kind)
            .bind(kind)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.reverse();
            Ok(rows)
        }
        None => Ok(sqlx::query_as(
            "SELECT seq, kind, time, data FROM events
             WHERE job_id = ? AND seq > ? AND (? IS NULL OR kind = ?) ORDER BY seq LIMIT ?",
        )
        .bind(job_id)
        .bind(after)
        .bind(kind)
        .bind(kind)
        .bind(limit)
        .fetch_all(pool)
        .await?),
    }
}

/// The validation event marked best (or the last one) of a training job, as JSON.
pub async fn best_validation(pool: &SqlitePool, job_id: i64) -> Result<Option<serde_json::Value>> {
    // Read backwards along the (job_id, seq) key and stopped at the first match, one JSON object
    // parsed: a listing of runs with tens of thousands of validation events no longer loads and
    // parses every one of them per run.
    let best: Option<(String,)> = sqlx::query_as(
        "SELECT data FROM events WHERE job_id = ? AND kind = ?
           AND json_extract(data, '$.best') = 1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(job_id)
    .bind(EventKind::Validation.as_str())
    .fetch_optional(pool)
    .await?;
    let row = match best {
        Some(row) => Some(row),
        None => {
            sqlx::query_as(
                "SELECT data FROM events WHERE job_id = ? AND kind = ?
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(job_id)
            .bind(EventKind::Validation.as_str())
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(row.and_then(|(data,)| serde_json::from_str(&data).ok()))
}
