//! What the training step needs from a multimodal model, whatever the task: a forward pass, the
//! fusion head's last layer (where g_F is taken), the per-modality classifiers' logits and last
//! layers, and the model's parameter groups (0 = fusion, i + 1 = modality i's encoder). The step
//! in `step.rs` is written once against these traits; segmentation and feature models implement
//! them.

use tch::Tensor;

/// The optimiser group the per-modality classifiers create their parameters in (`nn::Path::
/// set_group`). The model creates its own in group 0 (fusion and head) and i + 1 (modality i's
/// encoder); the trainer reads the groups from the VarStore, so no parameter name is matched.
pub const CLASSIFIER_GROUP: usize = usize::MAX;

/// One batch's model input: all modalities of the dataset, selectable and maskable per modality.
pub trait ModalityInput: Sized {
    /// Keeps the modalities `indices` (dataset order), in that order.
    fn pick_modalities(&self, indices: &[i64]) -> Self;
    /// Multiplies modality i of sample b by `keep[b, i]` (0 or 1): modality dropout.
    fn mask_modalities(&self, keep: &Tensor) -> Self;
    fn batch_size(&self) -> i64;
}

/// The result of one forward pass.
pub trait NetworkOutput {
    /// The model's prediction: [B, C, H, W] (segmentation), [B, C] or [B, 1].
    fn logits(&self) -> &Tensor;
    /// Modality i's encoder features as rows with a class label each, for prototype methods
    /// (PMR): ([N, C] features with their graph, [N] int64 labels; regression: sign classes).
    /// None where the model has no such features.
    fn prototype_rows(&self, _i: usize, _labels: &Tensor) -> Option<(Tensor, Tensor)> {
        None
    }
}

/// The multimodal model: encoders phi_i, fusion Omega and head F.
pub trait MultimodalNetwork {
    type Input: ModalityInput;
    type Output: NetworkOutput;
    /// The per-modality classifiers f_i that go with this model.
    type Classifiers: ModalityClassifierSet<Self::Output>;

    /// xs: the selected modalities in the model's order.
    fn forward_t(&self, xs: &Self::Input, train: bool) -> Self::Output;
    /// The fusion head's last layer's weight: where g_F is taken.
    fn last_layer_weight(&self) -> &Tensor;
    /// The modalities, in the model's order: encoder i's parameters are optimiser group i + 1.
    fn modality_names(&self) -> &[String];
}

/// The classifiers f_i, one per modality, on detached encoder features.
pub trait ModalityClassifierSet<O> {
    /// Every classifier's logits on `out`'s detached features, in modality order; each has the
    /// shape of the model's logits.
    fn logits_t(&self, out: &O, train: bool) -> Vec<Tensor>;
    /// Classifier i's last-layer weight: the shape of the fusion head's last layer.
    fn last_layer_weight(&self, i: usize) -> Tensor;
    /// Its gradient after a backward pass (undefined before).
    fn last_layer_grad(&self, i: usize) -> Tensor;
}
