//! Each baseline acting on a real model and a real batch (CPU), compared with joint training from
//! the same initialisation: OGM-GE and AGM change the encoders' weight gradients by their
//! coefficients (OGM-GE with its noise), PMR adds a prototype loss that reaches only the lagging
//! encoders; cggm-fixed scales every encoder by exactly rho (M-1)/M.

mod step_common;

use cggm_trainer::config::Method;
use cggm_trainer::step::Trainer;
use step_common::{batch, config, encoder_of, exclusive};
use tch::{Device, Tensor};

/// Encoder index (None = fusion head) and gradient of every model parameter of dimension >= 2.
fn weight_grads(trainer: &Trainer) -> Vec<(Option<usize>, Tensor)> {
    trainer
        .model_opt
        .params()
        .iter()
        .filter(|p| p.tensor.dim() > 1)
        .map(|p| (encoder_of(trainer, &p.name), p.tensor.grad().copy()))
        .collect()
}

/// Mean over encoder i's weights of |g_method| / |g_joint| (norm ratio).
fn norm_ratio(
    joint: &[(Option<usize>, Tensor)],
    other: &[(Option<usize>, Tensor)],
    i: usize,
) -> f64 {
    let (mut a, mut b) = (0.0, 0.0);
    for ((e, gj), (_, go)) in joint.iter().zip(other) {
        if *e == Some(i) {
            a += gj.norm().double_value(&[]).powi(2);
            b += go.norm().double_value(&[]).powi(2);
        }
    }
    (b / a).sqrt()
}

fn head_unchanged(joint: &[(Option<usize>, Tensor)], other: &[(Option<usize>, Tensor)]) {
    for ((e, gj), (_, go)) in joint.iter().zip(other) {
        if e.is_none() {
            let err = (gj - go).abs().max().double_value(&[]);
            assert!(err <= 1e-5 * gj.abs().max().double_value(&[]).max(1e-9) + 1e-9);
        }
    }
}

#[test]
fn ogm_ge_damps_the_leading_encoders_and_perturbs_their_gradients() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut joint = Trainer::segmentation(config(Method::Joint), Device::Cpu, 10);
    let mut cfg = config(Method::OgmGe);
    // BalanceBenchmark's window starts at epoch 10; this is step 0.
    cfg.baselines.ogm_start_epoch = 0;
    let mut ogm = Trainer::segmentation(cfg, Device::Cpu, 10);
    joint.compute_gradients(&images, &labels).unwrap();
    let report = ogm.compute_gradients(&images, &labels).unwrap();
    let k = &report.baseline_coefficients;
    assert_eq!(k.len(), 4);
    assert!(k.iter().any(|v| *v < 1.0), "some modality leads: {k:?}");
    assert!(k.contains(&1.0), "the weakest is left alone: {k:?}");
    let (gj, go) = (weight_grads(&joint), weight_grads(&ogm));
    head_unchanged(&gj, &go);
    for (i, ki) in k.iter().enumerate() {
        // Scaled by k_i plus noise of the gradient's own std: not a pure rescaling.
        let mut max_dev: f64 = 0.0;
        for ((e, a), (_, b)) in gj.iter().zip(&go) {
            if *e == Some(i) {
                let dev = (b - a * *ki).abs().max().double_value(&[]);
                max_dev = max_dev.max(dev);
            }
        }
        assert!(max_dev > 0.0, "encoder {i}: no generalisation noise");
    }
}

/// Before BalanceBenchmark's modulation window (epoch 10 by default) OGM-GE is joint training:
/// the same gradients, coefficients 1, no noise; from the start epoch on it modulates.
#[test]
fn ogm_ge_leaves_the_gradients_alone_before_its_start_epoch() {
    let _rng = exclusive();
    let (images, labels) = batch();
    assert_eq!(config(Method::OgmGe).baselines.ogm_start_epoch, 10);
    let mut joint = Trainer::segmentation(config(Method::Joint), Device::Cpu, 10);
    let mut ogm = Trainer::segmentation(config(Method::OgmGe), Device::Cpu, 10);
    joint.compute_gradients(&images, &labels).unwrap();
    let report = ogm.compute_gradients(&images, &labels).unwrap();
    assert_eq!(report.baseline_coefficients, vec![1.0; 4]);
    for ((_, a), (_, b)) in weight_grads(&joint).iter().zip(&weight_grads(&ogm)) {
        assert_eq!(
            (a - b).abs().max().double_value(&[]),
            0.0,
            "gradients changed before the window"
        );
    }
    // Epoch 10 (step 100 at 10 steps per epoch): inside the window.
    ogm.global_step = 100;
    let report = ogm.compute_gradients(&images, &labels).unwrap();
    assert!(report.baseline_coefficients.iter().any(|k| *k < 1.0));
}

#[test]
fn agm_scales_each_encoder_by_its_coefficient() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut joint = Trainer::segmentation(config(Method::Joint), Device::Cpu, 10);
    let mut agm = Trainer::segmentation(config(Method::Agm), Device::Cpu, 10);
    joint.compute_gradients(&images, &labels).unwrap();
    let report = agm.compute_gradients(&images, &labels).unwrap();
    let k = &report.baseline_coefficients;
    assert_eq!(k.len(), 4);
    assert!(
        k.iter().any(|v| (v - 1.0).abs() > 1e-3),
        "coefficients must differ from 1 to test anything: {k:?}"
    );
    let (gj, ga) = (weight_grads(&joint), weight_grads(&agm));
    head_unchanged(&gj, &ga);
    for (i, ki) in k.iter().enumerate() {
        let ratio = norm_ratio(&gj, &ga, i);
        assert!(
            (ratio - ki).abs() < 1e-4 * ki,
            "encoder {i}: ratio {ratio}, k {ki}"
        );
    }
}

#[test]
fn pmr_adds_a_prototype_loss_only_for_lagging_modalities() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut joint = Trainer::segmentation(config(Method::Joint), Device::Cpu, 10);
    let mut pmr = Trainer::segmentation(config(Method::Pmr), Device::Cpu, 10);
    joint.compute_gradients(&images, &labels).unwrap();
    let report = pmr.compute_gradients(&images, &labels).unwrap();
    let w = &report.baseline_coefficients;
    assert_eq!(
        w.len(),
        4,
        "every class is in the batch, so prototypes exist at once"
    );
    assert!(
        report.loss > report.task_loss,
        "the prototype loss is added"
    );
    let (gj, gp) = (weight_grads(&joint), weight_grads(&pmr));
    head_unchanged(&gj, &gp);
    for (i, wi) in w.iter().enumerate() {
        let ratio = norm_ratio(&gj, &gp, i);
        if *wi == 0.0 {
            assert!(
                (ratio - 1.0).abs() < 1e-5,
                "encoder {i} leads: untouched, ratio {ratio}"
            );
        } else {
            assert!(
                (ratio - 1.0).abs() > 1e-6,
                "encoder {i} lags (w {wi}): changed"
            );
        }
    }
    assert!(w.contains(&0.0) && w.iter().any(|v| *v > 0.0), "{w:?}");
}

#[test]
fn cggm_fixed_scales_every_encoder_by_the_neutral_coefficient() {
    let _rng = exclusive();
    let (images, labels) = batch();
    // lambda = 0 isolates the magnitude part (L_gm is tested with CGGM's own tests).
    let mut joint = Trainer::segmentation(config(Method::Joint), Device::Cpu, 10);
    let mut fixed = Trainer::segmentation(config(Method::CggmFixed), Device::Cpu, 10);
    fixed.model.cfg.cggm.lambda = 0.0;
    let measured = joint.compute_gradients(&images, &labels).unwrap();
    assert_ne!(
        measured.balance,
        vec![0.75; 4],
        "the measured B must differ to test anything"
    );
    let report = fixed.compute_gradients(&images, &labels).unwrap();
    assert_eq!(report.balance, vec![0.75; 4]);
    let (gd, gf) = (weight_grads(&joint), weight_grads(&fixed));
    head_unchanged(&gd, &gf);
    for i in 0..4 {
        let ratio = norm_ratio(&gd, &gf, i);
        assert!((ratio - 0.75).abs() < 1e-5, "encoder {i}: {ratio}");
    }
}
