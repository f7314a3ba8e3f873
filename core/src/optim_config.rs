//! Which optimiser a run uses and its hyper-parameters (the optimisers themselves are the trainer's).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = crate::unknown_name::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::Adamw),
            other => Err(crate::unknown_name::UnknownName::new(
                "optimizer",
                other,
                "use sgd, adam or adamw",
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 3e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }
}
