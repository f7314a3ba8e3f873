//! Settings where eps_i can carry a signal (issue 20 item 4), on a real model (CPU): a fixed
//! probe batch takes the batch's sampling noise out of eps_i, and the authors' fuller 3x3
//! classifiers keep the last layer CGGM compares with the fusion head's.

mod step_common;

use cggm_trainer::config::{EpsSource, Method};
use cggm_trainer::model::ClassifierDesign;
use cggm_trainer::step::Trainer;
use step_common::{batch, config, exclusive, synthetic_dataset, train_run};
use tch::{Device, Tensor};

/// A second batch: the first one's samples mirrored, so its tumours sit elsewhere.
fn other_batch() -> (Tensor, Tensor) {
    let (images, labels) = batch();
    (images.flip([3]), labels.flip([2]))
}

fn trainer(eps_source: EpsSource) -> Trainer {
    let mut cfg = config(Method::Cggm);
    cfg.cggm.eps_source = eps_source;
    let mut trainer = Trainer::segmentation(cfg, Device::Cpu, 10);
    if eps_source == EpsSource::Probe {
        trainer.probe = Some(batch());
    }
    trainer
}

/// eps of two steps: the first on `first`, the second on `second`.
fn two_steps(
    eps_source: EpsSource,
    first: &(Tensor, Tensor),
    second: &(Tensor, Tensor),
) -> [Vec<f64>; 2] {
    let mut t = trainer(eps_source);
    [first, second].map(|(images, labels)| t.step(images, labels).unwrap().modality_metric)
}

fn change(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn on_a_probe_batch_eps_follows_the_model_not_the_batch() {
    let _rng = exclusive();
    let (a, b) = (batch(), other_batch());

    // The paper's eps is measured on the training batch: the same model gives another eps on
    // another batch.
    let [on_a, _] = two_steps(EpsSource::Batch, &a, &a);
    let [on_b, _] = two_steps(EpsSource::Batch, &b, &a);
    assert!(
        change(&on_a, &on_b) > 1e-3,
        "the same model should score two batches differently: {on_a:?} vs {on_b:?}"
    );

    // On the probe: the same model gives the same eps whatever the batch …
    let [probe_a, after_a] = two_steps(EpsSource::Probe, &a, &a);
    let [probe_b, after_b] = two_steps(EpsSource::Probe, &b, &a);
    assert!(probe_a.iter().all(|v| v.is_finite()), "{probe_a:?}");
    assert_eq!(
        probe_a, probe_b,
        "eps on the probe must not depend on the step's batch"
    );
    // … and follows the model: after a step on another batch the model, and so eps, differ.
    assert!(
        change(&after_a, &after_b) > 0.0,
        "after different updates eps on the probe should differ: {after_a:?} vs {after_b:?}"
    );
}

#[test]
fn full_classifiers_have_the_fusion_heads_last_layer_and_more_decoder() {
    let _rng = exclusive();
    let parameters = |design: ClassifierDesign| -> (i64, Vec<i64>) {
        let mut cfg = config(Method::Cggm);
        cfg.model.classifier_design = design;
        let trainer = Trainer::segmentation(cfg, Device::Cpu, 10);
        let classifiers = trainer.model.classifiers.as_ref().unwrap();
        let count = trainer
            .model
            .vs
            .variables()
            .iter()
            .filter(|(name, _)| name.starts_with("classifiers."))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        (count, classifiers.last_layer_weight(0).size())
    };
    let (light, light_last) = parameters(ClassifierDesign::Light);
    let (full, full_last) = parameters(ClassifierDesign::Full);
    assert!(
        full > 2 * light,
        "two 3x3 refinements should outweigh one 1x1 by far: {full} vs {light} parameters"
    );
    assert_eq!(
        light_last, full_last,
        "the last layer CGGM compares is the same"
    );

    // And a CGGM step runs with them.
    let (images, labels) = batch();
    let mut cfg = config(Method::Cggm);
    cfg.model.classifier_design = ClassifierDesign::Full;
    let mut trainer = Trainer::segmentation(cfg, Device::Cpu, 10);
    let report = trainer.step(&images, &labels).unwrap();
    assert!(report.cosine.iter().all(|c| c.is_finite()), "{report:?}");
}

#[test]
fn a_run_with_the_signal_profile_trains_and_reports_its_diagnostics() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data, 6, [40, 40, 20], 5, 2.0);
    // scripts/study.sh PROFILE=signal EPS_SOURCE=probe, on the tiny model.
    let mut cfg = config(Method::Cggm);
    cfg.data = data.clone();
    cfg.epochs = 1;
    cfg.steps_per_epoch = Some(3);
    cfg.val_cases = Some(1);
    cfg.sampler.cache_dir = Some(tmp.path().join("cache"));
    cfg.sampler.tumour_fraction = 1.0;
    cfg.model.classifier_design = ClassifierDesign::Full;
    cfg.cggm.eps_ema = 0.9;
    cfg.cggm.eps_source = EpsSource::Probe;
    cfg.cggm.probe_size = 4;
    train_run(cfg, tmp.path());
    let run = tmp.path().join("run");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let diagnostics = &metrics["balance_diagnostics"];
    assert_eq!(diagnostics["steps"], 3, "{diagnostics}");
    assert!(
        diagnostics["total_improvement_z"].is_f64(),
        "the run reports B's signal-to-noise ratio: {diagnostics}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["cggm"]["eps_source"], "probe");
    assert_eq!(saved["model"]["classifier_design"], "full");
}
