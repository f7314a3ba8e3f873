//! A comparison's request and the grid of runs it asks for: every method x seed, the CGGM methods
//! also x the rho/lambda grid, each cell a run request for `POST /api/jobs`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The most runs one comparison may queue (and at most `--max-queued-jobs` may wait in all).
pub const MAX_CELLS: usize = 100;

/// `POST /api/comparisons`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ComparisonRequest {
    #[serde(default)]
    pub name: Option<String>,
    pub dataset_id: i64,
    pub methods: Vec<String>,
    pub seeds: Vec<u64>,
    /// CGGM's rho values to cross with the CGGM methods (empty: the preset's).
    #[serde(default)]
    pub rho: Vec<f64>,
    /// CGGM's lambda values to cross with the CGGM methods (empty: the preset's).
    #[serde(default)]
    pub lambda: Vec<f64>,
    /// Run options every run shares (preset, epochs, steps_per_epoch, device, ...), as
    /// `POST /api/jobs` takes them.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// One run of the grid.
pub(super) struct Cell {
    pub arm: String,
    pub method: String,
    pub seed: u64,
    /// The run request without `dataset_id`.
    pub body: serde_json::Value,
}

/// The request's runs, checked for size and for options that belong in the request's own fields.
pub(super) fn cells(request: &ComparisonRequest) -> Result<Vec<Cell>> {
    check_fields(request)?;
    let methods: Vec<&String> = {
        let mut seen = BTreeSet::new();
        request.methods.iter().filter(|m| seen.insert(*m)).collect()
    };
    let seeds: Vec<u64> = {
        let mut seen = BTreeSet::new();
        request
            .seeds
            .iter()
            .copied()
            .filter(|s| seen.insert(*s))
            .collect()
    };
    let optional = |values: &[f64]| -> Vec<Option<f64>> {
        if values.is_empty() {
            vec![None]
        } else {
            values.iter().copied().map(Some).collect()
        }
    };
    let (rhos, lambdas) = (optional(&request.rho), optional(&request.lambda));
    // Counted before anything is built: a 64 KiB request can ask for billions of runs.
    let per_cggm = rhos.len().saturating_mul(lambdas.len());
    let count = methods
        .iter()
        .map(|m| if m.starts_with("cggm") { per_cggm } else { 1 })
        .fold(0usize, usize::saturating_add)
        .saturating_mul(seeds.len());
    if count > MAX_CELLS {
        return Err(Error::Unprocessable(format!(
            "{count} runs: at most {MAX_CELLS} per comparison; use fewer seeds or grid values"
        )));
    }
    let mut out = Vec::new();
    for method in methods {
        let grid: Vec<(Option<f64>, Option<f64>)> = if method.starts_with("cggm") {
            rhos.iter()
                .flat_map(|r| lambdas.iter().map(move |l| (*r, *l)))
                .collect()
        } else {
            vec![(None, None)]
        };
        for (rho, lambda) in grid {
            out.extend(arm_cells(request, method, rho, lambda, &seeds));
        }
    }
    Ok(out)
}

/// Methods and seeds are given, and the shared options leave the request's own fields alone.
fn check_fields(request: &ComparisonRequest) -> Result<()> {
    let unprocessable = |m: String| Error::Unprocessable(m);
    if request.methods.is_empty() {
        return Err(unprocessable(
            "methods is empty: choose at least one method (joint as the baseline)".into(),
        ));
    }
    if request.seeds.is_empty() {
        return Err(unprocessable(
            "seeds is empty: give at least one seed (three or more for an interval)".into(),
        ));
    }
    for key in ["method", "seed", "rho", "lambda", "dataset_id"] {
        if request.options.contains_key(key) {
            return Err(unprocessable(format!(
                "options.{key}: set it in the comparison's own field, not in the shared options"
            )));
        }
    }
    Ok(())
}

/// The runs of one arm (`method` with this rho and lambda, where given): one per seed.
fn arm_cells(
    request: &ComparisonRequest,
    method: &str,
    rho: Option<f64>,
    lambda: Option<f64>,
    seeds: &[u64],
) -> Vec<Cell> {
    let mut arm = method.to_string();
    if let Some(rho) = rho {
        arm.push_str(&format!(" rho={rho}"));
    }
    if let Some(lambda) = lambda {
        arm.push_str(&format!(" lambda={lambda}"));
    }
    seeds
        .iter()
        .map(|&seed| {
            let mut body = request.options.clone();
            body.insert("method".into(), method.into());
            body.insert("seed".into(), seed.into());
            if let Some(rho) = rho {
                body.insert("rho".into(), rho.into());
            }
            if let Some(lambda) = lambda {
                body.insert("lambda".into(), lambda.into());
            }
            Cell {
                arm: arm.clone(),
                method: method.to_string(),
                seed,
                body: serde_json::Value::Object(body),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_crosses_only_the_cggm_methods_and_every_arm_gets_every_seed() {
        let request: ComparisonRequest = serde_json::from_value(serde_json::json!({
            "dataset_id": 1, "methods": ["joint", "cggm"], "seeds": [1, 2],
            "rho": [1.0, 1.5], "options": {"preset": "tiny"}
        }))
        .unwrap();
        let made = cells(&request).unwrap();
        let arms: BTreeSet<&str> = made.iter().map(|c| c.arm.as_str()).collect();
        assert_eq!(
            arms,
            BTreeSet::from(["joint", "cggm rho=1", "cggm rho=1.5"])
        );
        assert_eq!(made.len(), 6);
        assert!(made.iter().all(|c| c.body["preset"] == "tiny"));
        let bad: ComparisonRequest = serde_json::from_value(serde_json::json!({
            "dataset_id": 1, "methods": ["joint"], "seeds": [], "options": {}
        }))
        .unwrap();
        assert!(cells(&bad).is_err());
    }
}
