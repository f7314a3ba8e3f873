//! Synthetic feature datasets with a controlled modality imbalance (`cggm synth --task
//! classification|regression`): one modality ("text") is easy and strong, the two others
//! ("audio", "vision") are weaker and noisier but carry the information the strong one lacks, so
//! the best model needs all three — the setting of the paper's Figures 2-3.
//!
//! Classification (4 classes): class c = 2 * hi + lo. "text" shows `hi` clearly and `lo` faintly;
//! "audio" and "vision" show `lo` under noise (and nothing of `hi`). Text alone gets `hi` right
//! and `lo` partly; the weak modalities are needed for `lo`.
//! Regression (labels in [-3, 3]): y = 1.5 z_text + z_audio + z_vision (clipped), each modality
//! showing its own z (text cleanly, plus a faint trace of z_audio; the others under noise);
//! Acc-2 needs all three.

use super::safetensors::{write_safetensors, Values};
use super::{split_path, DatasetSpec, FeatureModality, LABELS};
use crate::task::TaskKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct FeatureSynthConfig {
    pub task: TaskKind,
    pub seed: u64,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Scales how much weaker the weak modalities are (0 = all equally clear, 1 = the default gap).
    pub imbalance: f64,
}

impl Default for FeatureSynthConfig {
    fn default() -> Self {
        Self {
            task: TaskKind::Classification,
            seed: 0,
            train: 480,
            valid: 160,
            test: 160,
            imbalance: 1.0,
        }
    }
}

/// The modalities the generator writes: (name, dim, steps, signal amplitude at imbalance 1).
const MODALITIES: [(&str, usize, usize, f64); 3] = [
    ("text", 16, 4, 1.6),
    ("audio", 12, 8, 0.45),
    ("vision", 8, 6, 0.55),
];

/// How clearly text shows the bit that belongs to the weak modalities (classification) or their
/// share of the label (regression): enough that text keeps improving long after the weak ones
/// stall (the imbalance), too little to make them unnecessary.
const TEXT_SECOND_SIGNAL: f64 = 0.3;

struct Generator {
    rng: ChaCha8Rng,
    /// Per modality, per step, a fixed direction [steps][dim] the signal is written along.
    directions: Vec<Vec<Vec<f32>>>,
}

impl Generator {
    fn new(seed: u64) -> Self {
        // Directions depend only on the seed, never on the split: train and test agree.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let directions = MODALITIES
            .iter()
            .map(|(_, dim, steps, _)| {
                (0..*steps)
                    .map(|_| {
                        let v: Vec<f32> = (0..*dim)
                            .map(|_| rng.sample::<f32, _>(StandardNormal))
                            .collect();
                        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                        v.iter().map(|x| x / norm * (*dim as f32).sqrt()).collect()
                    })
                    .collect()
            })
            .collect();
        Self { rng, directions }
    }

    /// One sample of modality `m` carrying the scalar `signal` at amplitude `amp` along its
    /// directions, plus `second` along the reversed directions of the other half of the steps:
    /// [steps * dim].
    fn sample(&mut self, m: usize, signal: f64, amp: f64, second: f64, out: &mut Vec<f32>) {
        let steps = self.directions[m].len();
        for (t, dir) in self.directions[m].iter().enumerate() {
            let extra = if t % 2 == 1 { second } else { 0.0 };
            let carried = (amp * signal) as f32;
            let other = self.directions[m][steps - 1 - t].clone();
            for (d, o) in dir.iter().zip(&other) {
                let noise: f32 = StandardNormal.sample(&mut self.rng);
                out.push(carried * d + extra as f32 * o + noise);
            }
        }
    }
}

fn amplitude(m: usize, imbalance: f64) -> f64 {
    let (_, _, _, amp) = MODALITIES[m];
    let strong = MODALITIES[0].3;
    // imbalance 0: every modality as clear as the strong one; 1: the table's amplitudes.
    strong + (amp - strong) * imbalance.clamp(0.0, 1.5)
}

/// Writes dataset.json and the three splits into `dir`.
pub fn write_feature_dataset(dir: &Path, cfg: &FeatureSynthConfig) -> anyhow::Result<DatasetSpec> {
    anyhow::ensure!(
        cfg.task != TaskKind::Segmentation,
        "`--task segmentation` writes NIfTI phantoms: drop --task (or use classification or regression here)"
    );
    anyhow::ensure!(
        cfg.train > 0 && cfg.valid > 0 && cfg.test > 0,
        "every split needs at least one sample"
    );
    let spec = synthetic_spec(cfg);
    std::fs::create_dir_all(dir)?;
    // One generator across the splits, in this order: the splits are one stream of samples.
    let mut gen = Generator::new(cfg.seed);
    for (split, n) in [
        ("train", cfg.train),
        ("valid", cfg.valid),
        ("test", cfg.test),
    ] {
        let samples = Samples::draw(&mut gen, cfg, n);
        write_split(&split_path(dir, split), &spec, &samples, n)?;
    }
    spec.write(dir)?;
    Ok(spec)
}

/// The synthetic set's description: its modalities from [`MODALITIES`], four classes or a
/// label range.
fn synthetic_spec(cfg: &FeatureSynthConfig) -> DatasetSpec {
    DatasetSpec {
        format: "cggm-features".into(),
        task: cfg.task,
        modalities: MODALITIES
            .iter()
            .map(|(name, dim, steps, _)| FeatureModality {
                name: name.to_string(),
                dim: *dim,
                seq_len: Some(*steps),
            })
            .collect(),
        classes: match cfg.task {
            TaskKind::Classification => ["a0", "a1", "b0", "b1"].map(String::from).to_vec(),
            _ => Vec::new(),
        },
        label_range: (cfg.task == TaskKind::Regression).then_some([-3.0, 3.0]),
        description: format!(
            "synthetic, seed {}, imbalance {}: text strong, audio and vision weak but needed",
            cfg.seed, cfg.imbalance
        ),
    }
}

/// One split's samples: the features per modality (row-major) and the labels of the task.
struct Samples {
    per_modality: Vec<Vec<f32>>,
    class_labels: Vec<i64>,
    real_labels: Vec<f32>,
}

impl Samples {
    fn draw(gen: &mut Generator, cfg: &FeatureSynthConfig, n: usize) -> Self {
        let mut samples = Samples {
            per_modality: vec![Vec::new(); MODALITIES.len()],
            class_labels: Vec::with_capacity(n),
            real_labels: Vec::with_capacity(n),
        };
        for _ in 0..n {
            // Latent signals per modality: +-1 bits (classification) or N(0, 1) (regression).
            let signals: [f64; 3] = match cfg.task {
                TaskKind::Classification => {
                    let c: i64 = gen.rng.gen_range(0..4);
                    samples.class_labels.push(c);
                    let hi = if c >= 2 { 1.0 } else { -1.0 };
                    let lo = if c % 2 == 1 { 1.0 } else { -1.0 };
                    [hi, lo, lo]
                }
                _ => {
                    let z: [f64; 3] = std::array::from_fn(|_| gen.rng.sample(StandardNormal));
                    samples
                        .real_labels
                        .push((1.5 * z[0] + z[1] + z[2]).clamp(-3.0, 3.0) as f32);
                    z
                }
            };
            for (m, out) in samples.per_modality.iter_mut().enumerate() {
                let second = if m == 0 {
                    TEXT_SECOND_SIGNAL * signals[1]
                } else {
                    0.0
                };
                gen.sample(m, signals[m], amplitude(m, cfg.imbalance), second, out);
            }
        }
        samples
    }
}

/// One split's safetensors file: a `[n, steps, dim]` tensor per modality and the labels.
fn write_split(path: &Path, spec: &DatasetSpec, samples: &Samples, n: usize) -> anyhow::Result<()> {
    let names = spec.names();
    let shapes: Vec<[usize; 3]> = MODALITIES
        .iter()
        .map(|(_, dim, steps, _)| [n, *steps, *dim])
        .collect();
    let mut tensors: Vec<(&str, &[usize], Values)> = names
        .iter()
        .zip(&shapes)
        .zip(&samples.per_modality)
        .map(|((name, shape), v)| (name.as_str(), &shape[..], Values::F32(v)))
        .collect();
    let count = [n];
    tensors.push((
        LABELS,
        &count,
        match spec.task {
            TaskKind::Classification => Values::I64(&samples.class_labels),
            _ => Values::F32(&samples.real_labels),
        },
    ));
    write_safetensors(path, &tensors)?;
    Ok(())
}
