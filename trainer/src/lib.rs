//! CGGM Studio trainer: multimodal models, classifier-guided gradient modulation (CGGM, NeurIPS
//! 2024), the baselines, the run loop, checkpoints, evaluation and inference, on libtorch (tch).
//! Everything free of tensors (configuration, data, events, metrics, run directories) is the core
//! crate's; its modules are re-exported here so that `cggm_trainer::data` and `crate::data` name one
//! thing.

pub use cggm_core::{config, data, events, metrics, progress, request, rundir};

pub mod amp;
pub mod baselines;
pub mod cggm;
pub mod checkpoint;
pub mod device;
pub mod eval;
pub mod eval_features;
pub mod export;
pub mod features_data;
pub mod fine_tune;
mod fused_optim;
pub mod infer;
pub mod model;
pub mod optim;
pub mod predict;
pub mod run;
pub mod run_features;
pub mod run_loop;
pub mod step;
pub mod task;
pub mod tracking;
