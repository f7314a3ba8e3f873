//! Where a server job is in its life: the one list of job states. The server stores a state by its
//! name in `jobs.state` and binds it from here in every query; `/api/vocabulary` hands the same
//! list (with which states are terminal and resumable) to the browser, so neither the SQL nor the
//! JavaScript retypes it.

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Stored as its name in `jobs.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// A `jobs.state` value that is not one of [`JobState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?} (expected one of {names})", names = JobState::names())]
pub struct UnknownJobState(pub String);

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Interrupted,
    ];

    /// Waiting or running: the job may still change, be cancelled, hold its inputs.
    pub const ACTIVE: [JobState; 2] = [JobState::Queued, JobState::Running];

    /// Finished one way or another: nothing runs; retention may delete it.
    pub const TERMINAL: [JobState; 4] = [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Interrupted,
    ];

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

    /// The names, comma-separated (for messages).
    pub fn names() -> String {
        Self::ALL.map(JobState::as_str).join(", ")
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// A stopped training run that Resume may continue.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            JobState::Interrupted | JobState::Failed | JobState::Cancelled
        )
    }

    /// The states as a JSON array of names, for SQL's `state IN (SELECT value FROM json_each(?))`:
    /// one bound parameter however many states.
    pub fn json_list(states: &[JobState]) -> String {
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a row's text becomes a state (the server's `#[sqlx(try_from = "String")]`).
impl TryFrom<String> for JobState {
    type Error = UnknownJobState;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or(UnknownJobState(value))
    }
}

/// One job state as `/api/vocabulary` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobStateChoice {
    pub name: JobState,
    /// Finished: the page stops following it.
    pub terminal: bool,
    /// A stopped training run in this state may be resumed.
    pub resumable: bool,
}

impl JobStateChoice {
    pub fn all() -> Vec<Self> {
        JobState::ALL
            .into_iter()
            .map(|state| Self {
                name: state,
                terminal: state.is_terminal(),
                resumable: state.is_resumable(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_lists_partition_all_states() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(
                JobState::try_from(state.as_str().to_string()).unwrap(),
                state
            );
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            // Every state is active or terminal, never both.
            assert_ne!(JobState::ACTIVE.contains(&state), state.is_terminal());
            assert!(!state.is_resumable() || state.is_terminal());
        }
        assert!(JobState::try_from("done".to_string()).is_err());
        assert_eq!(
            JobState::json_list(&JobState::ACTIVE),
            r#"["queued","running"]"#
        );
    }
}
