//! Train / validation / test splits: reproducible from a seed and ratios, or read from a file.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

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
