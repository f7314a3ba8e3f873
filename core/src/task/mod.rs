//! The kinds of task (segmentation, classification, regression) and their metrics.

pub mod metrics;

/// The kinds of task the trainer serves (the paper's four benchmarks fall into these three). The
/// one vocabulary: the CLI, the run configuration, the server and the browser take it from here.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// BraTS-style NIfTI volumes, per-voxel labels (DeepLabv3+ encoders).
    #[default]
    Segmentation,
    /// Pre-extracted features per modality, one class per sample (Food-101, IEMOCAP).
    Classification,
    /// Pre-extracted features per modality, one real value per sample (CMU-MOSI sentiment).
    Regression,
}

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [
        TaskKind::Segmentation,
        TaskKind::Classification,
        TaskKind::Regression,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Segmentation => "segmentation",
            TaskKind::Classification => "classification",
            TaskKind::Regression => "regression",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TaskKind {
    type Err = crate::unknown_name::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        TaskKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                crate::unknown_name::UnknownName::new(
                    "task",
                    &s,
                    "use segmentation, classification or regression",
                )
            })
    }
}
