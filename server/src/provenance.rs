//! Where a prediction came from: the training run, the checkpoint of that run (`best` or `last`,
//! with the epoch and step it was saved at) and the run's method, preset and dataset. The
//! checkpoint is recorded in the prediction's parameters when it is queued (a run still training
//! may later save a newer one); the run's facts are read from the run when shown, so a renamed
//! run shows its new name.

use crate::db::{self, Job};
use cggm_core::rundir::RunDir;
use serde::Serialize;
use sqlx::SqlitePool;

/// The checkpoint a prediction of `run` uses, by the rule `cggm infer` applies
/// ([`RunDir::best_or_last`]: `best`, else `last`); with the epochs completed and the global step
/// when it was saved, where its state file says so.
pub fn chosen_checkpoint(run: &RunDir) -> Option<ChosenCheckpoint> {
    let name = run.best_or_last()?;
    let state: serde_json::Value = std::fs::read_to_string(run.checkpoint_state(name))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    Some(ChosenCheckpoint {
        name: name.as_str().to_string(),
        epoch: state["epoch"].as_u64(),
        step: state["global_step"].as_u64(),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChosenCheckpoint {
    /// `best` or `last`.
    pub name: String,
    /// Epochs completed when the checkpoint was saved.
    pub epoch: Option<u64>,
    pub step: Option<u64>,
}

impl ChosenCheckpoint {
    /// The fields a prediction's parameters keep (`checkpoint_name`, `checkpoint_epoch`,
    /// `checkpoint_step`).
    pub fn record(&self, params: &mut serde_json::Value) {
        params["checkpoint_name"] = self.name.clone().into();
        params["checkpoint_epoch"] = self.epoch.into();
        params["checkpoint_step"] = self.step.into();
    }

    fn recorded(params: &serde_json::Value) -> Option<Self> {
        Some(Self {
            name: params["checkpoint_name"].as_str()?.to_string(),
            epoch: params["checkpoint_epoch"].as_u64(),
            step: params["checkpoint_step"].as_u64(),
        })
    }

    /// "best checkpoint (after epoch 3, step 120)".
    pub fn describe(&self) -> String {
        let mut at = Vec::new();
        if let Some(e) = self.epoch {
            at.push(format!("after epoch {e}"));
        }
        if let Some(s) = self.step {
            at.push(format!("step {s}"));
        }
        if at.is_empty() {
            format!("{} checkpoint", self.name)
        } else {
            format!("{} checkpoint ({})", self.name, at.join(", "))
        }
    }
}

/// The run, checkpoint and method a prediction came from, as the prediction's JSON, its page and
/// its downloads name them.
#[derive(Clone, Debug, Serialize)]
pub struct PredictionSource {
    pub run_id: i64,
    /// The run's page.
    pub run_url: String,
    pub method: String,
    pub preset: String,
    pub dataset: String,
    /// Absent for predictions queued before the checkpoint was recorded.
    pub checkpoint: Option<ChosenCheckpoint>,
    /// "run #3 · cggm · preset tiny · dataset demo · best checkpoint (after epoch 1, step 2)".
    pub summary: String,
}

impl PredictionSource {
    /// The source of `prediction` given its run (`None` when the prediction names no run, or the
    /// run was deleted).
    pub fn new(prediction: &Job, run: Option<&Job>) -> Option<Self> {
        let run = run?;
        let p = run.params_json();
        let text = |key: &str| p[key].as_str().unwrap_or("").to_string();
        let checkpoint = ChosenCheckpoint::recorded(&prediction.params_json());
        let mut parts = vec![format!("run #{}", run.id)];
        for (label, value) in [
            ("", text("method")),
            ("preset ", text("preset")),
            ("dataset ", text("dataset")),
        ] {
            if !value.is_empty() {
                parts.push(format!("{label}{value}"));
            }
        }
        if let Some(c) = &checkpoint {
            parts.push(c.describe());
        }
        Some(Self {
            run_id: run.id,
            run_url: format!("/jobs/{}", run.id),
            method: text("method"),
            preset: text("preset"),
            dataset: text("dataset"),
            checkpoint,
            summary: parts.join(" · "),
        })
    }

    /// The source of `prediction`, reading its run from the database.
    pub async fn of(pool: &SqlitePool, prediction: &Job) -> Option<Self> {
        let run = match prediction.checkpoint_job_id {
            Some(id) => db::job(pool, id).await.ok(),
            None => None,
        };
        Self::new(prediction, run.as_ref())
    }

    /// The sources of `predictions`, in their order, reading all their runs in one query (a list
    /// of N predictions would otherwise cost N).
    pub async fn of_all(
        pool: &SqlitePool,
        predictions: &[Job],
    ) -> crate::error::Result<Vec<Option<Self>>> {
        let ids: Vec<i64> = predictions
            .iter()
            .filter_map(|p| p.checkpoint_job_id)
            .collect();
        let runs = db::jobs_by_id(pool, &ids).await?;
        Ok(predictions
            .iter()
            .map(|p| Self::new(p, p.checkpoint_job_id.and_then(|id| runs.get(&id))))
            .collect())
    }

    /// The segment algorithm name of a DICOM SEG (a LO of at most 64 characters):
    /// "CGGM Studio cggm run 7 best".
    pub fn algorithm(&self) -> String {
        let method = if self.method.is_empty() {
            "model"
        } else {
            &self.method
        };
        let mut name = format!("CGGM Studio {method} run {}", self.run_id);
        if let Some(c) = &self.checkpoint {
            name.push(' ');
            name.push_str(&c.name);
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cggm_core::rundir::CheckpointName;

    fn job(id: i64, params: serde_json::Value) -> Job {
        Job {
            id,
            kind: db::JobKind::Train,
            state: db::JobState::Succeeded,
            params: params.to_string(),
            dataset_id: None,
            study_id: None,
            checkpoint_job_id: None,
            out_dir: String::new(),
            created_at: 0.0,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
        }
    }

    #[test]
    fn the_best_checkpoint_is_chosen_before_the_last_with_its_epoch_and_step() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(chosen_checkpoint(&run), None);
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        std::fs::write(run.weights(CheckpointName::Last), "w").unwrap();
        std::fs::write(run.checkpoint_state(CheckpointName::Last), "{}").unwrap();
        assert_eq!(chosen_checkpoint(&run).unwrap().name, "last");
        // Best's weights are in place but its state file is not written yet: `cggm infer` would
        // still load last, and so the prediction names last.
        std::fs::write(run.weights(CheckpointName::Best), "w").unwrap();
        assert_eq!(chosen_checkpoint(&run).unwrap().name, "last");
        std::fs::write(
            run.checkpoint_state(CheckpointName::Best),
            r#"{"epoch": 3, "global_step": 120}"#,
        )
        .unwrap();
        let best = chosen_checkpoint(&run).unwrap();
        assert_eq!(
            best,
            ChosenCheckpoint {
                name: "best".into(),
                epoch: Some(3),
                step: Some(120)
            }
        );
        assert_eq!(best.describe(), "best checkpoint (after epoch 3, step 120)");
    }

    /// The list's sources (one query for all runs) are those each prediction gets alone: runs
    /// shared by several predictions and a prediction naming no run.
    #[tokio::test]
    async fn a_list_of_predictions_gets_the_sources_each_gets_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(dir.path()).await.unwrap();
        let insert = |kind: &'static str, params: serde_json::Value, run: Option<i64>| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "INSERT INTO jobs (kind, state, params, checkpoint_job_id, out_dir, created_at)
                     VALUES (?, 'succeeded', ?, ?, '', 0) RETURNING id",
                )
                .bind(kind)
                .bind(params.to_string())
                .bind(run)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        let run = |method: &str| serde_json::json!({"method": method, "preset": "tiny", "dataset": "demo"});
        let a = insert("train", run("cggm"), None).await;
        let b = insert("train", run("joint"), None).await;
        let mut recorded = serde_json::json!({"study": "p1"});
        ChosenCheckpoint {
            name: "best".into(),
            epoch: Some(2),
            step: Some(8),
        }
        .record(&mut recorded);
        for (params, of) in [
            (recorded.clone(), Some(a)),
            (serde_json::json!({"study": "p2"}), Some(b)),
            (recorded, Some(b)),
            (serde_json::json!({}), None),
        ] {
            insert("infer", params, of).await;
        }
        let predictions = db::jobs(&pool, Some(db::JobKind::Infer)).await.unwrap();
        assert_eq!(predictions.len(), 4);
        let listed = PredictionSource::of_all(&pool, &predictions).await.unwrap();
        let mut alone = Vec::new();
        for p in &predictions {
            alone.push(PredictionSource::of(&pool, p).await);
        }
        let json = |sources: &[Option<PredictionSource>]| serde_json::to_value(sources).unwrap();
        assert_eq!(json(&listed), json(&alone));
        assert_eq!(listed.iter().filter(|s| s.is_some()).count(), 3);
    }

    #[test]
    fn a_prediction_names_its_run_method_and_recorded_checkpoint() {
        let run = job(
            7,
            serde_json::json!({"method": "cggm", "preset": "tiny", "dataset": "demo"}),
        );
        let mut params = serde_json::json!({"study": "p1"});
        ChosenCheckpoint {
            name: "last".into(),
            epoch: Some(1),
            step: None,
        }
        .record(&mut params);
        let source = PredictionSource::new(&job(9, params), Some(&run)).unwrap();
        assert_eq!(source.run_url, "/jobs/7");
        assert_eq!(
            source.summary,
            "run #7 · cggm · preset tiny · dataset demo · last checkpoint (after epoch 1)"
        );
        assert_eq!(source.algorithm(), "CGGM Studio cggm run 7 last");
        // Queued before checkpoints were recorded: the run alone.
        let old = PredictionSource::new(&job(10, serde_json::json!({})), Some(&run)).unwrap();
        assert_eq!(old.checkpoint, None);
        assert!(PredictionSource::new(&job(11, serde_json::json!({})), None).is_none());
    }
}
