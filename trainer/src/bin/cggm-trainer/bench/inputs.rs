//! The random inputs the benchmarks time on: a segmentation batch with a plausible label map, and
//! a feature batch of a preset's shapes.
use cggm_core::preset::Preset;
use cggm_trainer::data::features::{DatasetSpec, FeatureModality};
use cggm_trainer::model::features::FeatureInput;
use cggm_trainer::task::TaskKind;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

/// A random batch with a plausible label map (a disc of each tumour class).
pub fn random_batch(b: usize, crop: usize, device: Device) -> (Tensor, Tensor) {
    let images = Tensor::randn(
        [b as i64, 4, crop as i64, crop as i64],
        (Kind::Float, device),
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut labels = vec![0i64; b * crop * crop];
    for s in 0..b {
        let (cx, cy) = (
            rng.gen_range(crop / 4..3 * crop / 4) as f64,
            rng.gen_range(crop / 4..3 * crop / 4) as f64,
        );
        for x in 0..crop {
            for y in 0..crop {
                let r = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
                labels[(s * crop + x) * crop + y] = if r < 3.0 {
                    1
                } else if r < 6.0 {
                    3
                } else if r < 12.0 {
                    2
                } else {
                    0
                };
            }
        }
    }
    let labels = Tensor::from_slice(&labels)
        .view([b as i64, crop as i64, crop as i64])
        .to_device(device);
    (images, labels)
}

/// The shapes `bench train` feeds a feature preset: the synthetic set of `cggm synth` for
/// `cpu-features` (text 16x4, audio 12x8, vision 8x6, 4 classes: data/features/synth.rs), and
/// the word-aligned CMU-MOSI / IEMOCAP features of MulT, which the CGGM authors train on
/// (text GloVe 300, audio COVAREP 5 / 74, vision Facet 20 / 35; 50 / 20 steps; MOSI a
/// regression, IEMOCAP 4 emotions); Food-101: one BERT text token (768) and one ViT image token
/// (768), 101 classes.
pub fn bench_feature_spec(preset: &str) -> Option<DatasetSpec> {
    let (task, classes, mods): (TaskKind, usize, &[(&str, usize, usize)]) = match preset.parse() {
        Ok(Preset::CpuFeatures) => (
            TaskKind::Classification,
            4,
            &[("text", 16, 4), ("audio", 12, 8), ("vision", 8, 6)],
        ),
        Ok(Preset::PaperMosi) => (
            TaskKind::Regression,
            0,
            &[("text", 300, 50), ("audio", 5, 50), ("vision", 20, 50)],
        ),
        Ok(Preset::PaperIemocap) => (
            TaskKind::Classification,
            4,
            &[("text", 300, 20), ("audio", 74, 20), ("vision", 35, 20)],
        ),
        Ok(Preset::PaperFood101) => (
            TaskKind::Classification,
            101,
            &[("text", 768, 1), ("image", 768, 1)],
        ),
        _ => return None,
    };
    Some(DatasetSpec {
        format: "cggm-features".into(),
        task,
        modalities: mods
            .iter()
            .map(|(name, dim, steps)| FeatureModality {
                name: name.to_string(),
                dim: *dim,
                seq_len: Some(*steps),
            })
            .collect(),
        classes: (0..classes).map(|c| format!("c{c}")).collect(),
        label_range: (task == TaskKind::Regression).then_some([-3.0, 3.0]),
        description: "bench".into(),
    })
}

/// A random feature batch of the spec's shapes: [B, T_i, D_i] per modality, no padding; labels
/// uniform classes (classification) or N(0, 1.5) clipped to [-3, 3] (regression).
pub fn random_feature_batch(
    spec: &DatasetSpec,
    b: usize,
    device: Device,
) -> (FeatureInput, Tensor) {
    tch::manual_seed(1);
    let features = spec
        .modalities
        .iter()
        .map(|m| {
            Tensor::randn(
                [b as i64, m.steps() as i64, m.dim as i64],
                (Kind::Float, device),
            )
        })
        .collect::<Vec<_>>();
    let padding = features.iter().map(|_| None).collect();
    let labels = match spec.task {
        TaskKind::Classification => {
            Tensor::randint(spec.outputs(), [b as i64], (Kind::Int64, device))
        }
        _ => (Tensor::randn([b as i64], (Kind::Float, device)) * 1.5).clamp(-3.0, 3.0),
    };
    (FeatureInput { features, padding }, labels)
}
