//! The layout of a run directory, owned by one type that the trainer and the server both use:
//!
//! | path | written by | what |
//! | --- | --- | --- |
//! | `request.json` | the server | the run configuration the server built and checked (`cggm train --config`) |
//! | `config.json` | the trainer | the run's effective `TrainConfig` (resume reads it) |
//! | `split.json` | the trainer | the case ids of each split |
//! | `checkpoints/{best,last}.safetensors` | the trainer | weights |
//! | `checkpoints/{best,last}.json` | the trainer | config, epoch, step and scores at save time |
//! | `checkpoints/last.optim.safetensors` | the trainer | optimiser state |
//! | `metrics.json` | the trainer | best validation and test scores (the run's report) |
//! | `events.jsonl` | the trainer | progress events, when a run logs to its folder |
//! | `eval-<split>.json` | `cggm eval` | a later evaluation's report |

use serde::Serialize;
use std::path::{Path, PathBuf};

/// A run's directory. Cheap to make; it touches the disk only when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// The two checkpoints a run keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointName {
    /// The best validation score so far (used for the test, evaluation and inference).
    Best,
    /// The end of the latest epoch, with the optimiser state (used to resume).
    Last,
}

impl CheckpointName {
    pub const ALL: [CheckpointName; 2] = [CheckpointName::Best, CheckpointName::Last];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointName::Best => "best",
            CheckpointName::Last => "last",
        }
    }
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configuration the server built for the trainer (`cggm train --config request.json`).
    pub fn request(&self) -> PathBuf {
        self.root.join("request.json")
    }

    /// The run's effective configuration, written by the trainer when it starts.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn split(&self) -> PathBuf {
        self.root.join("split.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.json")
    }

    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// `eval-<split>.json` (`split`: test, val, all).
    pub fn eval_report(&self, split: &str) -> PathBuf {
        self.root
            .join(format!("eval-{}.json", split.to_ascii_lowercase()))
    }

    /// The test cases' predicted segmentations, written by the final test of a segmentation run
    /// (`<case>_seg.nii.gz`, see [`saved_prediction_name`]).
    pub fn test_predictions(&self) -> PathBuf {
        self.root.join("test-predictions")
    }

    /// One test case's saved prediction.
    pub fn test_prediction(&self, case: &str) -> PathBuf {
        self.test_predictions().join(saved_prediction_name(case))
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn weights(&self, name: CheckpointName) -> PathBuf {
        self.checkpoints()
            .join(format!("{}.safetensors", name.as_str()))
    }

    /// The checkpoint's state (config, epoch, step, scores); written last, it names the step the
    /// other files belong to.
    pub fn checkpoint_state(&self, name: CheckpointName) -> PathBuf {
        self.checkpoints().join(format!("{}.json", name.as_str()))
    }

    pub fn optimizer_state(&self, name: CheckpointName) -> PathBuf {
        self.checkpoints()
            .join(format!("{}.optim.safetensors", name.as_str()))
    }

    /// Whether the checkpoint's weights are on disk.
    pub fn has_weights(&self, name: CheckpointName) -> bool {
        self.weights(name).is_file()
    }

    /// The checkpoint evaluation, inference, export, fine-tuning and a prediction's provenance
    /// read: `best`, else `last` (a run still in its first validation period), else None (no
    /// checkpoint yet). A checkpoint counts once its state file is on disk: it is written last,
    /// after the weights it names.
    pub fn best_or_last(&self) -> Option<CheckpointName> {
        CheckpointName::ALL
            .into_iter()
            .find(|name| self.checkpoint_state(*name).is_file())
    }

    /// The run's `metrics.json` as JSON, if it has been written and parses.
    pub fn read_metrics(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.metrics()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the server's run configuration (creating the directory).
    pub fn write_request<T: Serialize>(&self, config: &T) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.root)?;
        let path = self.request();
        crate::atomic::write_json_atomic(&path, config)?;
        Ok(path)
    }
}

/// The name of a case's saved prediction inside the folder given to
/// [`evaluate_saving_predictions`].
pub fn saved_prediction_name(case: &str) -> String {
    format!("{case}_seg.nii.gz")
}

/// Environment variable of the crash tests' hook: `NAME:N:STAGE:MARKER` makes the N-th save of
/// checkpoint NAME ("last" or "best") stop at STAGE — `weights` (the new weights are on disk, the
/// optimiser state and JSON are not) or `json` (every pending file is on disk, none renamed) —
/// write MARKER, and wait there to be killed. Unset in normal use.
pub const PAUSE_IN_CHECKPOINT_ENV: &str = "CGGM_TEST_PAUSE_IN_CHECKPOINT";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_lives_under_the_run_directory_with_its_documented_name() {
        let run = RunDir::new("/runs/job-3");
        assert_eq!(run.config(), Path::new("/runs/job-3/config.json"));
        assert_eq!(run.request(), Path::new("/runs/job-3/request.json"));
        assert_eq!(run.metrics(), Path::new("/runs/job-3/metrics.json"));
        assert_eq!(run.split(), Path::new("/runs/job-3/split.json"));
        assert_eq!(
            run.weights(CheckpointName::Best),
            Path::new("/runs/job-3/checkpoints/best.safetensors")
        );
        assert_eq!(
            run.checkpoint_state(CheckpointName::Last),
            Path::new("/runs/job-3/checkpoints/last.json")
        );
        assert_eq!(
            run.optimizer_state(CheckpointName::Last),
            Path::new("/runs/job-3/checkpoints/last.optim.safetensors")
        );
        assert_eq!(
            run.eval_report("Test"),
            Path::new("/runs/job-3/eval-test.json")
        );
        assert_eq!(
            run.test_prediction("BraTS2021_00001"),
            Path::new("/runs/job-3/test-predictions/BraTS2021_00001_seg.nii.gz")
        );
    }

    #[test]
    fn best_is_chosen_before_last_once_its_state_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run.best_or_last(), None);
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        std::fs::write(run.weights(CheckpointName::Last), "w").unwrap();
        assert_eq!(run.best_or_last(), None, "weights without their state file");
        std::fs::write(run.checkpoint_state(CheckpointName::Last), "{}").unwrap();
        assert_eq!(run.best_or_last(), Some(CheckpointName::Last));
        // A best checkpoint being saved: its weights are in place, its state file is not yet.
        std::fs::write(run.weights(CheckpointName::Best), "w").unwrap();
        assert_eq!(run.best_or_last(), Some(CheckpointName::Last));
        std::fs::write(run.checkpoint_state(CheckpointName::Best), "{}").unwrap();
        assert_eq!(run.best_or_last(), Some(CheckpointName::Best));
    }

    #[test]
    fn a_written_request_is_read_back_and_missing_metrics_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("job-1"));
        assert!(run.read_metrics().is_none());
        assert!(!run.has_weights(CheckpointName::Last));
        let path = run
            .write_request(&serde_json::json!({ "epochs": 2 }))
            .unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(back["epochs"], 2);
        std::fs::write(run.metrics(), r#"{"best_epoch": 1}"#).unwrap();
        assert_eq!(run.read_metrics().unwrap()["best_epoch"], 1);
    }
}
