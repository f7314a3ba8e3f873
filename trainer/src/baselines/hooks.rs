//! Where the baselines enter the segmentation step: three calls from `Trainer::compute_gradients`
//! (scores while the classifiers run, a loss term before backward, gradient scaling after it).

use super::{
    ogm_coefficients, pixel_rows, pmr_weights, prototype_logits, response_cross_entropy,
    scale_encoder_weight_gradients, shapley_responses, true_class_confidence, AgmState, Prototypes,
};
use crate::config::Method;
use crate::model::ModelOutput;
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

impl Trainer {
    /// Called with each modality's classifier logits during the classifier pass (OGM-GE's scores).
    pub(crate) fn baseline_scores_hook(
        state: &mut BaselineState,
        method: Method,
        logits: &[Tensor],
        labels: &Tensor,
    ) {
        if method == Method::OgmGe {
            state.confidences = logits
                .iter()
                .map(|l| true_class_confidence(l, labels))
                .collect();
        }
    }

    /// PMR's loss term, `alpha * sum_i w_i PCE_i`, before backward; also returns the weights.
    pub(crate) fn baseline_loss(
        &mut self,
        out: &ModelOutput,
        labels: &Tensor,
    ) -> Option<(Tensor, Vec<f64>)> {
        if self.cfg.method != Method::Pmr {
            return None;
        }
        let classes = self.cfg.model.classes;
        let m = out.features.len();
        if self.baselines.prototypes.len() != m {
            self.baselines.prototypes = (0..m).map(|_| Prototypes::default()).collect();
        }
        let momentum = self.cfg.baselines.pmr_momentum;
        let mut losses = Vec::with_capacity(m);
        let mut scores = Vec::with_capacity(m);
        for (i, f) in out.features.iter().enumerate() {
            // The high-level feature as the decoder sees it: upsampled to the low-level map's
            // stride (4), where small tumour classes still have pixels.
            let (lh, lw) = (f.low.size()[2], f.low.size()[3]);
            let high = f
                .high
                .upsample_bilinear2d([lh, lw], false, None::<f64>, None::<f64>);
            let (rows, small) = pixel_rows(&high, labels);
            let protos = &mut self.baselines.prototypes[i];
            protos.update(&rows, &small, classes, momentum);
            let p = protos.ready()?;
            let logits = prototype_logits(&rows, &p.detach());
            scores.push(true_class_confidence(&logits, &small));
            losses.push(logits.cross_entropy_loss::<Tensor>(
                &small,
                None,
                Reduction::Mean,
                -100,
                0.0,
            ));
        }
        let weights = pmr_weights(&scores);
        let alpha = self.cfg.baselines.pmr_alpha;
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        for (l, w) in losses.iter().zip(&weights) {
            if *w > 0.0 {
                total += l * (alpha * w);
            }
        }
        Some((total, weights))
    }

    /// OGM-GE and AGM: scale (and for OGM-GE perturb) the encoders' gradients after backward.
    /// Returns the coefficients applied.
    pub(crate) fn baseline_after_backward(&mut self, images: &Tensor, labels: &Tensor) -> Vec<f64> {
        match self.cfg.method {
            Method::OgmGe => {
                let k = ogm_coefficients(&self.baselines.confidences, self.cfg.baselines.ogm_alpha);
                scale_encoder_weight_gradients(
                    self.model_opt.params(),
                    &k,
                    self.cfg.baselines.ogm_noise,
                );
                k
            }
            Method::Agm => {
                let xs = self.select_modalities(images);
                let m = xs.size()[1] as usize;
                let responses = tch::no_grad(|| {
                    shapley_responses(m, |keep| {
                        let mask: Vec<f32> =
                            keep.iter().map(|k| if *k { 1.0 } else { 0.0 }).collect();
                        let mask = Tensor::from_slice(&mask)
                            .view([1, m as i64, 1, 1])
                            .to_device(xs.device());
                        self.model.forward_t(&(&xs * mask), false).logits
                    })
                });
                let scores: Vec<f64> = responses
                    .iter()
                    .map(|r| response_cross_entropy(r, labels))
                    .collect();
                let k = self
                    .baselines
                    .agm
                    .update(&scores, self.cfg.baselines.agm_alpha);
                scale_encoder_weight_gradients(self.model_opt.params(), &k, false);
                k
            }
            _ => Vec::new(),
        }
    }
}
