//! The `cggm` command's subcommands as a library (the binary is `main.rs`): the trainer's
//! (`commands`), benchmarks and `cggm study`. A library so that tests can drive a subcommand
//! in-process.

pub mod bench;
pub mod commands;
pub mod data_commands;
pub mod run_commands;
pub mod study;
