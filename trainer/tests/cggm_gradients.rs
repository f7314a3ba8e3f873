//! CGGM's gradient arithmetic on a real model and a real batch (CPU): magnitude modulation scales
//! exactly the encoders' gradients, direction modulation reaches the model and turns the fusion
//! head's gradient towards the classifiers', and classifiers never touch the encoders.

mod step_common;

use cggm_trainer::cggm::flat_cosine;
use cggm_trainer::config::Method;
use cggm_trainer::step::{StepError, Trainer};
use step_common::{batch, config, encoder_of, exclusive};
use tch::{Device, Tensor};

fn grads(trainer: &Trainer) -> Vec<(String, Tensor)> {
    trainer
        .model_opt
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.grad().copy()))
        .collect()
}

#[test]
fn magnitude_modulation_scales_each_encoder_gradient_by_its_balance_coefficient() {
    let _rng = exclusive();
    let (images, labels) = batch();
    // Same seed, same initialisation; joint (with probes) measures B but does not apply it.
    let mut joint = Trainer::segmentation(config(Method::Joint), Device::Cpu, 10);
    let mut cggm = Trainer::segmentation(config(Method::CggmMagnitude), Device::Cpu, 10);
    let plain = joint.compute_gradients(&images, &labels).unwrap();
    let modulated = cggm.compute_gradients(&images, &labels).unwrap();
    assert_eq!(
        plain.balance, modulated.balance,
        "both runs measure the same coefficients"
    );
    let b = &modulated.balance;
    assert!(
        b.iter().any(|v| (v - 1.0).abs() > 1e-3),
        "coefficients must differ from 1 to test anything: {b:?}"
    );

    // Independent of the optimiser groups the trainer reads from the VarStore: which encoder a
    // parameter belongs to, by its name.
    let (g_plain, g_mod) = (grads(&joint), grads(&cggm));
    let mut checked = [0usize; 5];
    for ((name, gp), (name2, gm)) in g_plain.iter().zip(&g_mod) {
        assert_eq!(name, name2);
        let scale = match encoder_of(&cggm, name) {
            Some(i) => {
                checked[i] += 1;
                b[i]
            }
            None => {
                checked[4] += 1;
                1.0
            }
        };
        let expected = gp * scale;
        let err = (gm - &expected).abs().max().double_value(&[]);
        let norm = expected.abs().max().double_value(&[]).max(1e-12);
        assert!(
            err <= 1e-5 * norm + 1e-9,
            "{name}: gradient differs from B * g by {err} (max {norm})"
        );
    }
    assert!(
        checked.iter().all(|&n| n > 0),
        "every encoder and the head were checked: {checked:?}"
    );
}

#[test]
fn direction_loss_reaches_the_model_and_a_step_on_it_raises_the_weighted_cosine() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut trainer = Trainer::segmentation(config(Method::CggmDirection), Device::Cpu, 10);
    trainer.seed_step();
    let (out, task_loss) = trainer.forward(&images, &labels).unwrap();
    let (_, g_cls) = trainer.classifier_pass(&out, &labels).unwrap();
    let balance = vec![0.9, 0.3, 0.6, 0.75];
    let (l_gm, cos_before) = trainer.direction_term(&task_loss, &g_cls, &balance);
    let l_gm = l_gm.expect("cggm-direction modulates direction");

    let params: Vec<Tensor> = trainer
        .model_opt
        .params()
        .iter()
        .map(|p| p.tensor.shallow_clone())
        .collect();
    let g = Tensor::run_backward(&[&l_gm], &params, false, false);
    let names: Vec<&str> = trainer
        .model_opt
        .params()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let nonzero = |prefix: &str| {
        names
            .iter()
            .zip(&g)
            .any(|(n, g)| n.starts_with(prefix) && g.abs().max().double_value(&[]) > 0.0)
    };
    assert!(
        nonzero("encoders."),
        "L_gm must put gradient into the encoders (through g_F's graph)"
    );
    assert!(
        nonzero("fusion."),
        "L_gm must put gradient into the fusion head"
    );

    let weighted = |cos: &[f64]| cos.iter().zip(&balance).map(|(c, b)| c * b).sum::<f64>();
    let before = weighted(&cos_before);
    tch::no_grad(|| {
        for (p, g) in params.iter().zip(&g) {
            let _ = p.shallow_clone().g_add_(&(g * -0.05));
        }
    });
    trainer.seed_step();
    let (_, task_loss) = trainer.forward(&images, &labels).unwrap();
    let g_f = Tensor::run_backward(
        &[&task_loss],
        &[trainer.model.network.last_layer_weight()],
        false,
        false,
    )
    .remove(0);
    let after = weighted(
        &g_cls
            .iter()
            .map(|gi| flat_cosine(&g_f, gi).double_value(&[]))
            .collect::<Vec<_>>(),
    );
    assert!(
        after > before,
        "a step on L_gm alone must raise sum B_i cos(g_F, g_i): {before} -> {after}"
    );
}

#[test]
fn classifier_losses_put_no_gradient_into_the_encoders() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut trainer = Trainer::segmentation(config(Method::Cggm), Device::Cpu, 10);
    let (out, _task_loss) = trainer.forward(&images, &labels).unwrap();
    let (metrics, g_cls) = trainer.classifier_pass(&out, &labels).unwrap();
    assert_eq!(g_cls.len(), 4);
    assert!(metrics.iter().all(|m| (0.0..=1.0).contains(m)));
    assert!(
        g_cls.iter().all(|g| g.abs().max().double_value(&[]) > 0.0),
        "classifiers did learn"
    );
    for p in trainer.model_opt.params() {
        let g = p.tensor.grad();
        assert!(
            !g.defined() || g.abs().max().double_value(&[]) == 0.0,
            "{} received gradient from a classifier",
            p.name
        );
    }
}

#[test]
fn a_non_finite_loss_stops_the_step_before_any_weight_changes() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut trainer = Trainer::segmentation(config(Method::Cggm), Device::Cpu, 10);
    let before: Vec<Tensor> = trainer
        .model_opt
        .params()
        .iter()
        .map(|p| p.tensor.copy())
        .collect();
    let poisoned = images.copy();
    let _ = poisoned.narrow(0, 0, 1).fill_(f64::NAN);
    let err = trainer.step(&poisoned, &labels).unwrap_err();
    let StepError::NonFinite { what, step, .. } = &err;
    assert_eq!((*what, *step), ("task loss", 0));
    assert!(err.to_string().contains("diverged"), "{err}");
    for (p, b) in trainer.model_opt.params().iter().zip(&before) {
        assert!(p.tensor.equal(b), "{} changed", p.name);
    }
    assert_eq!(trainer.global_step, 0);
}

#[test]
fn unimodal_training_uses_one_encoder_and_no_modulation() {
    let _rng = exclusive();
    let (images, labels) = batch();
    let mut trainer =
        Trainer::segmentation(config("unimodal:t1ce".parse().unwrap()), Device::Cpu, 10);
    assert_eq!(trainer.model.network.encoders.len(), 1);
    assert_eq!(trainer.model.modality_channels, [1]);
    let r = trainer.step(&images, &labels).unwrap();
    assert_eq!(r.gm_loss, 0.0);
    assert!(r.loss.is_finite());
}
