//! The reduced precision a run may compute in (autocast itself is the trainer's `amp`).

use serde::{Deserialize, Serialize};

/// The reduced precision autocast computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmpDtype {
    /// bfloat16: for GPUs with native bf16 (NVIDIA Ampere and later).
    #[default]
    Bf16,
    /// float16 with dynamic loss scaling: for older GPUs.
    Fp16,
}

impl std::str::FromStr for AmpDtype {
    type Err = crate::unknown_name::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "fp16" | "float16" | "half" => Ok(Self::Fp16),
            other => Err(crate::unknown_name::UnknownName::new(
                "autocast dtype",
                other,
                "use bf16 or fp16",
            )),
        }
    }
}
