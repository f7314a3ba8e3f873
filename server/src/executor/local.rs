//! The local executor's bookkeeping: each job's child process is recorded (pid and start time) so
//! that, after the server was killed, a restarted server can tell whether that trainer still runs
//! and stop it before the job can be resumed: one run directory never gets two trainers.
//!
//! (The trainer also exits by itself when the server's pipe on its stdin closes, and it locks its
//! run directory; this is the third guard, for a trainer that is slow to notice.)

use sqlx::SqlitePool;
use std::time::Duration;

/// Records a started child as the job's current execution.
pub async fn record(pool: &SqlitePool, job_id: i64, pid: u32) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO job_executions (job_id, executor, pid, pid_start, submitted_at, updated_at)
         VALUES (?, 'local', ?, ?, ?, ?)",
    )
    .bind(job_id)
    .bind(i64::from(pid))
    .bind(start_time(pid).map(|t| t as i64))
    .bind(crate::db::now())
    .bind(crate::db::now())
    .execute(pool)
    .await?;
    Ok(())
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`), and its state
/// letter; None when no such process exists.
fn stat(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: read after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(start, _)| start)
}

/// Whether `pid` is alive (not a zombie), is the process that was recorded (same start time) and
/// its command line mentions `needle` (the job's run or prediction folder).
pub fn is_ours(pid: u32, recorded_start: Option<u64>, needle: &str) -> bool {
    let Some((start, state)) = stat(pid) else {
        return false;
    };
    if state == 'Z' || recorded_start.is_some_and(|recorded| recorded != start) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    String::from_utf8_lossy(&cmdline).contains(needle)
}

fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((_, state)) if state != 'Z')
}

async fn signal(pid: u32, name: &str) {
    // The `kill` command: sending a signal directly needs unsafe code, which the workspace denies.
    let _ = tokio::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// Stops a trainer a previous server left running: SIGTERM, then SIGKILL after `grace`; returns
/// once it is gone. True when there was one to stop.
pub async fn stop_leftover(
    pid: u32,
    recorded_start: Option<u64>,
    needle: &str,
    grace: Duration,
) -> bool {
    if !is_ours(pid, recorded_start, needle) {
        return false;
    }
    tracing::warn!(
        pid,
        "a job process of the previous server still runs; stopping it"
    );
    signal(pid, "TERM").await;
    let until = std::time::Instant::now() + grace;
    while alive(pid) && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid) {
        signal(pid, "KILL").await;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell whose command line holds `marker`, once it has exec'd (before that, the forked
    /// child still shows the test binary's command line).
    fn sleeper(marker: &str) -> std::process::Child {
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 60; true", marker])
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{}/cmdline", child.id()))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        {
            assert!(std::time::Instant::now() < until, "the shell did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[tokio::test]
    async fn a_leftover_process_with_the_recorded_start_time_is_stopped() {
        let mut child = sleeper("/runs/job-41");
        let pid = child.id();
        let start = start_time(pid);
        assert!(start.is_some());
        assert!(is_ours(pid, start, "/runs/job-41"));
        assert!(stop_leftover(pid, start, "/runs/job-41", Duration::from_secs(5)).await);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the process was stopped by a signal");
    }

    #[tokio::test]
    async fn a_recycled_pid_or_another_command_is_left_alone() {
        let mut child = sleeper("/runs/job-42");
        let pid = child.id();
        let start = start_time(pid).unwrap();
        assert!(!stop_leftover(pid, Some(start + 1), "/runs/job-42", Duration::from_secs(1)).await);
        assert!(!stop_leftover(pid, Some(start), "/runs/job-7", Duration::from_secs(1)).await);
        assert!(
            alive(pid),
            "a process that is not the job's trainer is not touched"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
