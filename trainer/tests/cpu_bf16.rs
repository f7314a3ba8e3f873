//! bf16 training on the CPU (`CGGM_CPU_TRAINING_PRECISION=bf16` with mixed precision on): the
//! forward passes autocast to bf16 while the weights, their gradients, CGGM's B_i scaling, `L_gm`
//! and clipping stay fp32, and the first steps track an fp32 run from the same initialisation.

mod step_common;

use cggm_trainer::amp::{AmpDtype, CPU_TRAINING_PRECISION};
use cggm_trainer::config::Method;
use cggm_trainer::step::{StepReport, Trainer};
use step_common::{batch, config, exclusive, synthetic_dataset, train_run};
use tch::{Device, Kind};

const STEPS: usize = 12;

/// `STEPS` steps of `method` on one batch, in bf16 or fp32, from the same seed.
fn run(bf16: bool, method: Method) -> Vec<StepReport> {
    let (images, labels) = batch();
    if bf16 {
        std::env::set_var(CPU_TRAINING_PRECISION, "bf16");
    } else {
        std::env::remove_var(CPU_TRAINING_PRECISION);
    }
    let mut cfg = config(method);
    cfg.mixed_precision = true;
    cfg.amp_dtype = AmpDtype::Bf16;
    let mut trainer = Trainer::segmentation(cfg, Device::Cpu, 10);
    assert_eq!(trainer.amp(), bf16.then_some(AmpDtype::Bf16));
    let reports = (0..STEPS)
        .map(|_| trainer.step(&images, &labels).unwrap())
        .collect();
    std::env::remove_var(CPU_TRAINING_PRECISION);
    for p in trainer.model_opt.params() {
        assert_eq!(
            p.tensor.kind(),
            Kind::Float,
            "{}: master weights stay fp32",
            p.name
        );
        let grad = p.tensor.grad();
        if grad.defined() {
            assert_eq!(
                grad.kind(),
                Kind::Float,
                "{}: gradients come back fp32",
                p.name
            );
        }
    }
    reports
}

#[test]
fn bf16_training_on_the_cpu_tracks_fp32_from_the_same_initialisation() {
    let _rng = exclusive();
    let fp32 = run(false, Method::Cggm);
    let bf16 = run(true, Method::Cggm);
    for (a, b) in fp32.iter().zip(&bf16) {
        eprintln!(
            "task loss fp32 {:.5} bf16 {:.5}; B fp32 {:?} bf16 {:?}",
            a.task_loss, b.task_loss, a.balance, b.balance
        );
    }
    let first = (fp32[0].task_loss, bf16[0].task_loss);
    assert!(
        (first.0 - first.1).abs() <= 0.02 * first.0.abs(),
        "first-step task loss fp32 {} vs bf16 {}: more than 2 % apart",
        first.0,
        first.1
    );
    assert!(
        fp32.iter()
            .zip(&bf16)
            .any(|(a, b)| (a.task_loss - b.task_loss).abs() > 1e-6),
        "bf16 losses equal fp32's to 1e-6: autocast did not run"
    );
    for (what, reports) in [("fp32", &fp32), ("bf16", &bf16)] {
        let (start, end) = (reports[0].task_loss, reports[STEPS - 1].task_loss);
        assert!(
            end < 0.95 * start,
            "{what}: loss {start} -> {end} did not go down"
        );
        for r in reports.iter() {
            assert!(r.loss.is_finite() && r.gm_loss.is_finite(), "{what}: {r:?}");
            assert!(
                r.balance.iter().all(|b| (0.0..=2.0).contains(b)),
                "{what}: balance {:?}",
                r.balance
            );
        }
    }
    // Step by step, the trajectories are compared without B_i: CGGM's guard turns a 0.1 %
    // difference in eps_i into B = 0.75 on one side and 0/1 on the other (batch noise, issue 20),
    // after which the losses part for reasons that have nothing to do with precision. Measured
    // for joint training (grouped encoders, tiny preset): every step within 1 % (max 0.94 %).
    let (fp32, bf16) = (run(false, Method::Joint), run(true, Method::Joint));
    for (step, (a, b)) in fp32.iter().zip(&bf16).enumerate() {
        eprintln!(
            "joint task loss fp32 {:.5} bf16 {:.5}",
            a.task_loss, b.task_loss
        );
        assert!(
            (a.task_loss - b.task_loss).abs() <= 0.02 * a.task_loss.abs(),
            "joint step {step}: task loss fp32 {} vs bf16 {}: more than 2 % apart",
            a.task_loss,
            b.task_loss
        );
    }
}

#[test]
fn the_cpu_training_precision_is_read_once_when_the_trainer_is_built() {
    let _rng = exclusive();
    std::env::set_var(CPU_TRAINING_PRECISION, "bf16");
    let mut cfg = config(Method::Joint);
    cfg.mixed_precision = true;
    cfg.amp_dtype = AmpDtype::Bf16;
    let trainer = Trainer::segmentation(cfg, Device::Cpu, 10);
    std::env::remove_var(CPU_TRAINING_PRECISION);
    // The environment changing later does not switch a built trainer's forward passes.
    assert_eq!(trainer.amp(), Some(AmpDtype::Bf16));
}

/// Best validation Dice (mean over WT/TC/ET) of a short cpu-small run, bf16 or fp32.
fn short_run_validation_dice(data: &std::path::Path, seed: u64, bf16: bool) -> f64 {
    use cggm_trainer::config::TrainConfig;

    if bf16 {
        std::env::set_var(CPU_TRAINING_PRECISION, "bf16");
    } else {
        std::env::remove_var(CPU_TRAINING_PRECISION);
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig::preset("cpu-small").unwrap();
    cfg.data = data.to_path_buf();
    cfg.device = "cpu".into();
    cfg.seed = seed;
    cfg.epochs = 3;
    cfg.steps_per_epoch = Some(20);
    cfg.mixed_precision = true;
    cfg.amp_dtype = AmpDtype::Bf16;
    cfg.sampler.cache_dir = Some(tmp.path().join("cache"));
    let (metrics, events_path) = train_run(cfg, tmp.path());
    std::env::remove_var(CPU_TRAINING_PRECISION);
    let started = std::fs::read_to_string(&events_path).unwrap();
    assert_eq!(
        started.contains("bf16 autocast"),
        bf16,
        "the run's device line says whether bf16 autocast ran"
    );
    metrics.best_val_dice.unwrap().mean
}

/// Issue 22: a short bf16 run reaches the fp32 run's validation Dice within noise, where noise is
/// what changing the seed alone does to the same fp32 run.
#[test]
fn a_short_bf16_run_reaches_the_fp32_runs_validation_dice_within_seed_noise() {
    let _rng = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data, 10, [64, 64, 40], 3, 1.0);
    let fp32 = short_run_validation_dice(&data, 0, false);
    let fp32_other_seed = short_run_validation_dice(&data, 1, false);
    let bf16 = short_run_validation_dice(&data, 0, true);
    let noise = (fp32 - fp32_other_seed).abs();
    eprintln!(
        "best validation mean Dice: fp32 {fp32:.4}, fp32 seed 1 {fp32_other_seed:.4}, bf16 {bf16:.4}"
    );
    // Both learned (an untrained model predicts no tumour: Dice 0).
    assert!(fp32 > 0.3 && bf16 > 0.3, "fp32 {fp32}, bf16 {bf16}");
    assert!(
        (bf16 - fp32).abs() <= noise.max(0.05),
        "bf16 {bf16:.4} vs fp32 {fp32:.4}: further apart than the seed-to-seed change {noise:.4} (or 0.05)"
    );
}
