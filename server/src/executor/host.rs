//! What the executors share: a job's executions (rows of `job_executions`), and what an executor
//! needs from the job runner that hosts it: the database, the job's log, its
//! cancel signal, and the runner's way of storing events and finishing a job (which also tell the
//! live viewers). The executors depend on this trait, the runner ([`crate::jobs`]) implements it
//! and depends on the executors: the dependencies point one way.

use crate::db::JobState;
use cggm_core::events::Event;
use serde::Serialize;
use sqlx::SqlitePool;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

pub trait JobHost: Send + Sync + 'static {
    fn pool(&self) -> &SqlitePool;

    /// Variables every job gets (see `crate::tracking`).
    fn job_env(&self) -> &[(String, String)];

    /// The job's log file (the server's view of its stderr / Slurm output).
    fn log_path(&self, job_id: i64) -> PathBuf;

    /// Makes a running job live again (viewers get a channel) and returns its cancel signal, for
    /// an executor that re-attaches to it after a restart.
    fn attach(&self, job_id: i64) -> Arc<Notify>;

    /// The job no longer listens for a cancel.
    fn forget_cancel(&self, job_id: i64);

    /// Tells live viewers the job's state.
    fn broadcast_state(&self, job_id: i64, state: JobState);

    /// Tells live viewers a running job's executor state (Slurm's state and node, stalled or not).
    fn send_state_detail(
        &self,
        job_id: i64,
        executor_state: &str,
        node: Option<&str>,
        stalled: bool,
    );

    /// Stores a progress event as number `seq` of the job and sends it to live viewers.
    fn store_event(&self, job_id: i64, seq: i64, event: &Event) -> impl Future<Output = ()> + Send;

    /// Ends the job in `state` (stored, broadcast, its live channel closed).
    fn finish(
        &self,
        job_id: i64,
        state: JobState,
        code: Option<i64>,
        error: Option<String>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
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
