//! A run's split is data: written into the run directory when it starts, and read back by resume
//! and evaluation whatever happens to the dataset folder in between (real NIfTI cases from the
//! synthetic generator behind `cggm synth`, tiny preset, CPU).

use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::synth::{write_synthetic_dataset, SynthConfig};
use cggm_trainer::data::{read_saved_split, SavedSplit, SPLIT_FILE_NAME};
use cggm_trainer::events::{Event, EventSink};
use cggm_trainer::run::{dataset_split, run_split, train, TrainOptions};
use std::collections::BTreeSet;
use std::path::Path;

fn synth(dir: &Path, cases: usize, seed: u64) {
    write_synthetic_dataset(
        dir,
        &SynthConfig {
            cases,
            seed,
            size: [32, 32, 16],
            imbalance: 1.0,
        },
    )
    .unwrap();
}

/// Case ids whose slices the trainer cached (cache files are named `<case id>-<hash>.*`).
fn trained_case_ids(cache: &Path) -> BTreeSet<String> {
    std::fs::read_dir(cache)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.rsplit_once('-').map(|(id, _)| id.to_string())
        })
        .filter(|id| id.starts_with("BraTS"))
        .collect()
}

#[test]
fn resume_keeps_the_saved_split_when_cases_are_added_and_refuses_when_one_disappears() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, 8, 5);
    let mut cfg = TrainConfig::preset("tiny").unwrap();
    cfg.data = data.clone();
    cfg.device = "cpu".into();
    cfg.epochs = 2;
    cfg.steps_per_epoch = Some(1);
    cfg.split.val_fraction = 0.25;
    cfg.split.test_fraction = 0.25;
    let cache = tmp.path().join("cache");
    cfg.sampler.cache_dir = Some(cache.clone());
    let run = tmp.path().join("run");
    let events = EventSink::file(&tmp.path().join("events.jsonl")).unwrap();

    // Arrange: a run stopped after its first epoch has saved its split.
    let stopped = train(
        cfg.clone(),
        &run,
        &events,
        &TrainOptions {
            resume: false,
            stop_after_epochs: Some(1),
        },
    )
    .unwrap();
    assert!(stopped.is_none());
    let saved: SavedSplit = read_saved_split(&run).unwrap().expect("split.json written");
    assert_eq!(
        (saved.train.len(), saved.val.len(), saved.test.len()),
        (4, 2, 2)
    );

    // A case of the split disappears: resuming is an error that names it and the fix.
    let gone = saved.val[0].clone();
    let parked = tmp.path().join("parked");
    std::fs::rename(data.join(&gone), &parked).unwrap();
    let err = train(
        cfg.clone(),
        &run,
        &events,
        &TrainOptions {
            resume: true,
            stop_after_epochs: None,
        },
    )
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&gone), "{message}");
    assert!(message.contains("Restore the case's files"), "{message}");
    std::fs::rename(&parked, data.join(&gone)).unwrap();

    // Cases are added (uploads into the same dataset): re-splitting would now shuffle them in.
    let more = tmp.path().join("more");
    synth(&more, 12, 9);
    for i in 8..12 {
        let id = format!("BraTS2021_{i:05}");
        std::fs::rename(more.join(&id), data.join(&id)).unwrap();
    }
    let reshuffled = SavedSplit::of(&dataset_split(&cfg).unwrap());
    assert_ne!(
        reshuffled, saved,
        "the test needs a dataset change that a fresh split would notice"
    );

    // Act: resume and finish.
    let metrics = train(
        cfg.clone(),
        &run,
        &events,
        &TrainOptions {
            resume: true,
            stop_after_epochs: None,
        },
    )
    .unwrap()
    .expect("finished");

    // Assert: same split on disk, for evaluation, in the run's events; no test case trained on.
    assert_eq!(read_saved_split(&run).unwrap(), Some(saved.clone()));
    assert_eq!(
        SavedSplit::of(&run_split(&cfg, &run, false).unwrap()),
        saved
    );
    let tested: Vec<String> = metrics
        .test
        .expect("test split evaluated")
        .cases
        .iter()
        .map(|c| c.case.clone())
        .collect();
    assert_eq!(tested, saved.test);
    let trained = trained_case_ids(&cache);
    assert_eq!(
        trained,
        saved.train.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(saved.test.iter().all(|id| !trained.contains(id)));
    let text = std::fs::read_to_string(tmp.path().join("events.jsonl")).unwrap();
    let train_counts: Vec<usize> = text
        .lines()
        .filter_map(|l| match serde_json::from_str(l).unwrap() {
            Event::RunStarted { train_cases, .. } => Some(train_cases),
            _ => None,
        })
        .collect();
    assert_eq!(train_counts, vec![4, 4]);
    assert!(run.join(SPLIT_FILE_NAME).exists());
}
