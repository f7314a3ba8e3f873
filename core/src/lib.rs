//! CGGM Studio's core, free of libtorch: what the server, the CLI and the trainer share. The
//! vocabulary (methods, presets, tasks, modalities, devices), the run configuration and the options
//! a request may set, events, run directories, the data layer (NIfTI, BraTS, MSD, nnU-Net and
//! feature datasets) and the metrics. The trainer (tch) builds on it; the server links only this.

pub mod atomic;
pub mod balance;
pub mod baseline_config;
pub mod config;
pub mod data;
pub mod data_commands;
pub mod device_spec;
pub mod events;
pub mod job_state;
pub mod loss;
pub mod metrics;
pub mod model_config;
pub mod optim_config;
pub mod precision;
pub mod preset;
pub mod process;
pub mod progress;
pub mod request;
pub mod rundir;
pub mod task;
pub mod unknown_name;
