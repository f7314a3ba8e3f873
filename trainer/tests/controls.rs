//! The controls that separate CGGM's effects (issue 20 item 5), shown on a real model and batch
//! (CPU) rather than asserted:
//! - under AdamW a constant scale of the encoders' gradients (`cggm-magnitude-fixed`, B = 0.75
//!   for four modalities) leaves the whole trajectory where `joint` puts it, so magnitude
//!   modulation can only act under Adam through B's *changes*, never through its level;
//! - under SGD the same constant moves the trajectory, and is exactly the encoders' learning rate
//!   times 0.75 (`joint --encoder-lr-scale 0.75`, the learning-rate-matched control) when there
//!   is no weight decay.

mod step_common;

use cggm_trainer::config::{Method, TrainConfig};
use cggm_trainer::optim::OptimizerKind;
use cggm_trainer::step::Trainer;
use step_common::{batch, config, exclusive};
use tch::{Device, Tensor};

const STEPS: usize = 4;

fn control(method: Method, optimizer: OptimizerKind, weight_decay: f64) -> TrainConfig {
    let mut cfg = config(method);
    // Joint carries the same classifiers (as probes), so every run starts from the same weights
    // and draws the same random numbers.
    cfg.probes = true;
    cfg.optimizer.kind = optimizer;
    cfg.optimizer.weight_decay = weight_decay;
    // Clipping rescales by the total norm, which a gradient scale changes: off.
    cfg.grad_clip = None;
    cfg
}

/// Every model parameter (name, value) of `trainer`, copied.
fn parameters(trainer: &Trainer) -> Vec<(String, Tensor)> {
    trainer
        .model_opt
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.detach().copy()))
        .collect()
}

/// The parameters after `STEPS` steps on the same batch.
fn trained(cfg: TrainConfig) -> Vec<(String, Tensor)> {
    let (images, labels) = batch();
    let mut trainer = Trainer::segmentation(cfg, Device::Cpu, 10);
    for _ in 0..STEPS {
        trainer.step(&images, &labels).unwrap();
    }
    parameters(&trainer)
}

fn initial(cfg: TrainConfig) -> Vec<(String, Tensor)> {
    parameters(&Trainer::segmentation(cfg, Device::Cpu, 10))
}

/// The largest difference between two runs' parameters, relative to the largest distance any
/// parameter of `a` travelled from the start.
fn relative_difference(
    start: &[(String, Tensor)],
    a: &[(String, Tensor)],
    b: &[(String, Tensor)],
) -> f64 {
    let (mut diff, mut travelled) = (0f64, 0f64);
    for ((n0, p0), ((na, pa), (nb, pb))) in start.iter().zip(a.iter().zip(b)) {
        assert!(
            n0 == na && na == nb,
            "parameter order differs: {n0} {na} {nb}"
        );
        diff = diff.max((pa - pb).abs().max().double_value(&[]));
        travelled = travelled.max((pa - p0).abs().max().double_value(&[]));
    }
    assert!(travelled > 0.0, "the runs did not move");
    diff / travelled
}

#[test]
fn a_constant_gradient_scale_is_invisible_to_adamw_and_is_a_learning_rate_under_sgd() {
    let _rng = exclusive();
    let neutral = control(Method::CggmMagnitudeFixed, OptimizerKind::Adamw, 0.0);
    let start = initial(neutral.clone());

    // AdamW: m / (sqrt(v) + eps) does not see a constant factor except through eps, which
    // matters only for parameters whose gradients are of eps's size (1e-8 by default: a few
    // parameters of this tiny model); with eps far below every gradient the two runs coincide.
    let adam = |method| {
        let mut cfg = control(method, OptimizerKind::Adamw, 1e-2);
        cfg.optimizer.eps = 1e-20;
        trained(cfg)
    };
    let (adam_joint, adam_fixed) = (adam(Method::Joint), adam(Method::CggmMagnitudeFixed));
    let adam = relative_difference(&start, &adam_joint, &adam_fixed);
    assert!(
        adam < 1e-3,
        "under AdamW cggm-magnitude-fixed should follow joint; they differ by {adam} of the distance travelled"
    );

    // SGD with momentum: the same constant changes the run …
    let sgd_joint = trained(control(Method::Joint, OptimizerKind::Sgd, 0.0));
    let sgd_fixed = trained(control(Method::CggmMagnitudeFixed, OptimizerKind::Sgd, 0.0));
    let sgd = relative_difference(&start, &sgd_joint, &sgd_fixed);
    assert!(
        sgd > 0.05,
        "under SGD a scale of 0.75 must move the run; it moved it by only {sgd} of the distance travelled"
    );

    // … exactly as the learning-rate-matched joint run does.
    let mut matched = control(Method::Joint, OptimizerKind::Sgd, 0.0);
    matched.schedule.encoder_lr_scale = 0.75;
    let sgd_matched = trained(matched);
    let same = relative_difference(&start, &sgd_fixed, &sgd_matched);
    assert!(
        same < 1e-3,
        "joint --encoder-lr-scale 0.75 should equal cggm-magnitude-fixed under SGD without weight decay; they differ by {same}"
    );
}

#[test]
fn the_encoder_learning_rate_scale_slows_only_the_encoders() {
    let _rng = exclusive();
    let start = initial(control(Method::Joint, OptimizerKind::Sgd, 0.0));
    let plain = trained(control(Method::Joint, OptimizerKind::Sgd, 0.0));
    let mut slow = control(Method::Joint, OptimizerKind::Sgd, 0.0);
    slow.schedule.encoder_lr_scale = 0.5;
    let slow = trained(slow);
    // After one step the head's update is the same and each encoder moved half as far; after
    // several steps the encoders' distance stays well below the plain run's.
    let travelled = |run: &[(String, Tensor)], encoders: bool| -> f64 {
        start
            .iter()
            .zip(run)
            .filter(|((name, _), _)| name.starts_with("encoders.") == encoders)
            .map(|((_, p0), (_, p))| (p - p0).square().sum(tch::Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt()
    };
    let ratio = travelled(&slow, true) / travelled(&plain, true);
    assert!(
        (0.35..0.65).contains(&ratio),
        "encoders with half the learning rate should travel about half as far, got {ratio:.3}"
    );
    assert!(travelled(&slow, false) > 0.0, "the head still trains");
}
