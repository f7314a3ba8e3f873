//! A checkpoint is one unit even when the trainer is killed (SIGKILL) in the middle of writing
//! it: every state a crash can leave is laid out on disk here, and the next trainer to open the
//! run directory must find one consistent checkpoint (all files of one step). One run directory
//! belongs to one process at a time.

use std::path::Path;

use cggm_trainer::checkpoint::{checkpoint_dir, lock_run_dir};

const FILES: [&str; 3] = ["last.safetensors", "last.optim.safetensors", "last.json"];

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The step each checkpoint file belongs to (its content), `None` for a missing file.
fn steps(dir: &Path) -> Vec<Option<String>> {
    FILES
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect()
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pending-"))
        .collect();
    names.sort();
    names
}

fn old_checkpoint(run: &Path) -> std::path::PathBuf {
    let dir = checkpoint_dir(run);
    std::fs::create_dir_all(&dir).unwrap();
    for f in FILES {
        write(&dir, f, "step 100");
    }
    dir
}

#[test]
fn a_kill_between_the_renames_is_rolled_forward_to_the_new_step() {
    let run = tempfile::tempdir().unwrap();
    let dir = old_checkpoint(run.path());
    // All pending files were flushed (the pending JSON exists), the weights were renamed, then
    // the process died: new weights beside old optimiser state and old JSON.
    write(&dir, "last.safetensors", "step 200");
    write(&dir, ".pending-last.optim.safetensors", "step 200");
    write(&dir, ".pending-last.json", "step 200");

    let _lock = lock_run_dir(run.path()).unwrap();

    let new = Some("step 200".to_string());
    assert_eq!(steps(&dir), vec![new.clone(), new.clone(), new]);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_kill_while_writing_the_pending_files_keeps_the_previous_step() {
    let run = tempfile::tempdir().unwrap();
    let dir = old_checkpoint(run.path());
    // Died while writing the optimiser state: no pending JSON, so the new step is incomplete.
    write(&dir, ".pending-last.safetensors", "step 200");
    write(&dir, ".pending-last.optim.safetensors", "step 2");

    let _lock = lock_run_dir(run.path()).unwrap();

    let old = Some("step 100".to_string());
    assert_eq!(steps(&dir), vec![old.clone(), old.clone(), old]);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_second_process_cannot_take_a_run_directory_in_use() {
    let run = tempfile::tempdir().unwrap();
    let first = lock_run_dir(run.path()).unwrap();
    let err = lock_run_dir(run.path()).unwrap_err().to_string();
    assert!(
        err.contains("another process") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(first);
    lock_run_dir(run.path()).expect("free again once the first owner is gone");
}
