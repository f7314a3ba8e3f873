//! Fine-tuning (`--init-from RUN`): a new run starts from another run's weights, only when the
//! networks are the same, and says why not otherwise.

use cggm_trainer::checkpoint::read_config;
use cggm_trainer::config::{Method, TrainConfig};
use cggm_trainer::data::synth::{write_synthetic_dataset, SynthConfig};
use cggm_trainer::events::{Event, EventSink};
use cggm_trainer::fine_tune::init_from;
use cggm_trainer::model::Model;
use cggm_trainer::run::{train, TrainOptions};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use tch::Tensor;

/// libtorch's random generator is global: runs in one test process must not interleave.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(data: &Path, method: Method, seed: u64) -> TrainConfig {
    let mut cfg = TrainConfig::preset("tiny").unwrap();
    cfg.data = data.to_path_buf();
    cfg.device = "cpu".into();
    cfg.method = method;
    cfg.seed = seed;
    cfg.epochs = 1;
    cfg.steps_per_epoch = Some(2);
    cfg.val_cases = Some(1);
    cfg.sampler.cache_dir = Some(data.join("../cache"));
    cfg
}

fn source_run(tmp: &Path, method: Method, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = tmp.join("data");
    if !data.exists() {
        write_synthetic_dataset(
            &data,
            &SynthConfig {
                cases: 6,
                seed: 5,
                size: [40, 40, 20],
                imbalance: 1.0,
            },
        )
        .unwrap();
    }
    let run = tmp.join(name);
    let events = EventSink::file(&tmp.join(format!("{name}.jsonl"))).unwrap();
    let mut cfg = tiny(&data, method, 1);
    // No probe classifiers: a joint source then holds the network only.
    cfg.probes = false;
    train(cfg, &run, &events, &TrainOptions::default())
        .unwrap()
        .unwrap();
    (data, run)
}

fn saved_weights(run: &Path) -> HashMap<String, Tensor> {
    let name = if run.join("checkpoints/best.json").exists() {
        "best"
    } else {
        "last"
    };
    Tensor::read_safetensors(run.join(format!("checkpoints/{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

fn differing(model: &Model, saved: &HashMap<String, Tensor>) -> Vec<String> {
    let mut names: Vec<String> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, value)| saved.get(name).is_none_or(|s| !s.equal(value)))
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

#[test]
fn a_model_started_from_a_run_holds_that_runs_weights() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let (data, source) = source_run(tmp.path(), Method::Cggm, "source");
    let saved = saved_weights(&source);
    // Another seed: a fresh model differs from the source everywhere, so equality below is the
    // loading's doing.
    let mut model = Model::segmentation(tiny(&data, Method::Cggm, 77), tch::Device::Cpu);
    assert!(
        differing(&model, &saved).len() > saved.len() / 2,
        "a fresh model of another seed should not equal the trained one"
    );
    let from = init_from(&source, &mut model).unwrap();
    assert!(from.classifiers, "both runs train classifiers: {from:?}");
    assert_eq!(
        differing(&model, &saved),
        Vec::<String>::new(),
        "every tensor, batch-norm statistics included, comes from the source"
    );

    // Joint training has no classifiers to give: a CGGM run from it keeps its own, freshly
    // initialised, and takes the whole network.
    let (_, joint) = source_run(tmp.path(), Method::Joint, "joint");
    let joint_saved = saved_weights(&joint);
    let mut model = Model::segmentation(tiny(&data, Method::Cggm, 78), tch::Device::Cpu);
    let from = init_from(&joint, &mut model).unwrap();
    assert!(!from.classifiers, "{from:?}");
    let left = differing(&model, &joint_saved);
    assert!(!left.is_empty() && left.iter().all(|n| n.starts_with("classifiers.")));
}

#[test]
fn a_run_with_init_from_trains_from_the_source_and_records_it() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let (data, source) = source_run(tmp.path(), Method::Cggm, "source");
    let mut cfg = tiny(&data, Method::Joint, 9);
    cfg.init_from = Some(source.clone());
    let run = tmp.path().join("fine-tuned");
    let events_path = tmp.path().join("fine-tuned.jsonl");
    let events = EventSink::file(&events_path).unwrap();
    train(cfg, &run, &events, &TrainOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(read_config(&run).unwrap().init_from, Some(source.clone()));
    let text = std::fs::read_to_string(&events_path).unwrap();
    let started = text
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap())
        .find_map(|e| match e {
            Event::RunStarted { config, .. } => Some(config),
            _ => None,
        })
        .expect("run_started");
    assert_eq!(
        started["init_from"],
        serde_json::json!(source.display().to_string())
    );
}

#[test]
fn init_from_refuses_another_network_a_folder_that_is_no_run_and_a_run_without_checkpoint() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let (data, source) = source_run(tmp.path(), Method::Cggm, "source");
    let train_with = |cfg: TrainConfig, name: &str| {
        let events = EventSink::file(&tmp.path().join(format!("{name}.jsonl"))).unwrap();
        train(
            cfg,
            &tmp.path().join(name),
            &events,
            &TrainOptions::default(),
        )
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
        .unwrap_err()
    };

    let mut other = TrainConfig::preset("cpu-small").unwrap();
    other.data = data.clone();
    other.device = "cpu".into();
    other.init_from = Some(source.clone());
    let error = train_with(other, "other-network");
    assert!(
        error.contains("cannot start from that run") && error.contains("\"tiny\""),
        "{error}"
    );

    let mut cfg = tiny(&data, Method::Cggm, 2);
    cfg.init_from = Some(data.clone());
    let error = train_with(cfg, "not-a-run");
    assert!(error.contains("not a run directory"), "{error}");

    let empty = tmp.path().join("no-checkpoint");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(source.join("config.json"), empty.join("config.json")).unwrap();
    let mut cfg = tiny(&data, Method::Cggm, 3);
    cfg.init_from = Some(empty);
    let error = train_with(cfg, "from-empty");
    assert!(error.contains("no checkpoint yet"), "{error}");
}
