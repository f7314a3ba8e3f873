//! SQLite storage: connection, migrations and the queries the routes and the job runner share.

use crate::error::{Error, Result};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
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
    cggm_trainer::events::now()
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
    pub kind: String,
    pub state: String,
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
        JobState::parse(&self.state).is_some_and(|s| s.is_terminal())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The server stopped while the job ran; its files are kept.
    Interrupted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "interrupted" => JobState::Interrupted,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

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

pub async fn jobs(pool: &SqlitePool, kind: Option<&str>) -> Result<Vec<Job>> {
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

/// The validation event marked best (or the last one) of a training job, as JSON.
pub async fn best_validation(pool: &SqlitePool, job_id: i64) -> Result<Option<serde_json::Value>> {
    let rows = events(pool, job_id, 0, Some("validation")).await?;
    let parsed: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.data).ok())
        .collect();
    let best = parsed
        .iter()
        .rev()
        .find(|v| v["best"] == serde_json::Value::Bool(true));
    Ok(best.or(parsed.last()).cloned())
}
