//! The segmentation loss's configuration (its computation is the trainer's `task::segmentation`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentationLoss {
    pub ce_weight: f64,
    pub dice_weight: f64,
    /// Cross-entropy weight per class (background, NCR, ED, ET).
    pub class_weights: Vec<f64>,
    /// numbers (issue 8): which soft Dice the loss uses.
    #[serde(default)]
    pub dice: SoftDice,
}

/// The soft Dice term of the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoftDice {
    /// Mean over foreground classes of (2 I_c + 1) / (P_c + T_c + 1).
    #[default]
    PerClassMean,
    /// The authors' code: 2 sum_c I_c / (sum_c P_c + sum_c T_c + 0.01).
    AuthorsPooled,
}

impl Default for SegmentationLoss {
    fn default() -> Self {
        Self {
            ce_weight: 0.5,
            dice_weight: 0.5,
            class_weights: vec![0.2, 0.3, 0.25, 0.25],
            dice: SoftDice::PerClassMean,
        }
    }
}
