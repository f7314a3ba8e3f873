//! Optional retention period (`--retention-days`): patient data the application stored — uploaded
//! studies and finished predictions, with their files — is deleted once older than the period, by
//! a task that sweeps every hour. Training runs are kept unless `--retention-include-runs` opts
//! them in. Anything a queued or running job uses is skipped (and swept on a later pass).

use crate::db::{self, JobKind};
use crate::error::{Error, Result};
use crate::routes::deletion;
use crate::AppState;
use std::time::Duration;

/// What the sweep deletes.
#[derive(Clone, Copy, Debug)]
pub struct RetentionPolicy {
    /// Age in days after which studies and finished predictions (and runs, if opted in) go.
    pub days: f64,
    /// Training runs (their checkpoints and logs) go too.
    pub include_runs: bool,
}

impl RetentionPolicy {
    /// The policy from the command line, or `None` when no retention period is set. A period
    /// that is not a positive number is an error naming the flag.
    pub fn from_args(
        days: Option<f64>,
        include_runs: bool,
    ) -> std::result::Result<Option<Self>, PolicyError> {
        match days {
            None => {
                if include_runs {
                    return Err(PolicyError::RunsWithoutDays);
                }
                Ok(None)
            }
            Some(d) if d.is_finite() && d > 0.0 => Ok(Some(Self {
                days: d,
                include_runs,
            })),
            Some(d) => Err(PolicyError::Days(d)),
        }
    }
}

/// A retention flag `cggm serve` refuses.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("--retention-include-runs needs --retention-days N")]
    RunsWithoutDays,
    #[error("--retention-days must be a positive number of days, got {0}")]
    Days(f64),
}

/// What one sweep deleted (ids), and what it skipped because a job uses it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub studies: Vec<i64>,
    pub predictions: Vec<i64>,
    pub runs: Vec<i64>,
    pub skipped: Vec<String>,
}

/// Deletes what is older than the policy's period at time `now` (seconds since the Unix epoch;
/// the periodic task passes the clock, tests pass the time they want).
pub async fn sweep(state: &AppState, policy: RetentionPolicy, now: f64) -> Result<SweepReport> {
    let cutoff = now - policy.days * 86_400.0;
    let mut report = SweepReport::default();
    let predictions =
        crate::job_store::finished_before(&state.pool, JobKind::Infer, cutoff).await?;
    for id in predictions {
        match deletion::finished_job(state, id, JobKind::Infer, "prediction").await {
            Ok(job) => {
                deletion::remove_job(state, &job).await?;
                report.predictions.push(id);
            }
            Err(Error::Conflict(why)) => report.skipped.push(why),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let studies: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM studies WHERE created_at < ? ORDER BY id")
            .bind(cutoff)
            .fetch_all(&state.pool)
            .await?;
    for (id,) in studies {
        match deletion::remove_study(state, id).await {
            Ok(()) => report.studies.push(id),
            Err(Error::Conflict(why)) => report.skipped.push(why),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if policy.include_runs {
        let runs = crate::job_store::finished_before(&state.pool, JobKind::Train, cutoff).await?;
        for id in runs {
            match deletion::remove_run(state, id).await {
                Ok(()) => report.runs.push(id),
                Err(Error::Conflict(why)) => report.skipped.push(why),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

/// Sweeps now and then every `every`, for the life of the server.
pub fn spawn_periodic(state: AppState, policy: RetentionPolicy, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            match sweep(&state, policy, db::now()).await {
                Ok(r) if r.studies.is_empty() && r.predictions.is_empty() && r.runs.is_empty() => {}
                Ok(r) => tracing::info!(
                    studies = ?r.studies,
                    predictions = ?r.predictions,
                    runs = ?r.runs,
                    skipped = ?r.skipped,
                    days = policy.days,
                    "retention: deleted data older than the retention period"
                ),
                Err(e) => tracing::warn!("retention sweep failed (retried next hour): {e}"),
            }
        }
    });
}
