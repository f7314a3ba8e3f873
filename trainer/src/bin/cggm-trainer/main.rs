//! `cggm-trainer`: the half of the `cggm` command that links libtorch (train, eval, infer, bench,
//! devices). Users run `cggm`, which starts this binary (it lies beside it) for these subcommands;
//! the web server and the data commands never load libtorch.

mod bench;
mod commands;
mod export_command;
mod loader_bench;
mod run_commands;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "cggm",
    // Users reach this binary as `cggm <subcommand>`: its help and errors say so.
    bin_name = "cggm",
    version,
    about = "CGGM Studio: training, evaluation, inference and benchmarks (libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() {
    cggm_core::process::quiet_error_backtraces();
    cggm_core::process::private_files();
    cggm_core::process::exit_with_parent();
    let result = commands::run(Cli::parse().command);
    let code = match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("Error: {error:?}");
            1
        }
    };
    exit_without_library_destructors(code)
}

/// Ends the process without running the C and C++ exit handlers. libtorch and its CUDA libraries
/// tear down their static state there, touching pages nothing else used: measured, that raised the
/// peak memory of every libtorch command by ~110 MB. Nothing of ours depends on them: Rust's own
/// values are dropped before this is called, and the standard streams are flushed here.
#[allow(unsafe_code)]
fn exit_without_library_destructors(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and does not return; the only effect skipped is the
    // exit handlers described above.
    unsafe { libc::_exit(code) }
}
