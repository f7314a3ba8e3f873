//! Fast whole-volume prediction: what `Predictor::predict` runs (evaluation, `cggm infer`, the
//! server's predictions). Against the reference path (`Predictor::predict_reference`, the
//! training modules in eval mode, slice batches copied voxel by voxel):
//!
//! - batch norm folded into the convolutions and weights cast once to the inference dtype
//!   (`model::folded`), no autograd;
//! - slices without brain are not predicted: the brain mask (a voxel where every modality is
//!   exactly zero is outside the brain) sets them to background in both paths, so this is exact;
//! - batches laid out channels-last (max pooling and the argmax over classes are several times
//!   faster on it on the CPU);
//! - opt-in (`CGGM_INFERENCE_CROP=<margin>`): in-plane, only the brain's bounding box widened by
//!   the margin is predicted (as nnU-Net does); everything outside is background by the mask. The
//!   crop's origin is kept on the network's stride-16 grid, but the context outside the box
//!   (zero padding of feature maps at the box's border, ASPP's image-level pooling over the box
//!   instead of the whole slice) changes some labels inside the brain (4.4 % of brain voxels for
//!   fresh cpu-small weights on `bench infer`'s volume), so it is off by default;
//! - the volume is reordered into slice batches by tensor ops (one copy), labels written back
//!   the same way.
//!
//! With the crop off (the default) and fp32 the labels equal the reference path's (tested below);
//! in bf16 both paths round differently.

use crate::amp::{self, AmpDtype};
use crate::data::synth::{phantom, synthetic_header, SynthConfig};
use crate::data::Study;
use crate::model::folded::FoldedSegmenter;
use crate::model::{ModalityClassifiers, MultimodalSegmenter};
use ndarray::{s, Array3, Array4, Axis};
use tch::{Device, Kind, Tensor};

/// In-plane margin (voxels) kept around the brain's bounding box when cropping is on.
pub const DEFAULT_CROP_MARGIN: usize = 16;

/// The network's total stride: crops start on its grid and are padded to its multiple.
const STRIDE: usize = 16;

/// How `Predictor::predict_with` predicts (default: whole slices, the device's dtype).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PredictOptions {
    /// Predict only the brain's bounding box, widened by this many voxels in-plane; None =
    /// whole slices.
    pub crop_margin: Option<usize>,
    /// The dtype to compute in; None = the device's inference dtype (`inference_kind`).
    pub kind: Option<Kind>,
}

impl PredictOptions {
    /// The defaults, with `CGGM_INFERENCE_CROP` (off / on = margin 16 / a margin in voxels).
    pub fn from_env() -> Self {
        let mut options = Self::default();
        if let Ok(v) = std::env::var("CGGM_INFERENCE_CROP") {
            match v.trim() {
                "off" | "none" | "false" => options.crop_margin = None,
                "on" | "true" => options.crop_margin = Some(DEFAULT_CROP_MARGIN),
                other => match other.parse::<usize>() {
                    Ok(margin) => options.crop_margin = Some(margin),
                    Err(_) => tracing::warn!(
                        "CGGM_INFERENCE_CROP={other:?} is not `off`, `on` or a margin in voxels; \
                         predicting whole slices"
                    ),
                },
            }
        }
        options
    }
}

/// The dtype the folded network computes in on `device` (see `amp::inference_dtype`).
pub fn inference_kind(device: Device) -> Kind {
    match amp::inference_dtype(device) {
        None => Kind::Float,
        Some(AmpDtype::Bf16) => Kind::BFloat16,
        Some(AmpDtype::Fp16) => Kind::Half,
    }
}

/// Half-open index range of the `true` entries of a 1-D bool tensor, or None if there are none.
fn true_range(mask: &Tensor) -> Option<(usize, usize)> {
    let idx = mask.nonzero().view([-1]);
    let n = idx.size()[0];
    (n > 0).then(|| {
        let first = idx.int64_value(&[0]) as usize;
        let last = idx.int64_value(&[n - 1]) as usize;
        (first, last + 1)
    })
}

/// The in-plane window [start, start + padded) predicted along an axis of `n` voxels whose brain
/// occupies `[lo, hi)`: widened by `margin`, start on the stride grid, length a stride multiple.
/// Returns (start, kept, padded): `kept` voxels of the window lie inside the volume.
fn window(n: usize, lo: usize, hi: usize, margin: Option<usize>) -> (usize, usize, usize) {
    let (start, end) = match margin {
        None => (0, n),
        Some(m) => ((lo.saturating_sub(m) / STRIDE) * STRIDE, (hi + m).min(n)),
    };
    let kept = end - start;
    (start, kept, kept.div_ceil(STRIDE) * STRIDE)
}

/// What a trained run needs to predict.
pub struct Predictor<'a> {
    pub model: &'a MultimodalSegmenter,
    pub classifiers: Option<&'a ModalityClassifiers>,
    /// Channel of each model input in the study's fixed modality order.
    pub modality_channels: &'a [i64],
    pub modality_names: Vec<String>,
    pub device: Device,
    pub batch: usize,
}

impl crate::model::Model {
    /// The predictor of this model's network and classifiers.
    pub fn predictor(&self) -> Predictor<'_> {
        Predictor {
            model: &self.network,
            classifiers: self.classifiers.as_ref(),
            modality_channels: &self.modality_channels,
            modality_names: self.modality_names.clone(),
            device: self.device,
            batch: self.cfg.eval_batch,
        }
    }
}

/// Predicted internal labels [X, Y, Z]: the fused model's, and each classifier's.
pub struct VolumePrediction {
    pub fused: Array3<u8>,
    pub per_modality: Vec<Array3<u8>>,
}

/// Pads a side up to the next multiple of the network's total stride.
fn padded(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl Predictor<'_> {
    /// Predicts every axial slice of the study (`with_classifiers`: also each modality's own
    /// classifier), masked to the brain: the fast path of `crate::predict` with its defaults and
    /// the `CGGM_INFERENCE_CROP` override.
    pub fn predict(
        &self,
        study: &Study,
        with_classifiers: bool,
        progress: impl FnMut(f64),
    ) -> VolumePrediction {
        self.predict_with(
            study,
            with_classifiers,
            PredictOptions::from_env(),
            progress,
        )
    }

    /// The reference path: the training modules in eval mode (autocast to the inference dtype),
    /// every slice whole. `predict` must agree with it (tests in `crate::predict`); benchmarks
    /// time both.
    pub fn predict_reference(
        &self,
        study: &Study,
        with_classifiers: bool,
        progress: impl FnMut(f64),
    ) -> VolumePrediction {
        let dtype = amp::inference_dtype(self.device);
        self.predict_reference_as(study, with_classifiers, dtype, progress)
    }

    /// [`Predictor::predict_reference`] with autocast to `dtype` (None: fp32).
    pub fn predict_reference_as(
        &self,
        study: &Study,
        with_classifiers: bool,
        dtype: Option<amp::AmpDtype>,
        mut progress: impl FnMut(f64),
    ) -> VolumePrediction {
        let (_, nx, ny, nz) = study.images.dim();
        let (px, py) = (padded(nx), padded(ny));
        let m = self.modality_channels.len();
        let want_cls = with_classifiers && self.classifiers.is_some();
        let mut fused = Array3::<u8>::zeros((nx, ny, nz));
        let mut per_modality = if want_cls {
            vec![Array3::<u8>::zeros((nx, ny, nz)); m]
        } else {
            Vec::new()
        };
        let mut z0 = 0;
        while z0 < nz {
            let z1 = (z0 + self.batch).min(nz);
            let xs = self.reference_input(study, z0..z1, (px, py));
            // bf16 where the device computes it natively (see `amp::inference_dtype`).
            tch::no_grad(|| {
                let out = amp::autocast(self.device, dtype, || self.model.forward_t(&xs, false));
                write_slices(&mut fused, &out.logits, z0, nx, ny);
                if want_cls {
                    let cls = self.classifiers.expect("checked above");
                    let all = amp::autocast(self.device, dtype, || {
                        cls.forward_t(&out, (px as i64, py as i64), false)
                    });
                    for (i, pm) in per_modality.iter_mut().enumerate() {
                        write_slices(pm, &cls.logits_of(&all, i), z0, nx, ny);
                    }
                }
            });
            z0 = z1;
            progress(z0 as f64 / nz as f64);
        }
        mask_to_brain(&mut fused, study);
        for pm in &mut per_modality {
            mask_to_brain(pm, study);
        }
        VolumePrediction {
            fused,
            per_modality,
        }
    }

    /// The slices `zs` of the model's modalities as a batch [b, M, px, py] on the device, zero
    /// padded (= background after z-scoring).
    fn reference_input(
        &self,
        study: &Study,
        zs: std::ops::Range<usize>,
        (px, py): (usize, usize),
    ) -> Tensor {
        let m = self.modality_channels.len();
        let b = zs.len();
        let mut input = vec![0f32; b * m * px * py];
        for (ci, &ch) in self.modality_channels.iter().enumerate() {
            let vol = study.images.index_axis(Axis(0), ch as usize);
            for (bi, z) in zs.clone().enumerate() {
                let slice = vol.slice(s![.., .., z]);
                let base = (bi * m + ci) * px * py;
                for ((x, y), v) in slice.indexed_iter() {
                    input[base + x * py + y] = *v;
                }
            }
        }
        Tensor::from_slice(&input)
            .view([b as i64, m as i64, px as i64, py as i64])
            .to_device(self.device)
    }
}

/// Sets every voxel outside the brain (all four modalities exactly zero) to background.
pub fn mask_to_brain(labels: &mut Array3<u8>, study: &Study) {
    let images = &study.images;
    for ((x, y, z), label) in labels.indexed_iter_mut() {
        if *label != 0 && (0..images.dim().0).all(|c| images[[c, x, y, z]] == 0.0) {
            *label = 0;
        }
    }
}

/// argmax of logits [b, C, px, py] into labels[.., .., z0..z0+b], cropping the padding.
fn write_slices(labels: &mut Array3<u8>, logits: &Tensor, z0: usize, nx: usize, ny: usize) {
    let pred = crate::task::class_indices(logits)
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .contiguous();
    let size = pred.size();
    let (b, px, py) = (size[0] as usize, size[1] as usize, size[2] as usize);
    let mut host = vec![0u8; b * px * py];
    pred.copy_data(&mut host, b * px * py);
    for bi in 0..b {
        for x in 0..nx {
            for y in 0..ny {
                labels[[x, y, z0 + bi]] = host[(bi * px + x) * py + y];
            }
        }
    }
}

impl Predictor<'_> {
    /// [`Predictor::predict`] with explicit options.
    pub fn predict_with(
        &self,
        study: &Study,
        with_classifiers: bool,
        options: PredictOptions,
        mut progress: impl FnMut(f64),
    ) -> VolumePrediction {
        let (channels, nx, ny, nz) = study.images.dim();
        let want_cls = with_classifiers && self.classifiers.is_some();
        let images = study.images.as_standard_layout();
        let volume = Tensor::from_slice(images.as_slice().expect("standard layout")).view([
            channels as i64,
            nx as i64,
            ny as i64,
            nz as i64,
        ]);
        let Some(window) = BrainWindow::of(&volume, options.crop_margin) else {
            progress(1.0);
            let outputs = if want_cls {
                self.modality_channels.len()
            } else {
                0
            };
            return VolumePrediction {
                fused: Array3::zeros((nx, ny, nz)),
                per_modality: vec![Array3::zeros((nx, ny, nz)); outputs],
            };
        };
        let kind = options.kind.unwrap_or_else(|| inference_kind(self.device));
        let stack = window.stack(&volume, self.modality_channels, kind);
        drop(volume);
        let classifiers = if want_cls { self.classifiers } else { None };
        let network = FoldedSegmenter::new(self.model, classifiers, kind);
        let outputs = if want_cls {
            1 + self.modality_channels.len()
        } else {
            1
        };
        let labels = self.label_batches(&network, &stack, &window, outputs, &mut progress);
        drop(stack);
        let mut per_modality: Vec<Array3<u8>> = labels
            .iter()
            .map(|p| window.place(p, [nx, ny, nz]))
            .collect();
        let fused = per_modality.remove(0);
        VolumePrediction {
            fused,
            per_modality,
        }
    }

    /// The labels of the stacked brain slices, a batch at a time: the fused head's, then each
    /// folded classifier's ([b, wx, wy] uint8 on the CPU per batch).
    fn label_batches(
        &self,
        network: &FoldedSegmenter,
        stack: &Tensor,
        window: &BrainWindow,
        outputs: usize,
        progress: &mut impl FnMut(f64),
    ) -> Vec<Vec<Tensor>> {
        let mut labels: Vec<Vec<Tensor>> = (0..outputs).map(|_| Vec::new()).collect();
        let batch = self.batch.max(1) as i64;
        let n_slices = window.slices.size()[0];
        let argmax = |logits: &Tensor| {
            logits
                .argmax(1, false)
                .to_kind(Kind::Uint8)
                .narrow(1, 0, window.wx as i64)
                .narrow(2, 0, window.wy as i64)
                .to_device(Device::Cpu)
        };
        tch::no_grad(|| {
            let mut start = 0;
            while start < n_slices {
                let b = batch.min(n_slices - start);
                let xs = stack.narrow(0, start, b).to_device(self.device);
                let out = network.forward(&xs);
                labels[0].push(argmax(&out.logits));
                for (i, per) in labels.iter_mut().enumerate().skip(1) {
                    per.push(argmax(&out.classifier(i - 1).expect("classifiers folded")));
                }
                start += b;
                progress(start as f64 / n_slices as f64);
            }
        });
        labels
    }
}

/// Where the fast path predicts: the slices that hold brain, and in-plane the brain's bounding
/// box widened by the crop margin (or whole slices), padded to the network's stride.
struct BrainWindow {
    /// Any modality nonzero (the rule of `mask_to_brain`), [X, Y, Z] uint8.
    brain: Tensor,
    /// z of every slice with brain.
    slices: Tensor,
    x0: usize,
    wx: usize,
    px: usize,
    y0: usize,
    wy: usize,
    py: usize,
}

impl BrainWindow {
    /// The window of `volume` [C, X, Y, Z]; None when it holds no brain.
    fn of(volume: &Tensor, crop_margin: Option<usize>) -> Option<Self> {
        let size = volume.size();
        let (nx, ny) = (size[1] as usize, size[2] as usize);
        let brain = volume.ne(0.0).any_dim(0, false); // [X, Y, Z]
        let in_x = brain.any_dim(2, false).any_dim(1, false);
        let in_y = brain.any_dim(2, false).any_dim(0, false);
        let in_z = brain.any_dim(1, false).any_dim(0, false);
        let ((bx0, bx1), (by0, by1)) = (true_range(&in_x)?, true_range(&in_y)?);
        let slices = in_z.nonzero().view([-1]);
        let (x0, wx, px) = window(nx, bx0, bx1, crop_margin);
        let (y0, wy, py) = window(ny, by0, by1, crop_margin);
        Some(Self {
            brain: brain.to_kind(Kind::Uint8),
            slices,
            x0,
            wx,
            px,
            y0,
            wy,
            py,
        })
    }

    /// [C, X, Y, Z] -> the brain slices of the model's `channels` [S, M, px, py] in `kind`,
    /// zero padded (= background after z-scoring): one reordering copy for the whole volume.
    fn stack(&self, volume: &Tensor, channels: &[i64], kind: Kind) -> Tensor {
        let channel_index = Tensor::from_slice(channels);
        volume
            .index_select(0, &channel_index)
            .narrow(1, self.x0 as i64, self.wx as i64)
            .narrow(2, self.y0 as i64, self.wy as i64)
            .index_select(3, &self.slices)
            .permute([3, 0, 1, 2])
            .to_kind(kind)
            .constant_pad_nd([0, (self.py - self.wy) as i64, 0, (self.px - self.wx) as i64])
    }

    /// Batches of window labels [b, wx, wy] back into the `[X, Y, Z]` volume, masked to the brain.
    fn place(&self, parts: &[Tensor], [nx, ny, nz]: [usize; 3]) -> Array3<u8> {
        let full = Tensor::zeros(
            [nx as i64, ny as i64, nz as i64],
            (Kind::Uint8, Device::Cpu),
        );
        let pred = Tensor::cat(parts, 0).permute([1, 2, 0]); // [wx, wy, S]
        let _ = full
            .narrow(0, self.x0 as i64, self.wx as i64)
            .narrow(1, self.y0 as i64, self.wy as i64)
            .index_copy_(2, &self.slices, &pred);
        let masked = (full * &self.brain).contiguous();
        let mut host = vec![0u8; nx * ny * nz];
        masked.copy_data(&mut host, nx * ny * nz);
        Array3::from_shape_vec((nx, ny, nz), host).expect("shape matches")
    }
}

/// A synthetic study on a `field` grid: the phantom of `data::synth` generated at `phantom_size`
/// (its brain spans about 72 %, 84 % and 80 % of that along x, y, z), centred in the field and
/// cut where it is larger, z-scored inside the brain as `load_study` does. With field
/// 240x240x155 and phantom 192x200x172 the brain spans about 138x168x138 voxels: the median
/// extent of a BraTS brain (nnU-Net's Task01 statistics), in a BraTS field of view.
pub fn synthetic_study(field: [usize; 3], phantom_size: [usize; 3], seed: u64) -> Study {
    let generated = phantom(
        &SynthConfig {
            cases: 1,
            seed,
            size: phantom_size,
            imbalance: 1.0,
        },
        0,
    );
    let mut images = Array4::<f32>::zeros((4, field[0], field[1], field[2]));
    // Per axis: where the overlap starts in the field and in the phantom, and its length.
    let overlap: Vec<(usize, usize, usize)> = (0..3)
        .map(|a| {
            let (f, p) = (field[a], phantom_size[a]);
            if p <= f {
                ((f - p) / 2, 0, p)
            } else {
                (0, (p - f) / 2, f)
            }
        })
        .collect();
    for (c, volume) in generated.images.iter().enumerate() {
        let mut data: Vec<f32> = volume.iter().map(|&v| v as f32).collect();
        z_score(&mut data);
        let volume = ndarray::ArrayView3::from_shape(phantom_size, &data).expect("phantom shape");
        let [(fx, px, lx), (fy, py, ly), (fz, pz, lz)] = [overlap[0], overlap[1], overlap[2]];
        images
            .slice_mut(s![c, fx..fx + lx, fy..fy + ly, fz..fz + lz])
            .assign(&volume.slice(s![px..px + lx, py..py + ly, pz..pz + lz]));
    }
    Study {
        id: "synthetic".into(),
        images,
        label: None,
        header: synthetic_header(field),
        voxel_volume_ml: 0.001,
    }
}

/// z-scores the nonzero voxels (the loader's normalisation: background stays exactly 0).
fn z_score(volume: &mut [f32]) {
    let brain: Vec<f64> = volume
        .iter()
        .filter(|v| **v != 0.0)
        .map(|&v| v as f64)
        .collect();
    if brain.is_empty() {
        return;
    }
    let n = brain.len() as f64;
    let mean = brain.iter().sum::<f64>() / n;
    let std = (brain.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let std = if std > 1e-8 { std } else { 1.0 };
    for v in volume.iter_mut().filter(|v| **v != 0.0) {
        let z = ((*v as f64 - mean) / std) as f32;
        *v = if z == 0.0 { f32::MIN_POSITIVE } else { z };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_outside_the_brain_are_set_to_background() {
        let mut images = ndarray::Array4::<f32>::zeros((4, 4, 4, 2));
        images[[0, 1, 1, 0]] = 0.3; // brain in FLAIR only
        images[[2, 2, 2, 1]] = -1.2; // brain in T1 only
        let study = Study {
            id: "c".into(),
            images,
            label: None,
            header: nifti::NiftiHeader::default(),
            voxel_volume_ml: 0.001,
        };
        let mut pred = Array3::<u8>::from_elem((4, 4, 2), 2);
        mask_to_brain(&mut pred, &study);
        assert_eq!(pred.iter().filter(|&&v| v != 0).count(), 2);
        assert_eq!((pred[[1, 1, 0]], pred[[2, 2, 1]]), (2, 2));
    }

    #[test]
    fn windows_start_on_the_stride_grid_and_cover_the_brain_with_its_margin() {
        // Brain in [40, 180) of 240, margin 16: from 16 (24 rounded down to the grid) to 196.
        assert_eq!(window(240, 40, 180, Some(16)), (16, 180, 192));
        // The margin is clipped at the volume's edges; the padding reaches the stride multiple.
        assert_eq!(window(240, 5, 238, Some(16)), (0, 240, 240));
        assert_eq!(window(155, 0, 155, None), (0, 155, 160));
        // No crop: the whole axis, as the reference path pads it.
        assert_eq!(window(240, 100, 101, None), (0, 240, 240));
    }

    use crate::model::{ModalityClassifiers, ModelConfig, MultimodalSegmenter};
    use tch::nn;

    const NAMES: [&str; 4] = ["flair", "t1ce", "t1", "t2"];

    /// The tiny model with every variable drawn from its own seeded generator (not libtorch's
    /// global one, which tests running in parallel share): He-normal weights, small biases, and
    /// batch-norm statistics and affine parameters far from their initial values, so that folding
    /// them is not the identity.
    fn tiny_model(seed: u64) -> (nn::VarStore, MultimodalSegmenter, ModalityClassifiers) {
        use rand::{Rng, SeedableRng};
        use rand_distr::{Distribution, Normal};
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig::tiny();
        let model = MultimodalSegmenter::new(&vs.root(), &cfg, &NAMES);
        let cls = ModalityClassifiers::new(&vs.root(), &cfg, &NAMES);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut t) in vars {
                let n = t.numel();
                let mut uniform = |lo: f32, hi: f32| -> Vec<f32> {
                    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
                };
                let values: Vec<f32> = if name.ends_with("bn.running_mean") {
                    uniform(-0.3, 0.3)
                } else if name.ends_with("bn.running_var") {
                    uniform(0.4, 2.5)
                } else if name.ends_with("bn.weight") {
                    uniform(0.5, 1.5)
                } else if name.ends_with("bias") {
                    uniform(-0.1, 0.1)
                } else if t.dim() >= 2 {
                    let fan_in = (n / t.size()[0] as usize).max(1) as f32;
                    let normal = Normal::new(0.0f32, (2.0 / fan_in).sqrt()).expect("positive");
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                } else {
                    continue;
                };
                t.copy_(&Tensor::from_slice(&values).view(t.size().as_slice()));
            }
        });
        (vs, model, cls)
    }

    fn predictor<'a>(
        model: &'a MultimodalSegmenter,
        cls: &'a ModalityClassifiers,
        channels: &'a [i64],
    ) -> Predictor<'a> {
        Predictor {
            model,
            classifiers: Some(cls),
            modality_channels: channels,
            modality_names: NAMES.iter().map(|n| n.to_string()).collect(),
            device: Device::Cpu,
            batch: 5,
        }
    }

    fn differing(a: &Array3<u8>, b: &Array3<u8>) -> usize {
        a.iter().zip(b.iter()).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn folded_network_computes_the_eval_mode_forward_of_model_and_classifiers() {
        let (_vs, mut model, cls) = tiny_model(3);
        let xs = Tensor::randn([3, 4, 48, 32], (Kind::Float, Device::Cpu));
        // The reference: the separate encoders' eval-mode forward.
        model.grouped_encoders = false;
        let (out, all) = tch::no_grad(|| {
            let out = model.forward_t(&xs, false);
            let all = cls.forward_t(&out, (48, 32), false);
            (out, all)
        });
        let scale = out.logits.abs().max().double_value(&[]);
        assert!(
            scale > 0.1,
            "logits are not degenerate: max |logit| {scale}"
        );
        for grouped in [false, true] {
            model.grouped_encoders = grouped;
            let folded =
                tch::no_grad(|| FoldedSegmenter::new(&model, Some(&cls), Kind::Float).forward(&xs));
            let diff = (&folded.logits - &out.logits).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "folded logits (grouped {grouped}) differ by {diff} (scale {scale})"
            );
            for i in 0..4 {
                let theirs = cls.logits_of(&all, i);
                let ours = folded.classifier(i).expect("classifiers folded");
                let diff = (&ours - &theirs).abs().max().double_value(&[]);
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "classifier {i} (grouped {grouped}) differs by {diff}"
                );
            }
        }
    }

    #[test]
    fn whole_slice_fp32_prediction_labels_every_voxel_like_the_reference_path() {
        let (_vs, model, cls) = tiny_model(5);
        // A 36x40 brain on a 40x44 grid; z 12 slices with the brain in about 10 of them.
        let study = synthetic_study([40, 44, 12], [50, 48, 12], 7);
        let empty_slices = (0..12)
            .filter(|&z| {
                study
                    .images
                    .slice(s![.., .., .., z])
                    .iter()
                    .all(|&v| v == 0.0)
            })
            .count();
        assert!(
            empty_slices >= 1,
            "the test volume has slices without brain"
        );
        let channels = [0i64, 1, 2, 3];
        let p = predictor(&model, &cls, &channels);
        let reference = p.predict_reference_as(&study, true, None, |_| {});
        let options = PredictOptions {
            crop_margin: None,
            kind: Some(Kind::Float),
        };
        let mut fractions = Vec::new();
        let fast = p.predict_with(&study, true, options, |f| fractions.push(f));
        assert_eq!(fractions.last(), Some(&1.0));
        let labelled = reference.fused.iter().filter(|&&v| v != 0).count();
        assert!(
            labelled > 100,
            "the reference labels some tumour ({labelled} voxels)"
        );
        assert_eq!(differing(&fast.fused, &reference.fused), 0);
        assert_eq!(fast.per_modality.len(), 4);
        for (ours, theirs) in fast.per_modality.iter().zip(&reference.per_modality) {
            assert_eq!(differing(ours, theirs), 0);
        }
    }

    #[test]
    fn modality_subsets_and_reordering_pick_the_same_channels_as_the_reference() {
        let (_vs, model, cls) = {
            tch::manual_seed(11);
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ModelConfig::tiny();
            let model = MultimodalSegmenter::new(&vs.root(), &cfg, &["t2", "flair"]);
            let cls = ModalityClassifiers::new(&vs.root(), &cfg, &["t2", "flair"]);
            (vs, model, cls)
        };
        let study = synthetic_study([32, 32, 6], [40, 40, 8], 3);
        let channels = [3i64, 0];
        let mut p = predictor(&model, &cls, &channels);
        p.modality_names = vec!["t2".into(), "flair".into()];
        let reference = p.predict_reference_as(&study, true, None, |_| {});
        let options = PredictOptions {
            crop_margin: None,
            kind: Some(Kind::Float),
        };
        let fast = p.predict_with(&study, true, options, |_| {});
        assert_eq!(differing(&fast.fused, &reference.fused), 0);
        assert_eq!(
            differing(&fast.per_modality[1], &reference.per_modality[1]),
            0
        );
    }

    #[test]
    fn brain_crop_predicts_background_outside_the_brain_and_whole_slices_when_the_box_fills_them() {
        let (_vs, model, cls) = tiny_model(5);
        let channels = [0i64, 1, 2, 3];
        let p = predictor(&model, &cls, &channels);
        let whole = PredictOptions {
            crop_margin: None,
            kind: Some(Kind::Float),
        };
        let cropped = PredictOptions {
            crop_margin: Some(DEFAULT_CROP_MARGIN),
            kind: Some(Kind::Float),
        };
        // A small brain in a large field: the crop predicts a 64x64 window of 96x96 and labels
        // nothing outside the brain.
        let small = synthetic_study([96, 96, 6], [40, 36, 8], 9);
        let b = p.predict_with(&small, false, cropped, |_| {});
        let outside_labelled = b
            .fused
            .indexed_iter()
            .filter(|&((x, y, z), &v)| v != 0 && (0..4).all(|c| small.images[[c, x, y, z]] == 0.0))
            .count();
        assert_eq!(outside_labelled, 0);
        assert!(
            b.fused.iter().any(|&v| v != 0),
            "the crop labels some voxels"
        );
        // A brain whose box plus margin reaches the field's edges: the window is the whole slice
        // and the labels are those of whole-slice prediction.
        let large = synthetic_study([40, 44, 8], [50, 48, 8], 7);
        let a = p.predict_with(&large, false, whole, |_| {});
        let b = p.predict_with(&large, false, cropped, |_| {});
        assert_eq!(differing(&a.fused, &b.fused), 0);
    }
}
