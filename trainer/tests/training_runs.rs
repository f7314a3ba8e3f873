//! Whole training runs on small synthetic BraTS datasets (CPU): learning, checkpoint -> infer ->
//! eval agreement, exact resume, and refusing to clobber a run.

mod step_common;

use cggm_trainer::checkpoint::read_config;
use cggm_trainer::config::TrainConfig;
use cggm_trainer::data::{brats_to_internal, read_volume, OutputLabels};
use cggm_trainer::eval::evaluate;
use cggm_trainer::events::{Event, EventSink};
use cggm_trainer::infer::{infer, infer_dataset};
use cggm_trainer::metrics::dice_scores;
use cggm_trainer::model::Model;
use cggm_trainer::run::{dataset_split, train, TrainOptions};
use cggm_trainer::rundir::RunDir;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// libtorch's random generator is global: runs in one test process must not interleave.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn dataset(dir: &Path, cases: usize, size: [usize; 3], seed: u64) {
    step_common::synthetic_dataset(dir, cases, size, seed, 1.0);
}

fn tiny(data: &Path, epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig::preset("tiny").unwrap();
    cfg.data = data.to_path_buf();
    cfg.device = "cpu".into();
    cfg.epochs = epochs;
    cfg.sampler.cache_dir = Some(data.join("../cache"));
    cfg
}

fn read_events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn cpu_small_learns_to_segment_synthetic_tumours() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 10, [64, 64, 40], 3);
    let mut cfg = TrainConfig::preset("cpu-small").unwrap();
    cfg.data = data.clone();
    cfg.device = "cpu".into();
    cfg.epochs = 3;
    cfg.steps_per_epoch = Some(20);
    cfg.sampler.cache_dir = Some(tmp.path().join("cache"));
    let events_path = tmp.path().join("events.jsonl");
    let events = EventSink::file(&events_path).unwrap();
    let metrics = train(
        cfg,
        &tmp.path().join("run"),
        &events,
        &TrainOptions::default(),
    )
    .unwrap()
    .unwrap();
    let best = metrics.best_val_dice.unwrap();
    // Chance level (the class prior everywhere) is a Dice of a few percent on these phantoms;
    // an untrained model predicts no tumour at all (0).
    println!("best validation Dice after 60 steps: {best:?}");
    assert!(
        best.wt > 0.5,
        "whole-tumour Dice {:.3} should be > 0.5",
        best.wt
    );
    assert!(
        best.mean > 0.3,
        "mean Dice {:.3} should be > 0.3",
        best.mean
    );
    let evs = read_events(&events_path);
    assert!(matches!(evs.first(), Some(Event::RunStarted { .. })));
    assert!(matches!(evs.last(), Some(Event::Finished { .. })));
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(e, Event::Step { .. }))
            .count(),
        60
    );
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(e, Event::Validation { .. }))
            .count(),
        3
    );
    // issue 20: B's diagnostics after every epoch (cumulative, the epoch as the window), and
    // over the whole run in metrics.json, with the plain sentence.
    let diagnostics: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::BalanceDiagnostics {
                step, diagnostics, ..
            } => Some((*step, diagnostics.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        diagnostics
            .iter()
            .map(|(s, d)| (*s, d.steps, d.window_steps))
            .collect::<Vec<_>>(),
        vec![(20, 20, 20), (40, 40, 20), (60, 60, 20)]
    );
    let run_level = metrics
        .balance_diagnostics
        .clone()
        .expect("a run with classifiers reports B's diagnostics");
    assert_eq!(run_level.steps, 60);
    assert_eq!(run_level.balance_mean.len(), 4);
    // The same z over the same 60 steps, computed along two paths (the run's and the last
    // window's running sums): equal up to rounding.
    let (run_z, window_z) = (
        run_level.total_improvement_z.unwrap(),
        diagnostics[2].1.total_improvement_z.unwrap(),
    );
    assert!(
        (run_z - window_z).abs() <= 1e-12 * run_z.abs().max(1.0),
        "{run_z} vs {window_z}"
    );
    assert!(
        run_level.summary.starts_with("B_i carried"),
        "{}",
        run_level.summary
    );
    let on_disk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("run/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        on_disk["balance_diagnostics"]["summary"],
        run_level.summary.as_str()
    );
    for e in &evs {
        if let Event::Step {
            balance,
            cosine,
            modality_metric,
            ..
        } = e
        {
            assert_eq!(balance.len(), 4);
            assert_eq!(cosine.len(), 4);
            assert_eq!(modality_metric.len(), 4);
            assert!(balance
                .values()
                .all(|b| b.is_finite() && (0.0..=1.0).contains(b)));
        }
    }
}

#[test]
fn inference_from_a_checkpoint_agrees_with_evaluation() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 6, [32, 32, 16], 5);
    let run = tmp.path().join("run");
    let mut cfg = tiny(&data, 1);
    cfg.split.test_fraction = 0.34;
    train(
        cfg.clone(),
        &run,
        &EventSink::none(),
        &TrainOptions::default(),
    )
    .unwrap()
    .unwrap();

    let model = Model::open_segmentation(&run, Some("cpu")).unwrap();
    let split = dataset_split(&read_config(&run).unwrap()).unwrap();
    assert!(split.test.len() >= 2);
    let report = evaluate(&model.predictor(), &split.test, true).unwrap();
    for (case, scores) in split.test.iter().zip(&report.cases) {
        let out = tmp.path().join(format!("{}-seg.nii.gz", case.id));
        let summary = infer(
            &run,
            &case.paths()[..4],
            &out,
            OutputLabels::Brats2021,
            Some("cpu"),
            &EventSink::none(),
        )
        .unwrap();
        assert_eq!(summary.shape, [32, 32, 16]);
        // The same prediction in the BraTS 2023 and MSD numberings, voxel for voxel.
        for (labels, map) in [
            (OutputLabels::Brats2023, [0.0, 1.0, 2.0, 3.0]),
            (OutputLabels::Msd, [0.0, 2.0, 1.0, 3.0]),
        ] {
            let other = tmp.path().join(format!("{}-{labels:?}.nii", case.id));
            let summary = infer(
                &run,
                &case.paths()[..4],
                &other,
                labels,
                Some("cpu"),
                &EventSink::none(),
            )
            .unwrap();
            assert_eq!(summary.labels, labels);
            let (_, written) = read_volume(&other).unwrap();
            let (_, brats) = read_volume(&out).unwrap();
            let expected = brats.mapv(|v| map[brats_to_internal(v as u8).unwrap() as usize]);
            assert_eq!(written, expected, "{labels:?}");
        }
        let (_, pred) = read_volume(&out).unwrap();
        // The run's final test saved this case's prediction: the same labels.
        let (_, saved) = read_volume(&RunDir::new(&run).test_prediction(&case.id)).unwrap();
        assert_eq!(saved, pred, "case {}: saved test prediction", case.id);
        let (_, truth) = read_volume(case.label_path().unwrap()).unwrap();
        let to_internal = |v: &f32| brats_to_internal(*v as u8).expect("BraTS label values only");
        let pred: Vec<u8> = pred.iter().map(to_internal).collect();
        let truth: Vec<u8> = truth.iter().map(to_internal).collect();
        let dice = dice_scores(&pred, &truth);
        assert_eq!(
            dice, scores.dice,
            "case {}: infer + Dice disagrees with eval",
            case.id
        );
        let wt_voxels = pred.iter().filter(|&&c| c != 0).count() as f64;
        assert!((summary.volumes_ml.wt - wt_voxels * 0.001).abs() < 1e-9);
    }

    // The whole dataset folder at once, with a broken case beside the good ones: every good case
    // segmented with the Dice evaluation finds, the broken one named in the table.
    std::fs::create_dir_all(data.join("Broken_000")).unwrap();
    std::fs::copy(
        split.test[0].paths()[0].clone(),
        data.join("Broken_000/Broken_000_flair.nii.gz"),
    )
    .unwrap();
    let out = tmp.path().join("batch");
    let mut told = Vec::new();
    let rows = infer_dataset(
        &run,
        &data,
        &out,
        OutputLabels::Brats2021,
        Some("cpu"),
        &mut |k, n, c| told.push((k, n, c.case.clone())),
    )
    .unwrap();
    assert_eq!(rows.len(), 7);
    assert_eq!(
        told.last().unwrap().0,
        7,
        "progress reaches the end: {told:?}"
    );
    let broken = rows.iter().find(|r| r.case == "Broken_000").unwrap();
    assert!(
        broken.error.as_deref().unwrap().contains("missing"),
        "{broken:?}"
    );
    for (case, scores) in split.test.iter().zip(&report.cases) {
        let row = rows.iter().find(|r| r.case == case.id).unwrap();
        assert_eq!(row.dice.as_ref().unwrap(), &scores.dice, "case {}", case.id);
        let (_, written) = read_volume(row.output.as_ref().unwrap()).unwrap();
        let (_, single) = read_volume(&tmp.path().join(format!("{}-seg.nii.gz", case.id))).unwrap();
        assert_eq!(written, single, "batch and single inference agree");
    }
    let table = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(table.lines().count(), 8, "{table}");
    assert!(
        table.starts_with("case,output,wt_ml,tc_ml,et_ml,ncr_ml,oedema_ml,dice_wt,dice_tc,dice_et")
    );
}

#[test]
fn a_resumed_run_continues_the_identical_schedule() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 5, [32, 32, 16], 8);
    let mut cfg = tiny(&data, 2);
    cfg.schedule.warmup_epochs = 1;

    let straight = tmp.path().join("straight.jsonl");
    train(
        cfg.clone(),
        &tmp.path().join("a"),
        &EventSink::file(&straight).unwrap(),
        &TrainOptions::default(),
    )
    .unwrap()
    .unwrap();

    let resumed = tmp.path().join("resumed.jsonl");
    let run_b = tmp.path().join("b");
    let stop = TrainOptions {
        resume: false,
        stop_after_epochs: Some(1),
    };
    assert!(train(
        cfg.clone(),
        &run_b,
        &EventSink::file(&resumed).unwrap(),
        &stop
    )
    .unwrap()
    .is_none());
    let again = TrainOptions {
        resume: true,
        stop_after_epochs: None,
    };
    train(
        cfg.clone(),
        &run_b,
        &EventSink::file(&resumed).unwrap(),
        &again,
    )
    .unwrap()
    .unwrap();

    let steps = |p: &Path| -> Vec<(usize, f64, f64, f64)> {
        read_events(p)
            .into_iter()
            .filter_map(|e| match e {
                Event::Step {
                    step,
                    lr,
                    loss,
                    gm_loss,
                    ..
                } => Some((step, lr, loss, gm_loss)),
                _ => None,
            })
            .collect()
    };
    let (a, b) = (steps(&straight), steps(&resumed));
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert_eq!(x.1, y.1, "learning rate at step {}", x.0);
        assert!(
            (x.2 - y.2).abs() < 1e-5,
            "loss at step {}: {} vs {}",
            x.0,
            x.2,
            y.2
        );
        assert!(
            (x.3 - y.3).abs() < 1e-5,
            "L_gm at step {}: {} vs {}",
            x.0,
            x.3,
            y.3
        );
    }
}

#[test]
fn a_run_directory_is_never_overwritten_and_resume_refuses_a_changed_config() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 4, [32, 32, 16], 9);
    let run = tmp.path().join("run");
    let cfg = tiny(&data, 2);
    let stop = TrainOptions {
        resume: false,
        stop_after_epochs: Some(1),
    };
    train(cfg.clone(), &run, &EventSink::none(), &stop).unwrap();
    let weights = std::fs::read(run.join("checkpoints/last.safetensors")).unwrap();

    let err = train(
        cfg.clone(),
        &run,
        &EventSink::none(),
        &TrainOptions::default(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("already holds a run"),
        "{err:#}"
    );
    let mut changed = cfg.clone();
    changed.schedule.lr *= 2.0;
    let events_path = tmp.path().join("events.jsonl");
    let resume = TrainOptions {
        resume: true,
        stop_after_epochs: None,
    };
    let err = train(
        changed,
        &run,
        &EventSink::file(&events_path).unwrap(),
        &resume,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("configuration differs"),
        "{err:#}"
    );
    assert!(matches!(
        read_events(&events_path).last(),
        Some(Event::Failed { .. })
    ));
    assert_eq!(
        std::fs::read(run.join("checkpoints/last.safetensors")).unwrap(),
        weights,
        "checkpoint untouched"
    );
}

#[test]
fn a_dataset_with_one_usable_case_refuses_to_train_instead_of_succeeding_with_nan() {
    // Refused before any model is built, but hold the RNG lock all the same: a trainer built
    // beside another test's would draw from libtorch's global generator.
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    dataset(&data, 1, [32, 32, 16], 4);
    let error = train(
        tiny(&data, 1),
        &tmp.path().join("run"),
        &EventSink::none(),
        &TrainOptions::default(),
    )
    .expect_err("no validation case: the run must not succeed");
    let message = format!("{error:#}");
    assert!(
        message.contains("no validation case") && message.contains("at least 2 usable cases"),
        "{message}"
    );
    // Two cases: one trains, one validates.
    dataset(&tmp.path().join("two"), 2, [32, 32, 16], 4);
    let mut cfg = tiny(&tmp.path().join("two"), 1);
    cfg.val_cases = Some(0);
    let error = train(
        cfg,
        &tmp.path().join("run0"),
        &EventSink::none(),
        &TrainOptions::default(),
    )
    .expect_err("val_cases 0 leaves none");
    assert!(format!("{error:#}").contains("val_cases"), "{error:#}");
}
