//! The baselines' hyper-parameters (OGM-GE, AGM, PMR): plain configuration; the methods are the
//! trainer's `baselines`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BaselineConfig {
    /// OGM-GE's alpha (strength of the suppression of the leading modality).
    pub ogm_alpha: f64,
    /// OGM-GE's generalisation enhancement (Gaussian noise on the encoder gradients).
    pub ogm_noise: bool,
    /// AGM's alpha.
    pub agm_alpha: f64,
    /// OGM-GE modulates in epochs `ogm_start_epoch..=ogm_end_epoch` (0-based), as
    /// BalanceBenchmark's `modulation_starts` / `modulation_ends` (10 and 80); outside them it is
    /// joint training (its classifiers still train).
    pub ogm_start_epoch: usize,
    pub ogm_end_epoch: usize,
    /// PMR's alpha (weight of the prototypical cross-entropy).
    pub pmr_alpha: f64,
    /// PMR's per-modality weight rule.
    pub pmr_weight_rule: PmrWeightRule,
    /// PMR's prototype momentum per update (the paper: 0.5 per epoch-start recomputation; here an
    /// update per step, hence a slower average).
    pub pmr_momentum: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            ogm_alpha: 0.3,
            ogm_noise: true,
            agm_alpha: 0.1,
            ogm_start_epoch: 10,
            ogm_end_epoch: 80,
            pmr_alpha: 0.6,
            pmr_weight_rule: PmrWeightRule::Clip,
            pmr_momentum: 0.9,
        }
    }
}

/// How PMR weighs each modality's prototypical cross-entropy (before alpha).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PmrWeightRule {
    /// BalanceBenchmark: `clip(s_max / s_i - 1, 0, 1)`.
    #[default]
    Clip,
    /// The reference code: 1 for every modality whose score is below the leader's, 0 for the
    /// leader (and for all on a tie).
    Step,
}
