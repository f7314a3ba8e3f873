//! `cggm`: the one user-facing binary. `serve` runs the web application (the server crate), `study`
//! drives one through its API; synth, validate, train, eval, infer and bench run the trainer.

use cggm_cli::{commands, study};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cggm",
    version,
    about = "CGGM Studio: multimodal brain-tumour MRI segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large trainer arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the web application (http://127.0.0.1:8080 by default).
    Serve(cggm_server::ServeArgs),
    /// Launch a method comparison (methods x seeds on one dataset) on a running server.
    Study(study::StudyArgs),
    #[command(flatten)]
    Trainer(commands::Command),
}

fn main() {
    quiet_error_backtraces();
    private_files();
    let result = run(Cli::parse());
    // Everything of ours is dropped by now (files flushed and closed, the server's runtime and
    // its jobs stopped); report the error as `main` returning it would.
    let code = match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("Error: {error:?}");
            1
        }
    };
    exit_without_library_destructors(code)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,tower_http=info,sqlx=warn".into()),
                )
                .with_writer(std::io::stderr)
                // Colour codes only for a person at a terminal, never in a log file or journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            // The server links no libtorch: the trainer tells it which CUDA devices this machine has.
            let cuda_devices = cggm_trainer::device::cuda_devices();
            tokio::runtime::Runtime::new()?.block_on(cggm_server::serve(args, cuda_devices))
        }
        Command::Study(args) => study::run(args),
        Command::Trainer(command) => {
            cggm_server::exit_with_parent();
            commands::run(command)
        }
    }
}

/// A user's mistake (a bad dataset, a wrong flag) is reported as a message, not a stack trace:
/// unless `RUST_LIB_BACKTRACE` says otherwise, errors capture no backtrace even when
/// `RUST_BACKTRACE=1` is set for panics. Resolving one reads the binary's debug information —
/// 260 MB more peak memory for `cggm validate` on a bad folder with a debug build.
fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Edition 2021: safe; called first thing in `main`, before this program starts a thread.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Everything this process (server, trainer child, CLI) creates is its owner's alone: patient
/// data (the database, studies, predictions, runs, logs) must not be readable by other local
/// users, who never went through the token. Folders become 0700, files 0600.
#[allow(unsafe_code)]
fn private_files() {
    // SAFETY: `umask` only sets the process's file-mode mask and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Ends the process without running the C and C++ exit handlers. libtorch and its CUDA libraries
/// tear down their static state there, touching pages nothing else used: measured, that raised the
/// peak memory of every `cggm` command by ~110 MB (`cggm serve`: 393 MB while running, 502 MB
/// peak after exit; `cggm validate`: ~500 MB instead of ~390 MB). Nothing of ours depends on
/// them: Rust's own values are dropped before this is called, and the standard streams are
/// flushed here.
#[allow(unsafe_code)]
fn exit_without_library_destructors(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and does not return; the only effect skipped is the
    // exit handlers described above.
    unsafe { libc::_exit(code) }
}
