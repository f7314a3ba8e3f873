//! One training iteration of the multimodal model for every method (joint, unimodal, CGGM and its
//! ablations, MRD, MSLR) and every task (segmentation, classification, regression): the CGGM
//! order of operations of README "What CGGM computes here" lives here, written once against the
//! model traits of `model::network` and the `Task` (loss and per-modality metric).

use crate::amp::{self, AmpDtype, LossScaler};
use crate::cggm::authors::{self, LaggedDirection, SavedTensor};
use crate::cggm::{
    direction_loss, flat_cosine, neutral_balance, BalanceDiagnostics, BalanceFormula,
    BalanceTracker,
};
use crate::config::{DirectionSource, Method, TrainConfig};
use crate::model::network::{
    ModalityClassifierSet, ModalityInput, MultimodalNetwork, NetworkOutput, CLASSIFIER_GROUP,
};
use crate::model::{Model, MultimodalSegmenter};
use crate::optim::{CosineSchedule, Optimizer, Param};
use crate::task::{classification::Classification, regression::Regression, Task, TaskKind};
use rand::{Rng, SeedableRng};
use tch::{nn, Device, Tensor};

/// What one step measured (modality vectors in the model's modality order).
#[derive(Clone, Debug)]
pub struct StepReport {
    pub loss: f64,
    pub task_loss: f64,
    pub gm_loss: f64,
    pub lr: f64,
    pub balance: Vec<f64>,
    pub cosine: Vec<f64>,
    pub modality_metric: Vec<f64>,
    /// The balance guard set every B_i to neutral on this step.
    pub balance_guarded: bool,
    /// How many B_i the guard pinned at 0 or rho on this step.
    pub balance_clamped: usize,
    /// The baseline's per-modality coefficients (OGM-GE, AGM: gradient scale; PMR: weight of the
    /// prototypical loss); empty for other methods.
    pub baseline_coefficients: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("the {what} became {value} at step {step}: training diverged. Lower the learning rate (--lr), enable gradient clipping (grad_clip in the config) or check the input data for extreme intensities")]
    NonFinite {
        what: &'static str,
        value: f64,
        step: usize,
    },
}

/// A model, its optimisers and the CGGM state of one run. `N` is the model family: the
/// segmentation DeepLabv3+ (default) or the feature-task Transformer (`FeatureNet`).
pub struct Trainer<N: MultimodalNetwork = MultimodalSegmenter> {
    /// The network, its classifiers, the configuration and the device.
    pub model: Model<N>,
    pub model_opt: Optimizer,
    pub classifier_opt: Option<Optimizer>,
    pub schedule: CosineSchedule,
    pub tracker: BalanceTracker,
    /// B of the previous step: the authors' weight-cosine variant applies it one step late.
    pub previous_balance: Vec<f64>,
    pub global_step: usize,
    /// Optimisation steps per epoch (the epoch of a step, for the baselines' windows).
    pub steps_per_epoch: usize,
    task: Box<dyn Task>,
    /// State of the OGM-GE / AGM / PMR baselines.
    pub(crate) baselines: crate::baselines::BaselineState,
    /// The autocast dtype of the forward passes (None: fp32), decided once from the
    /// configuration, the device and `CGGM_CPU_TRAINING_PRECISION` when the trainer is built.
    amp: Option<AmpDtype>,
    /// fp16 only: dynamic loss scaling, and whether this iteration found an inf/NaN gradient.
    pub scaler: Option<LossScaler>,
    found_non_finite: bool,
    /// `cggm.eps_source = probe`: the fixed batch (inputs, labels) every step's eps_i is
    /// measured on instead of the training batch.
    pub probe: Option<(N::Input, Tensor)>,
}

/// The loss and per-modality metric of the configuration's task.
pub fn task_of(cfg: &TrainConfig) -> Box<dyn Task> {
    match cfg.task {
        TaskKind::Segmentation => Box::new(cfg.loss.clone()),
        TaskKind::Classification => Box::new(Classification),
        TaskKind::Regression => Box::new(Regression),
    }
}

impl Trainer {
    /// A segmentation trainer on a freshly initialised model (`Model::segmentation`).
    pub fn segmentation(cfg: TrainConfig, device: Device, steps_per_epoch: usize) -> Self {
        Self::new(Model::segmentation(cfg, device), steps_per_epoch)
    }
}

impl<N: MultimodalNetwork> Trainer<N> {
    /// A trainer for `model`, with the loss of its configuration's task.
    pub fn new(model: Model<N>, steps_per_epoch: usize) -> Self {
        let task = task_of(&model.cfg);
        Self::with_task(model, steps_per_epoch, task)
    }

    /// B's signal-to-noise diagnostics of the run so far (None when the run has no classifiers
    /// to measure B). `window`: over the steps since the last such call (the epoch's, for the
    /// `balance_diagnostics` event), which starts a new window; otherwise the whole run.
    pub fn balance_diagnostics(&mut self, window: bool) -> Option<BalanceDiagnostics> {
        self.model.classifiers.as_ref()?;
        let stats = &mut self.tracker.stats;
        let taken = window.then(|| stats.take_window());
        Some(BalanceDiagnostics::new(
            stats,
            &self.model.modality_names,
            taken.as_ref(),
        ))
    }

    /// The `balance_diagnostics` event after epoch `epoch` (None without classifiers).
    pub fn balance_diagnostics_event(&mut self, epoch: usize) -> Option<crate::events::Event> {
        let diagnostics = self.balance_diagnostics(true)?;
        Some(crate::events::Event::BalanceDiagnostics {
            time: crate::events::now(),
            epoch,
            step: self.global_step,
            diagnostics,
        })
    }

    /// The epoch (from 0) the current step belongs to.
    pub fn epoch(&self) -> usize {
        self.global_step / self.steps_per_epoch.max(1)
    }

    /// A trainer for `model` with its own task (tests train toy tasks with it): the optimisers
    /// over the model's parameter groups, the schedule and CGGM's tracker.
    pub fn with_task(model: Model<N>, steps_per_epoch: usize, task: Box<dyn Task>) -> Self {
        let cfg = &model.cfg;
        let (model_params, classifier_params) = named_params(&model.vs);
        let model_opt = Optimizer::new(cfg.optimizer.clone(), model_params);
        let classifier_opt = model
            .classifiers
            .as_ref()
            .map(|_| Optimizer::new(cfg.optimizer.clone(), classifier_params));
        let total_steps = cfg.epochs * steps_per_epoch;
        let schedule = CosineSchedule {
            base: cfg.schedule.lr,
            min: cfg.schedule.min_lr,
            warmup_start: cfg.schedule.warmup_start_lr,
            warmup_steps: (cfg.schedule.warmup_epochs * steps_per_epoch).min(total_steps),
            total_steps,
        };
        let m = model.modality_channels.len();
        let tracker = if cfg.method == Method::CggmAuthors {
            // Their formula, their epsilon, no smoothing: `balance` and `eps_ema` do not apply.
            BalanceTracker::new(m, cfg.cggm.rho, BalanceFormula::Raw)
        } else {
            BalanceTracker::new(m, cfg.cggm.rho, cfg.cggm.balance).with_ema(cfg.cggm.eps_ema)
        };
        let scaler =
            (cfg.mixed_precision && model.device.is_cuda() && cfg.amp_dtype == AmpDtype::Fp16)
                .then(LossScaler::new);
        let amp = amp::training_dtype(model.device, cfg.mixed_precision, cfg.amp_dtype);
        Self {
            task,
            amp,
            scaler,
            found_non_finite: false,
            previous_balance: vec![1.0; m],
            model,
            model_opt,
            classifier_opt,
            schedule,
            tracker,
            global_step: 0,
            steps_per_epoch,
            baselines: Default::default(),
            probe: None,
        }
    }

    /// Each classifier's metric on the probe batch with the model as it is before this step (no
    /// gradients, batch norm in eval mode, as validation runs); None without a probe or
    /// classifiers.
    fn probe_metrics(&self) -> Option<Vec<f64>> {
        let ((images, labels), cls) = (self.probe.as_ref()?, self.model.classifiers.as_ref()?);
        Some(tch::no_grad(|| {
            let xs = images.pick_modalities(&self.model.modality_channels);
            let all = amp::autocast(self.model.device, self.amp(), || {
                let out = self.model.network.forward_t(&xs, false);
                cls.logits_t(&out, false)
            });
            self.task.batch_metrics(&all, labels)
        }))
    }

    /// The task's loss and metric (segmentation, classification or regression).
    pub fn task(&self) -> &dyn Task {
        self.task.as_ref()
    }

    /// Modality random dropout: zero each modality of each sample with probability p, keeping at
    /// least one per sample. Seeded by (seed, step) so that a resumed run drops the same inputs.
    fn drop_modalities(&self, xs: &N::Input) -> N::Input {
        let (b, m) = (xs.batch_size() as usize, self.model.modality_channels.len());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.model.cfg.seed ^ (self.global_step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut keep = vec![1f32; b * m];
        for s in 0..b {
            let row = &mut keep[s * m..(s + 1) * m];
            for v in row.iter_mut() {
                if rng.gen::<f64>() < self.model.cfg.mrd_drop_prob {
                    *v = 0.0;
                }
            }
            if row.iter().all(|v| *v == 0.0) {
                row[rng.gen_range(0..m)] = 1.0;
            }
        }
        let keep = Tensor::from_slice(&keep)
            .view([b as i64, m as i64])
            .to_device(self.model.device);
        xs.mask_modalities(&keep)
    }

    /// Group 0 is the fusion head, group i + 1 encoder i: the encoders' rate carries
    /// `encoder_lr_scale` (the learning-rate-matched control) and, for MSLR, their modality's
    /// scale.
    fn group_lr(&self, lr: f64, group: usize) -> f64 {
        if group == 0 {
            return lr;
        }
        let encoder_lr = lr * self.model.cfg.schedule.encoder_lr_scale;
        if self.model.cfg.method != Method::Mslr {
            return encoder_lr;
        }
        let name = &self.model.modality_names[group - 1];
        encoder_lr * self.model.cfg.mslr_scales.get(name).copied().unwrap_or(1.0)
    }

    /// One iteration: `compute_gradients`, then the optimiser step. images: every modality of the
    /// data (segmentation: [B, 4, H, W] float in the fixed order), labels: [B, H, W] int64 classes
    /// (segmentation), [B] int64 (classification) or [B] float (regression); on `self.model.device`.
    pub fn step(&mut self, images: &N::Input, labels: &Tensor) -> Result<StepReport, StepError> {
        let report = self.compute_gradients(images, labels)?;
        if let Some(scaler) = &mut self.scaler {
            scaler.update(self.found_non_finite);
            if self.found_non_finite {
                // fp16 overflow: skip this update (the scale was halved).
                self.global_step += 1;
                return Ok(report);
            }
        }
        if let Some(max_norm) = self.model.cfg.grad_clip {
            let norm = self.model_opt.clip_grad_norm(max_norm);
            if !norm.is_finite() {
                return Err(StepError::NonFinite {
                    what: "gradient norm",
                    value: norm,
                    step: self.global_step,
                });
            }
        }
        let m = self.model.modality_channels.len();
        let group_lrs: Vec<f64> = (0..=m).map(|g| self.group_lr(report.lr, g)).collect();
        self.model_opt.step(&|g| group_lrs[g.min(m)]);
        self.previous_balance = report.balance.clone();
        self.global_step += 1;
        Ok(report)
    }

    /// Seeds libtorch for this step: dropout and any other randomness depend only on (seed,
    /// step), so resuming from a checkpoint replays the same run.
    pub fn seed_step(&self) {
        tch::manual_seed(
            (self.model.cfg.seed as i64).wrapping_add(self.global_step as i64 * 1_000_003),
        );
    }

    /// CGGM step 1: the model's forward pass and task loss on this batch.
    pub fn forward(
        &self,
        images: &N::Input,
        labels: &Tensor,
    ) -> Result<(N::Output, Tensor), StepError> {
        let mut xs = images.pick_modalities(&self.model.modality_channels);
        if self.model.cfg.method == Method::Mrd {
            xs = self.drop_modalities(&xs);
        }
        let out = amp::autocast(self.model.device, self.amp(), || {
            self.model.network.forward_t(&xs, true)
        });
        let task_loss = self.task.loss(out.logits(), labels);
        let value = task_loss.double_value(&[]);
        if !value.is_finite() {
            return Err(StepError::NonFinite {
                what: "task loss",
                value,
                step: self.global_step,
            });
        }
        Ok((out, task_loss))
    }

    /// The autocast dtype of this run's forward passes (None: fp32), as decided when the trainer
    /// was built.
    pub fn amp(&self) -> Option<AmpDtype> {
        self.amp
    }

    /// The tensor to call backward on: the loss, times the fp16 loss scale when there is one.
    fn scaled(&self, loss: &Tensor) -> Tensor {
        match &self.scaler {
            Some(s) => s.scaled(loss),
            None => loss.shallow_clone(),
        }
    }

    /// CGGM steps 2-3: trains the classifiers on detached features (their own optimiser) and
    /// returns each one's batch metric and the gradient of its last layer (detached).
    pub fn classifier_pass(
        &mut self,
        out: &N::Output,
        labels: &Tensor,
    ) -> Result<(Vec<f64>, Vec<Tensor>), StepError> {
        let m = self.model.modality_channels.len();
        let amp_dtype = self.amp();
        let (Some(cls), Some(opt)) = (&self.model.classifiers, &mut self.classifier_opt) else {
            return Ok((vec![f64::NAN; m], Vec::new()));
        };
        opt.zero_grad();
        let all = amp::autocast(self.model.device, amp_dtype, || cls.logits_t(out, true));
        let metrics = if self.model.cfg.method == Method::CggmAuthors {
            crate::cggm::authors::batch_metrics(self.model.cfg.task, &all, labels)
        } else {
            self.task.batch_metrics(&all, labels)
        };
        let cls_loss = self.task.summed_loss(&all, labels);
        // OGM-GE reads its scores from the classifiers.
        crate::baselines::scores_hook(&mut self.baselines, self.model.cfg.method, &all, labels);
        let value = cls_loss.double_value(&[]);
        if !value.is_finite() {
            return Err(StepError::NonFinite {
                what: "classifier loss",
                value,
                step: self.global_step,
            });
        }
        match &self.scaler {
            Some(s) => s.scaled(&cls_loss).backward(),
            None => cls_loss.backward(),
        }
        // Scaled or not: only their cosines with g_F are used.
        let grads = (0..m)
            .map(|i| cls.last_layer_grad(i).detach().copy())
            .collect();
        let finite = self.scaler.as_ref().is_none_or(|s| s.unscale(opt));
        self.found_non_finite |= !finite;
        let cls_lr = self.model.cfg.schedule.classifier_lr;
        if finite {
            opt.step(&|_| cls_lr);
        }
        Ok((metrics, grads))
    }

    /// CGGM step 5: L_gm (None when the method does not modulate direction) and the cosines
    /// cos(g_F, g_i), which are measured for every run with classifiers.
    pub fn direction_term(
        &self,
        task_loss: &Tensor,
        classifier_grads: &[Tensor],
        balance: &[f64],
    ) -> (Option<Tensor>, Vec<f64>) {
        let m = self.model.modality_channels.len();
        if classifier_grads.is_empty() {
            return (None, vec![f64::NAN; m]);
        }
        let w_last = self.model.network.last_layer_weight();
        let direct =
            self.model.cfg.method.modulates_direction() && self.model.cfg.cggm.lambda > 0.0;
        match (direct, self.model.cfg.cggm.direction) {
            (true, DirectionSource::AuthorsWeightCosine) => {
                let cls = self
                    .model
                    .classifiers
                    .as_ref()
                    .expect("classifiers exist when their gradients do");
                let weights: Vec<Tensor> =
                    (0..m).map(|i| cls.last_layer_weight(i).detach()).collect();
                let (l_gm, cos) = direction_loss(w_last, &weights, &self.previous_balance);
                (Some(l_gm), cos)
            }
            (true, DirectionSource::Gradient) => {
                // g_F with create_graph: L_gm is differentiable w.r.t. the whole model.
                let g_f = Tensor::run_backward(&[task_loss], &[w_last], true, true).remove(0);
                let (l_gm, cos) = direction_loss(&g_f, classifier_grads, balance);
                (Some(l_gm), cos)
            }
            (false, _) => {
                // Not modulating: measure the cosines only (cheap: the head's last layer).
                let g_f = Tensor::run_backward(&[task_loss], &[w_last], true, false).remove(0);
                (
                    None,
                    classifier_grads
                        .iter()
                        .map(|g| flat_cosine(&g_f, g).double_value(&[]))
                        .collect(),
                )
            }
        }
    }

    /// Everything of one iteration except the optimiser step of the model: forward, classifiers
    /// (stepped), balance coefficients, L_gm, backward, magnitude modulation. Leaves the model's
    /// modulated gradients in place. The method's part is `modulated_iteration` or, for
    /// `cggm-authors`, `authors_iteration`; both backpropagate through `backward`.
    pub fn compute_gradients(
        &mut self,
        images: &N::Input,
        labels: &Tensor,
    ) -> Result<StepReport, StepError> {
        let step = self.global_step;
        self.found_non_finite = false;
        self.seed_step();
        let lr = self.schedule.lr(step);
        let iteration = if self.model.cfg.method == Method::CggmAuthors {
            self.authors_iteration(images, labels, step)?
        } else {
            self.modulated_iteration(images, labels, step)?
        };
        Ok(iteration.report(lr))
    }

    /// Zeroes the model's gradients and backpropagates `total` (loss-scaled under fp16); the
    /// gradients are unscaled before any B_i scaling and clipping.
    fn backward(&mut self, total: &Tensor) {
        self.model_opt.zero_grad();
        self.scaled(total).backward();
        if let Some(s) = &self.scaler {
            self.found_non_finite |= !s.unscale(&mut self.model_opt);
        }
    }

    /// Every method but `cggm-authors`: CGGM's order of operations (README "What CGGM computes
    /// here") with the baselines' hooks.
    fn modulated_iteration(
        &mut self,
        images: &N::Input,
        labels: &Tensor,
        step: usize,
    ) -> Result<Iteration, StepError> {
        // Before this step's forward, which moves batch norm's running statistics: the probe's
        // eps^t then depends on the model at step t alone, never on step t's batch.
        let probed = self.probe_metrics();
        let (out, task_loss) = self.forward(images, labels)?;
        let (mut metrics, classifier_grads) = self.classifier_pass(&out, labels)?;
        if let Some(probed) = probed {
            metrics = probed;
        }
        let (balance, guarded, clamped) = self.balance_of(&metrics);
        // g_F from the (loss-scaled) task loss: the cosines, and so L_gm, do not depend on scale.
        let (l_gm, cosine) =
            self.direction_term(&self.scaled(&task_loss), &classifier_grads, &balance);
        // numbers (issue 8): a new tensor, not a shallow clone: `+=` below is in place and would
        // otherwise add L_gm (and PMR's term) into the reported task loss too.
        let mut total = &task_loss * 1.0;
        let mut gm_value = 0.0;
        if let Some(l_gm) = l_gm {
            gm_value = finite_direction_loss(l_gm.double_value(&[]), step)?;
            total += l_gm * self.model.cfg.cggm.lambda;
        }
        // Baselines: PMR's loss before backward, OGM-GE/AGM's scaling after it.
        let mut baseline_coefficients = Vec::new();
        if let Some((l_pmr, weights)) = self.baseline_loss(&out, labels) {
            total += l_pmr;
            baseline_coefficients = weights;
        }
        self.backward(&total);
        if self.model.cfg.method.modulates_magnitude() {
            // Encoder i is optimiser group i + 1: one kernel per encoder on its flat gradients.
            for (i, b) in balance.iter().enumerate() {
                self.model_opt.scale_group_gradients(i + 1, *b);
            }
        }
        let scaled = self.baseline_after_backward(images, labels);
        if !scaled.is_empty() {
            baseline_coefficients = scaled;
        }
        Ok(Iteration {
            total,
            task_loss,
            gm_loss: gm_value,
            balance,
            cosine,
            modality_metric: metrics,
            balance_guarded: guarded,
            balance_clamped: clamped,
            baseline_coefficients,
        })
    }

    /// The balance coefficients B of this step from the classifiers' metrics, whether the guard
    /// set them neutral, and how many it clamped. Measured for every run with classifiers,
    /// applied only by CGGM; the fixed-B controls measure B but apply the neutral value.
    fn balance_of(&mut self, metrics: &[f64]) -> (Vec<f64>, bool, usize) {
        let m = self.model.modality_channels.len();
        let (mut balance, mut guarded, mut clamped) = (vec![1.0; m], false, 0);
        if self.model.classifiers.is_some() {
            let outcome = self.tracker.update_outcome(metrics);
            (balance, guarded, clamped) = (outcome.coefficients, outcome.guarded, outcome.clamped);
        }
        if matches!(
            self.model.cfg.method,
            Method::CggmFixed | Method::CggmMagnitudeFixed
        ) {
            balance = neutral_balance(m, self.model.cfg.cggm.rho);
        }
        (balance, guarded, clamped)
    }
}

/// `value` of L_gm, or the error that training diverged at `step`.
fn finite_direction_loss(value: f64, step: usize) -> Result<f64, StepError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(StepError::NonFinite {
            what: "direction loss L_gm",
            value,
            step,
        })
    }
}

/// One iteration's losses (the total backpropagated, the task's part) and what it measured.
struct Iteration {
    total: Tensor,
    task_loss: Tensor,
    gm_loss: f64,
    balance: Vec<f64>,
    cosine: Vec<f64>,
    modality_metric: Vec<f64>,
    balance_guarded: bool,
    balance_clamped: usize,
    baseline_coefficients: Vec<f64>,
}

impl Iteration {
    fn report(self, lr: f64) -> StepReport {
        StepReport {
            loss: self.total.double_value(&[]),
            task_loss: self.task_loss.double_value(&[]),
            gm_loss: self.gm_loss,
            lr,
            balance: self.balance,
            cosine: self.cosine,
            modality_metric: self.modality_metric,
            balance_guarded: self.balance_guarded,
            balance_clamped: self.balance_clamped,
            baseline_coefficients: self.baseline_coefficients,
        }
    }
}

impl<N: MultimodalNetwork> Trainer<N> {
    /// `cggm-authors`: one iteration of the authors' loop (zrguo/CGGM `src/segtrain.py`,
    /// `src/msatrain.py`), leaving the model's gradients in place for `step`:
    /// 1. forward; loss = L_task + lambda L_gm^(t-1) when the previous step built one (none at
    ///    step 0); L_gm^(t-1)'s gradient reaches only the fusion head's last-layer weight and is
    ///    evaluated at the weights it was built from (their graph holds clones of them);
    /// 2. the classifiers on detached features, their eps_i (per-sample Dice with 1e-3 smoothing
    ///    for BraTS, sign accuracy with `> 0` for regression, accuracy for classification) before
    ///    their optimiser steps;
    /// 3. c_i = (S + 1e-8 - d_i) / (S + 1e-8); L_gm^t = (sum |c_i| - sum c_i cos(W_i, W_F)) / M
    ///    from the last layers' weights now (before either optimiser steps), kept for step t + 1;
    /// 4. backward; feature tasks multiply the gradients of `encoders.<i>` (not the projection)
    ///    by rho c_i, BraTS scales nothing (their code names `vision_encoder`/`text_encoder`,
    ///    which their segmentation model does not have); gradient clipping (`grad_clip`: 0.8 in
    ///    the feature presets, none in `paper`) and the optimiser step follow in `step`.
    fn authors_iteration(
        &mut self,
        images: &N::Input,
        labels: &Tensor,
        step: usize,
    ) -> Result<Iteration, StepError> {
        let (out, task_loss) = self.forward(images, labels)?;
        let mut total = &task_loss * 1.0;
        let gm_value = self.add_lagged_direction_term(&mut total, step)?;
        // The last layers' weights before either optimiser steps: L_gm^t is built from them.
        let fusion = SavedTensor::of(self.model.network.last_layer_weight());
        let classifier_weights = self.classifier_last_weights();
        let (metrics, _) = self.classifier_pass(&out, labels)?;
        let outcome = self.tracker.update_outcome(&metrics);
        let coefficients = authors::coefficients(&self.tracker.last_improvements);
        let w_f_now = fusion.tensor(self.model.device);
        let cosine: Vec<f64> = classifier_weights
            .iter()
            .map(|w| flat_cosine(&w_f_now, w).double_value(&[]))
            .collect();
        self.tracker.authors_lag = Some(LaggedDirection {
            fusion,
            classifiers: classifier_weights.iter().map(SavedTensor::of).collect(),
            coefficients: coefficients.clone(),
        });
        self.backward(&total);
        if self.model.cfg.task != crate::task::TaskKind::Segmentation {
            self.scale_encoder_gradients_authors(&coefficients);
        }
        Ok(Iteration {
            total,
            task_loss,
            gm_loss: gm_value,
            balance: outcome.coefficients,
            cosine,
            modality_metric: metrics,
            balance_guarded: false,
            balance_clamped: 0,
            baseline_coefficients: Vec::new(),
        })
    }

    /// Adds lambda L_gm^(t-1) to `total` when the previous step built one (and lambda is not 0);
    /// its value (0 otherwise).
    fn add_lagged_direction_term(&self, total: &mut Tensor, step: usize) -> Result<f64, StepError> {
        let lambda = self.model.cfg.cggm.lambda;
        let Some(lag) = self.tracker.authors_lag.as_ref().filter(|_| lambda != 0.0) else {
            return Ok(0.0);
        };
        let (value, grad) = lag.value_and_gradient(self.model.device);
        let value = finite_direction_loss(value, step)?;
        // A term whose value is L_gm^(t-1) and whose gradient w.r.t. the current weight W_F
        // is the old gradient: <W_F, g> - <W_F, g>.detach() + value.
        let w_f = self.model.network.last_layer_weight();
        let linear = (w_f * grad.to_kind(w_f.kind())).sum(tch::Kind::Float);
        *total += (&linear - linear.detach() + value) * lambda;
        Ok(value)
    }

    /// Copies of the classifiers' last-layer weights (none without classifiers).
    fn classifier_last_weights(&self) -> Vec<Tensor> {
        let m = self.model.modality_channels.len();
        self.model
            .classifiers
            .as_ref()
            .map(|cls| {
                (0..m)
                    .map(|i| cls.last_layer_weight(i).detach().copy())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The authors' feature-task modulation: the gradients of encoder i (optimiser group i + 1),
    /// except its input projection, times rho c_i.
    fn scale_encoder_gradients_authors(&self, coefficients: &[f64]) {
        let rho = self.model.cfg.cggm.rho;
        let names = &self.model.modality_names;
        tch::no_grad(|| {
            for p in self.model_opt.params().iter().filter(|p| p.group > 0) {
                let projection = format!("encoders.{}.proj.", names[p.group - 1]);
                if p.name.starts_with(&projection) {
                    continue;
                }
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(rho * coefficients[p.group - 1]);
                }
            }
        });
    }
}

/// Trainable variables split into the model's (in the optimiser group the model created each in:
/// 0 = fusion head, i + 1 = encoder i) and the classifiers' (created in `CLASSIFIER_GROUP`),
/// sorted by name for a stable order.
fn named_params(vs: &nn::VarStore) -> (Vec<Param>, Vec<Param>) {
    let variables = vs
        .variables_
        .lock()
        .expect("the VarStore lock is not poisoned");
    // Named and trainable variables are the same tensors: match them by storage.
    let group_of: std::collections::HashMap<usize, usize> = variables
        .trainable_variables
        .iter()
        .map(|v| (v.tensor.data_ptr() as usize, v.group))
        .collect();
    let mut vars: Vec<(String, Tensor)> = variables
        .named_variables
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut model, mut classifiers) = (Vec::new(), Vec::new());
    for (name, tensor) in vars {
        match group_of.get(&(tensor.data_ptr() as usize)) {
            Some(&CLASSIFIER_GROUP) => classifiers.push(Param {
                name,
                tensor,
                group: 0,
            }),
            Some(&group) => model.push(Param {
                name,
                tensor,
                group,
            }),
            None => {}
        }
    }
    (model, classifiers)
}
