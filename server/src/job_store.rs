//! Every query that reads or changes a job's state: the queue's transitions (queued → running →
//! a terminal state, resume back to queued) and the selections by state (the queue, what retention
//! may delete, what a deletion must wait for). States are bound from [`JobState`], never typed
//! into the SQL, so that the database, the code and `/api/vocabulary` share one list.

use crate::db::{self, Job, JobKind, JobState};
use sqlx::{SqliteConnection, SqlitePool};

/// `state IN` one of a list, bound as one JSON array (see [`JobState::json_list`]); a macro so
/// that the queries stay static strings.
macro_rules! state_in {
    () => {
        "state IN (SELECT value FROM json_each(?))"
    };
}

/// Ids of the jobs in `state`, oldest first.
pub async fn ids_in(pool: &SqlitePool, state: JobState) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM jobs WHERE state = ? ORDER BY id")
        .bind(state.as_str())
        .fetch_all(pool)
        .await
}

/// The jobs marked running, with their output folders, oldest first.
pub async fn running(pool: &SqlitePool) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query_as("SELECT id, out_dir FROM jobs WHERE state = ? ORDER BY id")
        .bind(JobState::Running.as_str())
        .fetch_all(pool)
        .await
}

/// How many jobs are in `state`.
pub async fn count(pool: &SqlitePool, state: JobState) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = ?")
        .bind(state.as_str())
        .fetch_one(pool)
        .await
}

/// Moves the job from `from` to `to` (stamping `started_at` when it starts, `finished_at` when it
/// ends); false when it was not in `from` (someone else moved it first).
async fn transition(
    pool: &SqlitePool,
    job_id: i64,
    from: JobState,
    to: JobState,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let sql = if to.is_terminal() {
        "UPDATE jobs SET state = ?, finished_at = ?, error = COALESCE(?, error)
         WHERE id = ? AND state = ?"
    } else {
        "UPDATE jobs SET state = ?, started_at = ?, error = COALESCE(?, error)
         WHERE id = ? AND state = ?"
    };
    let done = sqlx::query(sql)
        .bind(to.as_str())
        .bind(db::now())
        .bind(error)
        .bind(job_id)
        .bind(from.as_str())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A queued job is cancelled; false when it was no longer queued.
pub async fn cancel_queued(pool: &SqlitePool, job_id: i64) -> sqlx::Result<bool> {
    transition(pool, job_id, JobState::Queued, JobState::Cancelled, None).await
}

/// A queued job is claimed to run; false when it was cancelled or claimed meanwhile (so that no
/// second trainer ever runs in its directory).
pub async fn claim(pool: &SqlitePool, job_id: i64) -> sqlx::Result<bool> {
    transition(pool, job_id, JobState::Queued, JobState::Running, None).await
}

/// A job marked running whose process this server lost is marked interrupted, with why.
pub async fn interrupt(pool: &SqlitePool, job_id: i64, error: &str) -> sqlx::Result<bool> {
    transition(
        pool,
        job_id,
        JobState::Running,
        JobState::Interrupted,
        Some(error),
    )
    .await
}

/// The job ended in `state` with the process's exit code and error (if any).
pub async fn finish(
    pool: &SqlitePool,
    job_id: i64,
    state: JobState,
    code: Option<i64>,
    error: Option<String>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = ?, finished_at = ?, exit_code = ?, error = ? WHERE id = ?",
    )
    .bind(state.as_str())
    .bind(db::now())
    .bind(code)
    .bind(error)
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a new job is.
pub struct NewJob<'a> {
    pub kind: JobKind,
    pub params: &'a serde_json::Value,
    pub dataset_id: Option<i64>,
    pub study_id: Option<i64>,
    pub checkpoint_job_id: Option<i64>,
}

/// Inserts a queued job unless `max_queued` jobs wait already (the count and the insert are one
/// statement, so concurrent requests cannot pass the limit together); its id, or None when full.
/// The caller sets its `out_dir` (it names the id).
pub async fn insert_queued(
    tx: &mut SqliteConnection,
    job: NewJob<'_>,
    max_queued: i64,
) -> sqlx::Result<Option<i64>> {
    let inserted = sqlx::query(
        "INSERT INTO jobs (kind, state, params, dataset_id, study_id, checkpoint_job_id, out_dir, created_at)
         SELECT ?, ?, ?, ?, ?, ?, '', ?
         WHERE (SELECT COUNT(*) FROM jobs WHERE state = ?) < ?",
    )
    .bind(job.kind)
    .bind(JobState::Queued.as_str())
    .bind(job.params.to_string())
    .bind(job.dataset_id)
    .bind(job.study_id)
    .bind(job.checkpoint_job_id)
    .bind(db::now())
    .bind(JobState::Queued.as_str())
    .bind(max_queued)
    .execute(&mut *tx)
    .await?;
    Ok((inserted.rows_affected() == 1).then(|| inserted.last_insert_rowid()))
}

/// Queues a stopped job again with new `params`, if it is still in `from` and fewer than
/// `max_queued` jobs wait; false otherwise.
pub async fn requeue(
    pool: &SqlitePool,
    job_id: i64,
    from: JobState,
    params: &serde_json::Value,
    max_queued: i64,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE jobs SET state = ?, params = ?, finished_at = NULL, exit_code = NULL, error = NULL
         WHERE id = ? AND state = ?
           AND (SELECT COUNT(*) FROM jobs WHERE state = ?) < ?",
    )
    .bind(JobState::Queued.as_str())
    .bind(params.to_string())
    .bind(job_id)
    .bind(from.as_str())
    .bind(JobState::Queued.as_str())
    .bind(max_queued)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Ids of the finished jobs of `kind` that finished (or, never started, were created) before
/// `cutoff`, oldest first: what retention may delete.
pub async fn finished_before(
    pool: &SqlitePool,
    kind: JobKind,
    cutoff: f64,
) -> sqlx::Result<Vec<i64>> {
    let sql = concat!(
        "SELECT id FROM jobs WHERE kind = ? AND ",
        state_in!(),
        " AND COALESCE(finished_at, created_at) < ? ORDER BY id"
    );
    sqlx::query_scalar(sql)
        .bind(kind)
        .bind(JobState::json_list(&JobState::TERMINAL))
        .bind(cutoff)
        .fetch_all(pool)
        .await
}

/// What a queued or running job may use (and so may not be deleted under it).
#[derive(Clone, Copy, Debug)]
pub enum Input {
    Study,
    Dataset,
    /// The training run whose checkpoint an inference job reads.
    Checkpoint,
}

/// Ids of queued or running jobs that use the study, dataset or run `id`.
pub async fn active_using(pool: &SqlitePool, input: Input, id: i64) -> sqlx::Result<Vec<i64>> {
    let sql = match input {
        Input::Study => concat!(
            "SELECT id FROM jobs WHERE ",
            state_in!(),
            " AND study_id = ? ORDER BY id"
        ),
        Input::Dataset => concat!(
            "SELECT id FROM jobs WHERE ",
            state_in!(),
            " AND dataset_id = ? ORDER BY id"
        ),
        Input::Checkpoint => concat!(
            "SELECT id FROM jobs WHERE ",
            state_in!(),
            " AND checkpoint_job_id = ? ORDER BY id"
        ),
    };
    sqlx::query_scalar(sql)
        .bind(JobState::json_list(&JobState::ACTIVE))
        .bind(id)
        .fetch_all(pool)
        .await
}

/// The successful segmentations of `study` by a stored model, newest first.
pub async fn segmentations_of(pool: &SqlitePool, study_id: i64) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(
        "SELECT * FROM jobs WHERE kind = ? AND state = ? AND study_id = ?
         AND checkpoint_job_id IS NOT NULL ORDER BY id DESC",
    )
    .bind(JobKind::Infer)
    .bind(JobState::Succeeded.as_str())
    .bind(study_id)
    .fetch_all(pool)
    .await
}

/// The successful segmentations of studies imported from the PACS, newest first, with each
/// study's name.
pub async fn pacs_segmentations(pool: &SqlitePool) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query_as(
        "SELECT j.id, s.name FROM jobs j JOIN pacs_imports p ON p.study_id = j.study_id
         JOIN studies s ON s.id = j.study_id
         WHERE j.kind = ? AND j.state = ? ORDER BY j.id DESC",
    )
    .bind(JobKind::Infer)
    .bind(JobState::Succeeded.as_str())
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(dir.path()).await.unwrap();
        (dir, pool)
    }

    async fn insert(pool: &SqlitePool, study: i64, max_queued: i64) -> Option<i64> {
        let mut conn = pool.acquire().await.unwrap();
        let job = NewJob {
            kind: JobKind::Infer,
            params: &serde_json::json!({}),
            dataset_id: None,
            study_id: Some(study),
            checkpoint_job_id: None,
        };
        insert_queued(&mut conn, job, max_queued).await.unwrap()
    }

    /// Every state is written and read back through the `jobs` table, and each selection by
    /// state (retention's terminal list, deletion's active list, the queue) sees exactly the
    /// states its list names.
    #[tokio::test]
    async fn every_state_goes_through_the_table_and_each_selection_sees_its_states() {
        let (_dir, pool) = pool().await;
        let study: i64 = sqlx::query_scalar(
            "INSERT INTO studies (name, dir, files, shape, created_at)
             VALUES ('s', '', '{}', '[]', 0) RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let params = serde_json::json!({});
        let id = insert(&pool, study, 1).await.expect("the queue has room");
        assert_eq!(
            insert(&pool, study, 1).await,
            None,
            "a full queue refuses the insert"
        );
        assert_eq!(db::job(&pool, id).await.unwrap().state, JobState::Queued);
        assert_eq!(ids_in(&pool, JobState::Queued).await.unwrap(), vec![id]);
        assert_eq!(count(&pool, JobState::Queued).await.unwrap(), 1);

        assert!(claim(&pool, id).await.unwrap());
        assert!(!claim(&pool, id).await.unwrap(), "claimed once");
        assert!(!cancel_queued(&pool, id).await.unwrap(), "no longer queued");
        assert_eq!(running(&pool).await.unwrap(), vec![(id, String::new())]);
        assert!(interrupt(&pool, id, "the server stopped").await.unwrap());
        let job = db::job(&pool, id).await.unwrap();
        assert_eq!(job.state, JobState::Interrupted);
        assert_eq!(job.error.as_deref(), Some("the server stopped"));
        assert!(requeue(&pool, id, JobState::Interrupted, &params, 1)
            .await
            .unwrap());
        assert!(cancel_queued(&pool, id).await.unwrap());

        for state in JobState::ALL {
            finish(&pool, id, state, None, None).await.unwrap();
            assert_eq!(db::job(&pool, id).await.unwrap().state, state);
            let stored: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(stored, state.as_str());
            let old = finished_before(&pool, JobKind::Infer, db::now() + 1.0)
                .await
                .unwrap();
            assert_eq!(old.contains(&id), state.is_terminal(), "{state}");
            let users = active_using(&pool, Input::Study, study).await.unwrap();
            assert_eq!(users.contains(&id), !state.is_terminal(), "{state}");
            assert_eq!(count(&pool, state).await.unwrap(), 1, "{state}");
        }
    }

    /// A row whose state is not one of the list is refused (naming the column), not read as some
    /// state.
    #[tokio::test]
    async fn an_unknown_state_in_the_table_is_an_error_that_names_it() {
        let (_dir, pool) = pool().await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, state, params, out_dir, created_at)
             VALUES ('train', 'done', '{}', '', 0) RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let error = db::job(&pool, id).await.unwrap_err().to_string();
        assert!(error.contains("column state"), "{error}");
    }

    /// The migration documents the `state` column with the same list.
    #[test]
    fn the_migration_documents_the_same_states() {
        let sql = include_str!("../../migrations/20261126000001_initial.sql");
        let comment = sql
            .lines()
            .take_while(|line| !line.trim_start().starts_with("state "))
            .last()
            .unwrap();
        assert_eq!(
            comment.trim().trim_start_matches("-- "),
            JobState::names(),
            "migrations/20261126000001_initial.sql"
        );
    }
}
