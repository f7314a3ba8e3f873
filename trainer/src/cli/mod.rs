//! The trainer's subcommands of the `cggm` binary. The binary itself lives in the server crate and
//! adds `serve`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {}
}
