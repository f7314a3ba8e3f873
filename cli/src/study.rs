//! `cggm study`: launches a method comparison (a "study": methods x seeds, optionally x a
//! rho/lambda grid) on a running `cggm serve` through its API, and with `--wait` prints the
//! aggregate when every run has finished. (The runs go through the server's executor: the local
//! queue, or Slurm when the server runs with `--executor slurm`.)

use crate::api::Api;
use anyhow::Context;
use std::time::Duration;

#[derive(Clone, Debug, clap::Args)]
pub struct StudyArgs {
    /// The server's address.
    #[arg(long, env = "CGGM_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The dataset, by name or number (GET /api/datasets lists them).
    #[arg(long)]
    pub dataset: String,
    /// Methods to compare (joint first: paired differences are against joint).
    #[arg(long, value_delimiter = ',', default_value = "joint,cggm")]
    pub methods: Vec<String>,
    /// Seeds; each method runs once per seed.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    /// CGGM's rho values to cross with the CGGM methods.
    #[arg(long, value_delimiter = ',')]
    pub rho: Vec<f64>,
    /// CGGM's lambda values to cross with the CGGM methods.
    #[arg(long, value_delimiter = ',')]
    pub lambda: Vec<f64>,
    /// The preset every run starts from (`cggm train --help` lists them; default: the
    /// trainer's default for the dataset's task).
    #[arg(long)]
    pub preset: Option<String>,
    /// Epochs of every run (default: the preset's).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Training steps per epoch of every run (default: the preset's).
    #[arg(long)]
    pub steps_per_epoch: Option<u64>,
    /// Device of every run: auto, cpu or cuda:N (default: the server's choice).
    #[arg(long)]
    pub device: Option<String>,
    /// The study's name on the compare page (default: "joint vs cggm on DATASET").
    #[arg(long)]
    pub name: Option<String>,
    /// Wait until every run has finished, then print the aggregate as CSV.
    #[arg(long)]
    pub wait: bool,
}

pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server)?;
    let base = api.base.clone();
    let dataset_id = dataset_id(&api, &args.dataset)?;
    let made = api.post(
        "/api/comparisons",
        &serde_json::json!({
            "name": args.name, "dataset_id": dataset_id, "methods": args.methods,
            "seeds": args.seeds, "rho": args.rho, "lambda": args.lambda,
            "options": run_options(&args),
        }),
    )?;
    let id = made["id"]
        .as_i64()
        .context("the server gave no comparison id")?;
    println!(
        "study {id}: {} runs queued; aggregate at {base}/comparisons/{id}",
        made["jobs"].as_array().map_or(0, Vec::len)
    );
    // The server owns the warnings (too few seeds, ...): print what its aggregate says.
    let aggregate = api.get(&format!("/api/comparisons/{id}"))?;
    for warning in aggregate["warnings"].as_array().into_iter().flatten() {
        if let Some(text) = warning.as_str() {
            eprintln!("warning: {text}");
        }
    }
    if args.wait {
        wait_and_print_csv(&api, id)?;
    }
    Ok(())
}

/// `--dataset`: an id, or the name of one of the server's datasets.
fn dataset_id(api: &Api, dataset: &str) -> anyhow::Result<i64> {
    if let Ok(id) = dataset.parse::<i64>() {
        return Ok(id);
    }
    let datasets = api.get("/api/datasets")?;
    datasets
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == dataset)
        .and_then(|d| d["id"].as_i64())
        .with_context(|| {
            format!(
                "no dataset named {dataset:?} on {} (see its Datasets page)",
                api.base
            )
        })
}

/// The runs' options the flags set (preset, epochs, steps per epoch, device).
fn run_options(args: &StudyArgs) -> serde_json::Map<String, serde_json::Value> {
    let mut options = serde_json::Map::new();
    if let Some(p) = &args.preset {
        options.insert("preset".into(), p.clone().into());
    }
    if let Some(e) = args.epochs {
        options.insert("epochs".into(), e.into());
    }
    if let Some(s) = args.steps_per_epoch {
        options.insert("steps_per_epoch".into(), s.into());
    }
    if let Some(d) = &args.device {
        options.insert("device".into(), d.clone().into());
    }
    options
}

/// `--wait`: polls the comparison until every run is done, then prints its CSV.
fn wait_and_print_csv(api: &Api, id: i64) -> anyhow::Result<()> {
    loop {
        let aggregate = api.get(&format!("/api/comparisons/{id}"))?;
        if aggregate["done"] == true {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let csv = api.get_text(&format!("/api/comparisons/{id}/csv"))?;
    print!("{csv}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StudyArgs;
    use clap::{Args, Command};

    #[test]
    fn every_study_option_has_help() {
        let cmd = StudyArgs::augment_args(Command::new("study"));
        for arg in cmd.get_arguments() {
            assert!(
                arg.get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty()),
                "--{} has no help",
                arg.get_id()
            );
        }
    }
}
