//! Where the baselines enter the step, for every task: three calls from
//! `Trainer::compute_gradients` (scores while the classifiers run, a loss term before backward,
//! gradient scaling after it). The methods are defined on class scores; for regression (float
//! labels) the score of a prediction is `exp(-|y_hat - y|)` (1 when exact, the analogue of the
//! true-class probability), AGM's response loss is the L1 error, and PMR's prototypes are those of
//! the two sign classes (y < 0, y >= 0), the field's Acc-2 convention.

use super::{
    ogm_coefficients, pmr_weights_by, prototype_logits, response_cross_entropy,
    scale_encoder_weight_gradients, shapley_responses, true_class_confidence, AgmState, Prototypes,
};
use crate::config::Method;
use crate::model::network::{ModalityInput, MultimodalNetwork, NetworkOutput};
use crate::step::Trainer;
use tch::{Kind, Reduction, Tensor};

/// What the baselines remember between steps (not checkpointed: a resumed run restarts AGM's
/// running means and PMR's prototypes).
#[derive(Debug, Default)]
pub struct BaselineState {
    /// OGM-GE: this step's per-modality true-class confidence of the classifiers.
    pub confidences: Vec<f64>,
    pub agm: AgmState,
    pub prototypes: Vec<Prototypes>,
}

/// How well `logits` predict `labels` (higher is better): the mean true-class probability, or for
/// regression the mean `exp(-|y_hat - y|)`.
fn confidence(logits: &Tensor, labels: &Tensor) -> f64 {
    if labels.kind() == Kind::Int64 {
        return true_class_confidence(logits, labels);
    }
    let error = (logits.to_kind(Kind::Float).reshape([-1]) - labels.to_kind(Kind::Float)).abs();
    (-error).exp().mean(Kind::Float).double_value(&[])
}

/// AGM's loss of a mono-modal response (lower is better): cross-entropy, or for regression L1.
fn response_loss(response: &Tensor, labels: &Tensor) -> f64 {
    if labels.kind() == Kind::Int64 {
        return response_cross_entropy(response, labels);
    }
    (response.to_kind(Kind::Float).reshape([-1]) - labels.to_kind(Kind::Float))
        .abs()
        .mean(Kind::Float)
        .double_value(&[])
}

/// Called with each modality's classifier logits during the classifier pass (OGM-GE's scores).
pub(crate) fn scores_hook(
    state: &mut BaselineState,
    method: Method,
    logits: &[Tensor],
    labels: &Tensor,
) {
    if method == Method::OgmGe {
        state.confidences = logits
            .iter()
            .map(|l| confidence(&l.detach(), labels))
            .collect();
    }
}

impl<N: MultimodalNetwork> Trainer<N> {
    /// PMR's loss term, `alpha * sum_i w_i PCE_i`, before backward; also returns the weights.
    pub(crate) fn baseline_loss(
        &mut self,
        out: &N::Output,
        labels: &Tensor,
    ) -> Option<(Tensor, Vec<f64>)> {
        if self.model.cfg.method != Method::Pmr {
            return None;
        }
        // Regression: the two sign classes.
        let classes = if labels.kind() == Kind::Int64 {
            out.logits().size()[1]
        } else {
            2
        };
        let m = self.model.modality_channels.len();
        if self.baselines.prototypes.len() != m {
            self.baselines.prototypes = (0..m).map(|_| Prototypes::default()).collect();
        }
        let momentum = self.model.cfg.baselines.pmr_momentum;
        let mut losses = Vec::with_capacity(m);
        let mut scores = Vec::with_capacity(m);
        for i in 0..m {
            let (rows, row_labels) = out.prototype_rows(i, labels)?;
            let protos = &mut self.baselines.prototypes[i];
            protos.update(&rows, &row_labels, classes, momentum);
            let p = protos.ready()?;
            let logits = prototype_logits(&rows, &p.detach());
            scores.push(true_class_confidence(&logits, &row_labels));
            losses.push(logits.cross_entropy_loss::<Tensor>(
                &row_labels,
                None,
                Reduction::Mean,
                -100,
                0.0,
            ));
        }
        let weights = pmr_weights_by(&scores, self.model.cfg.baselines.pmr_weight_rule);
        let alpha = self.model.cfg.baselines.pmr_alpha;
        let mut total = Tensor::zeros([], (Kind::Float, self.model.device));
        for (l, w) in losses.iter().zip(&weights) {
            if *w > 0.0 {
                total += l * (alpha * w);
            }
        }
        Some((total, weights))
    }

    /// OGM-GE and AGM: scale (and for OGM-GE perturb) the encoders' gradients after backward.
    /// Returns the coefficients applied.
    pub(crate) fn baseline_after_backward(
        &mut self,
        inputs: &N::Input,
        labels: &Tensor,
    ) -> Vec<f64> {
        match self.model.cfg.method {
            Method::OgmGe => {
                let b = &self.model.cfg.baselines;
                if !(b.ogm_start_epoch..=b.ogm_end_epoch).contains(&self.epoch()) {
                    // Outside BalanceBenchmark's modulation window: joint training.
                    return vec![1.0; self.model.modality_channels.len()];
                }
                let k = ogm_coefficients(
                    &self.baselines.confidences,
                    self.model.cfg.baselines.ogm_alpha,
                );
                scale_encoder_weight_gradients(
                    self.model_opt.params(),
                    &k,
                    self.model.cfg.baselines.ogm_noise,
                );
                k
            }
            Method::Agm => {
                let xs = inputs.pick_modalities(&self.model.modality_channels);
                let (b, m) = (xs.batch_size(), self.model.modality_channels.len());
                let responses = tch::no_grad(|| {
                    shapley_responses(m, |keep| {
                        let mask: Vec<f32> =
                            keep.iter().map(|k| if *k { 1.0 } else { 0.0 }).collect();
                        let mask = Tensor::from_slice(&mask)
                            .view([1, m as i64])
                            .repeat([b, 1])
                            .to_device(self.model.device);
                        let out = self
                            .model
                            .network
                            .forward_t(&xs.mask_modalities(&mask), false);
                        out.logits().shallow_clone()
                    })
                });
                let scores: Vec<f64> = responses.iter().map(|r| response_loss(r, labels)).collect();
                let k = self
                    .baselines
                    .agm
                    .update(&scores, self.model.cfg.baselines.agm_alpha);
                scale_encoder_weight_gradients(self.model_opt.params(), &k, false);
                k
            }
            _ => Vec::new(),
        }
    }
}
