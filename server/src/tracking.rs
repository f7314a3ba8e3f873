//! Where training runs are logged (MLflow, TensorBoard): a server-wide setting. `cggm serve
//! --mlflow URI --tensorboard DIR` (or their environment variables) hands it to every training the
//! server starts, local or on Slurm, through the environment variables `cggm train` reads for its
//! own `--mlflow` / `--tensorboard` flags (trainer/src/tracking/mod.rs). A run folder's
//! `tracking.json`, written by the trainer, says where that run went.

use std::path::{Path, PathBuf};

/// The `cggm serve` flags. Their variables are the trainer's own: set in the server's
/// environment, they reach the jobs even without the flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TrackingArgs {
    /// Log every training run to this MLflow tracking server (http://HOST:PORT).
    #[arg(long, env = "CGGM_MLFLOW_URI", value_name = "URI")]
    pub mlflow: Option<String>,
    /// The MLflow experiment of the server's runs (default: cggm-studio).
    #[arg(long, env = "CGGM_MLFLOW_EXPERIMENT", value_name = "NAME")]
    pub mlflow_experiment: Option<String>,
    /// Write every training run's TensorBoard event files into DIR/<run folder name>.
    #[arg(long, env = "CGGM_TENSORBOARD_DIR", value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
}

impl TrackingArgs {
    /// The variables every job gets (the TensorBoard folder absolute: a Slurm job starts
    /// elsewhere).
    pub fn job_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(uri) = &self.mlflow {
            env.push(("CGGM_MLFLOW_URI".to_string(), uri.clone()));
        }
        if let Some(name) = &self.mlflow_experiment {
            env.push(("CGGM_MLFLOW_EXPERIMENT".to_string(), name.clone()));
        }
        if let Some(dir) = &self.tensorboard {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            env.push((
                "CGGM_TENSORBOARD_DIR".to_string(),
                dir.display().to_string(),
            ));
        }
        env
    }
}

/// What a run folder's `tracking.json` says, in a line for the run page; None when the run was
/// not tracked.
pub fn describe(run_dir: &Path) -> Option<String> {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("tracking.json")).ok()?).ok()?;
    let mut parts = Vec::new();
    if let (Some(uri), Some(run)) = (
        record["mlflow"]["uri"].as_str(),
        record["mlflow"]["run_id"].as_str(),
    ) {
        parts.push(format!("logged to MLflow run {run} at {uri}"));
    }
    if let Some(dir) = record["tensorboard"].as_str() {
        parts.push(format!("TensorBoard events in {dir}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_setting_becomes_the_trainers_variables() {
        let args = TrackingArgs {
            mlflow: Some("http://127.0.0.1:5000".into()),
            mlflow_experiment: None,
            tensorboard: Some("tb".into()),
        };
        let env = args.job_env();
        assert_eq!(
            env[0],
            ("CGGM_MLFLOW_URI".into(), "http://127.0.0.1:5000".into())
        );
        assert_eq!(env[1].0, "CGGM_TENSORBOARD_DIR");
        assert!(Path::new(&env[1].1).is_absolute());
        assert!(TrackingArgs::default().job_env().is_empty());
    }

    #[test]
    fn a_tracked_run_folder_is_described_in_a_line() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(describe(dir.path()), None);
        std::fs::write(
            dir.path().join("tracking.json"),
            r#"{"mlflow":{"uri":"http://127.0.0.1:5000","experiment_id":"1","run_id":"abc"}}"#,
        )
        .unwrap();
        assert_eq!(
            describe(dir.path()).unwrap(),
            "logged to MLflow run abc at http://127.0.0.1:5000"
        );
    }
}
