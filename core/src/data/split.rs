//! Train / validation / test splits: reproducible from a seed and ratios, or read from a file; and
//! the split a run saved (`split.json` in its run directory), which everything after the start of
//! the run reads, whatever happened to the dataset folder since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{CaseSource, DataError};

#[derive(Clone, Debug)]
pub struct Split {
    pub train: Vec<CaseSource>,
    pub val: Vec<CaseSource>,
    pub test: Vec<CaseSource>,
}

/// Splits `cases` reproducibly: sorted by id (so discovery order never matters), shuffled by
/// `seed`, then `round(n * test_fraction)` test cases, `round(n * val_fraction)` validation cases
/// (at least one when there are two or more cases) and the rest for training (at least one). Each
/// part is returned sorted by id.
pub fn split_cases(
    cases: &[CaseSource],
    seed: u64,
    val_fraction: f64,
    test_fraction: f64,
) -> Split {
    let mut sorted: Vec<CaseSource> = cases.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    sorted.shuffle(&mut rng);
    let n = sorted.len();
    let clamp = |f: f64| {
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let mut n_test = (n as f64 * clamp(test_fraction)).round() as usize;
    let mut n_val = (n as f64 * clamp(val_fraction)).round() as usize;
    if n < 2 {
        (n_test, n_val) = (0, 0);
    } else {
        n_val = n_val.max(1);
        // Keep at least one training case; trim test first, validation never below one.
        while n_test + n_val > n - 1 {
            if n_test > 0 {
                n_test -= 1;
            } else {
                n_val -= 1;
            }
        }
    }
    let by_id = |mut v: Vec<CaseSource>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let test = sorted.split_off(n - n_test);
    let val = sorted.split_off(sorted.len() - n_val);
    Split {
        train: by_id(sorted),
        val: by_id(val),
        test: by_id(test),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitFile {
    #[serde(default)]
    train: Vec<String>,
    #[serde(default, alias = "validation")]
    val: Vec<String>,
    #[serde(default)]
    test: Vec<String>,
}

/// Reads a split file `{"train": [ids], "val": [ids], "test": [ids]}`. Every id must name one of
/// `cases`, and no id may appear twice; cases not named are left out.
pub fn split_from_file(cases: &[CaseSource], file: &Path) -> Result<Split, DataError> {
    let error = |detail: String| DataError::SplitFile {
        file: file.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(file).map_err(|e| error(e.to_string()))?;
    let parsed: SplitFile = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
    let by_id: HashMap<&str, &CaseSource> = cases.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    let mut resolve = |ids: &[String], part: &'static str| -> Result<Vec<CaseSource>, DataError> {
        ids.iter()
            .map(|id| {
                if let Some(other) = seen.insert(id.clone(), part) {
                    return Err(error(format!(
                        "case {id} is listed in both {other} and {part}"
                    )));
                }
                by_id
                    .get(id.as_str())
                    .map(|c| (*c).clone())
                    .ok_or_else(|| error(format!("case {id} (in {part}) is not in the dataset")))
            })
            .collect()
    };
    let split = Split {
        train: resolve(&parsed.train, "train")?,
        val: resolve(&parsed.val, "val")?,
        test: resolve(&parsed.test, "test")?,
    };
    if split.train.is_empty() {
        return Err(error("the train list is empty".into()));
    }
    Ok(split)
}

/// File name of a run's saved split, inside the run directory.
pub const SPLIT_FILE_NAME: &str = "split.json";

/// A run's split as data: the case ids of each part, written when the run starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSplit {
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
}

impl SavedSplit {
    pub fn of(split: &Split) -> Self {
        let ids = |v: &[CaseSource]| v.iter().map(|c| c.id.clone()).collect();
        Self {
            train: ids(&split.train),
            val: ids(&split.val),
            test: ids(&split.test),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SavedSplitError {
    #[error("the run's split {} lists case {case} in its {part} part, but {} no longer holds that case. Restore the case's files (same folder name), or start a new run (a run's split is fixed when it starts, so that no test case is ever trained on).", file.display(), data.display())]
    MissingCase {
        case: String,
        part: &'static str,
        file: PathBuf,
        data: PathBuf,
    },
    #[error("cannot read the run's split {}: {detail}. It is written when a run starts; restore it from a backup or start a new run.", file.display())]
    Unreadable { file: PathBuf, detail: String },
    #[error("cannot write the run's split {}: {detail}. Check that the run directory is writable.", file.display())]
    Unwritable { file: PathBuf, detail: String },
}

/// Writes `split` as `run_dir/split.json` (atomically: a temporary file renamed into place).
pub fn write_saved_split(run_dir: &Path, split: &Split) -> Result<SavedSplit, SavedSplitError> {
    let file = run_dir.join(SPLIT_FILE_NAME);
    let saved = SavedSplit::of(split);
    let error = |e: &dyn std::fmt::Display| SavedSplitError::Unwritable {
        file: file.clone(),
        detail: e.to_string(),
    };
    let text = serde_json::to_string_pretty(&saved).map_err(|e| error(&e))?;
    let tmp = run_dir.join(format!(".{SPLIT_FILE_NAME}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| error(&e))?;
    std::fs::rename(&tmp, &file).map_err(|e| error(&e))?;
    Ok(saved)
}

/// Reads `run_dir/split.json`; `Ok(None)` when the run has none (a run from before splits were
/// saved).
pub fn read_saved_split(run_dir: &Path) -> Result<Option<SavedSplit>, SavedSplitError> {
    let file = run_dir.join(SPLIT_FILE_NAME);
    if !file.exists() {
        return Ok(None);
    }
    let error = |detail: String| SavedSplitError::Unreadable {
        file: file.clone(),
        detail,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| error(e.to_string()))
}

/// The saved split's cases among the discovered `cases`. Cases added to the folder since are left
/// out; a listed case that disappeared is an error naming it.
pub fn resolve_saved_split(
    cases: &[CaseSource],
    saved: &SavedSplit,
    run_dir: &Path,
    data: &Path,
) -> Result<Split, SavedSplitError> {
    let by_id: HashMap<&str, &CaseSource> = cases.iter().map(|c| (c.id.as_str(), c)).collect();
    let resolve = |ids: &[String], part: &'static str| {
        ids.iter()
            .map(|id| {
                by_id.get(id.as_str()).map(|c| (*c).clone()).ok_or_else(|| {
                    SavedSplitError::MissingCase {
                        case: id.clone(),
                        part,
                        file: run_dir.join(SPLIT_FILE_NAME),
                        data: data.to_path_buf(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Split {
        train: resolve(&saved.train, "train")?,
        val: resolve(&saved.val, "val")?,
        test: resolve(&saved.test, "test")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::CaseFiles;

    fn case(id: &str) -> CaseSource {
        CaseSource {
            id: id.into(),
            files: CaseFiles::Msd4d {
                image: PathBuf::from(format!("{id}.nii.gz")),
                label: None,
                channels: crate::data::MSD_CHANNELS,
            },
        }
    }

    #[test]
    fn a_saved_split_ignores_new_cases_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<CaseSource> = (0..10).map(|i| case(&format!("c{i}"))).collect();
        let split = split_cases(&cases, 3, 0.2, 0.2);
        let saved = write_saved_split(dir.path(), &split).unwrap();
        assert_eq!(read_saved_split(dir.path()).unwrap(), Some(saved.clone()));
        let mut grown = cases.clone();
        grown.push(case("c10"));
        let again = resolve_saved_split(&grown, &saved, dir.path(), Path::new("data")).unwrap();
        assert_eq!(SavedSplit::of(&again), saved);
        let gone = &saved.test[0];
        let shrunk: Vec<CaseSource> = cases.iter().filter(|c| &c.id != gone).cloned().collect();
        let err = resolve_saved_split(&shrunk, &saved, dir.path(), Path::new("data"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(gone.as_str()) && err.contains("test"), "{err}");
        assert!(err.contains("Restore"), "{err}");
    }
}
