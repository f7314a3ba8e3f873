//! CGGM Studio trainer: NIfTI/BraTS data, multimodal segmentation models, classifier-guided
//! gradient modulation (CGGM, NeurIPS 2024), evaluation and inference.

pub mod amp;
pub mod baselines;
pub mod cggm;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod eval_features;
pub mod events;
pub mod export;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod predict;
pub mod progress;
pub mod request;
pub mod run;
pub mod run_features;
pub mod rundir;
pub mod step;
pub mod task;
