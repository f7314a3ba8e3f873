//! Process plumbing shared by the server and the jobs it starts.

/// Set (to "1") in the environment of every job: the job's stdin is a pipe from the server, and
/// the job exits when it closes, so that no trainer outlives a killed server.
pub const PARENT_PIPE_ENV: &str = "CGGM_EXIT_WITH_PARENT";

/// In a job started by the server: a thread that waits for the server's pipe on stdin to close
/// (the server stopped, even by SIGKILL) and then ends the process. Without the variable, nothing.
pub fn exit_with_parent() {
    if std::env::var_os(PARENT_PIPE_ENV).is_none_or(|v| v != "1") {
        return;
    }
    std::thread::spawn(|| {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
        eprintln!(
            "cggm: the server that started this job has stopped; exiting (resume the run from its \
             last checkpoint)"
        );
        std::process::exit(143);
    });
}

/// A user's mistake (a bad dataset, a wrong flag) is reported as a message, not a stack trace:
/// unless `RUST_LIB_BACKTRACE` says otherwise, errors capture no backtrace even when
/// `RUST_BACKTRACE=1` is set for panics. Resolving one reads the binary's debug information —
/// 260 MB more peak memory for `cggm validate` on a bad folder with a debug build.
pub fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Edition 2021: safe; called first thing in `main`, before this program starts a thread.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Everything this process (server, trainer child, CLI) creates is its owner's alone: patient
/// data (the database, studies, predictions, runs, logs) must not be readable by other local
/// users, who never went through the token. Folders become 0700, files 0600.
#[allow(unsafe_code)]
pub fn private_files() {
    // SAFETY: `umask` only sets the process's file-mode mask and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}
