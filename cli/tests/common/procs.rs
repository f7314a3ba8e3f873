//! Processes as /proc shows them: a process's state, parent and memory, and the live processes
//! whose command line matches (trainers working in a run directory).

use std::path::Path;

/// The fields of `/proc/<pid>/stat` after the command name (state, ppid, ...); the name may hold
/// spaces and parentheses, so the split is after the last ')'.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next().unwrap_or("");
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// Alive and not a zombie.
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z" | "X")))
}

/// Direct children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            stat_fields(*pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(parent)
        })
        .collect()
}

/// Live (not zombie) processes whose command line (arguments joined by spaces) satisfies `matches`.
pub fn live_processes(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            matches(&String::from_utf8_lossy(&cmdline).replace('\0', " ")) && is_running(*pid)
        })
        .collect()
}

/// Live (not zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    live_processes(|cmdline| cmdline.contains(needle))
}

/// Where the server keeps job `id`'s run, as its trainers' command lines name it (the API does
/// not show server paths).
pub fn run_dir_of(data_dir: &Path, id: i64) -> String {
    data_dir
        .canonicalize()
        .unwrap()
        .join(format!("runs/job-{id}"))
        .display()
        .to_string()
}

/// A memory figure of `/proc/<pid>/status` in MB: `VmHWM` (peak resident) or `VmRSS` (resident).
pub fn memory_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb / 1024.0
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
}
