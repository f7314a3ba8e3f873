//! Synthetic BraTS-like phantoms: the demo dataset and the test data.
//!
//! Each case is a skull-stripped ellipsoidal brain (cortical grey matter with a folded inner
//! border, white matter, deep grey nuclei, ventricles and sulcal CSF) with one tumour of random
//! shape, size and position: necrotic core, enhancing rim and surrounding oedema (about one case in
//! five has no enhancing tumour: its core is all non-enhancing). Contrasts follow real MRI:
//!
//! | tissue   | FLAIR  | T1ce   | T1   | T2     |
//! |----------|--------|--------|------|--------|
//! | oedema   | bright | ~      | dark | bright |
//! | necrosis | bright | dark   | dark | bright |
//! | enh. rim | bright | bright | dark | ~      |
//!
//! so FLAIR alone finds the whole tumour while T1ce is needed for the enhancing tumour and the core.
//! `imbalance` makes FLAIR the dominant modality: the lesion contrast of T1ce/T1/T2 is divided by
//! `1 + imbalance / 2` and their noise multiplied by `1 + imbalance` (0 = equally clean
//! modalities). Then a smooth multiplicative bias field, partial-volume blur and Rician noise.
//! Everything is drawn from ChaCha8 seeded with `seed` on stream `case`, so a dataset is a pure
//! function of its parameters.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use nifti::NiftiHeader;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::nifti_io::{write_volume_i16, write_volume_u8};
use super::{DataError, Modality};

#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub cases: usize,
    pub seed: u64,
    /// `[X, Y, Z]` voxels of 1 mm.
    pub size: [usize; 3],
    pub imbalance: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            cases: 8,
            seed: 0,
            size: [96, 96, 64],
            imbalance: 1.0,
        }
    }
}

/// One generated case: images in [`Modality::ALL`] order, label with BraTS values 0/1/2/4.
pub struct Phantom {
    pub images: [Array3<i16>; 4],
    pub label: Array3<u8>,
    pub has_enhancing: bool,
}

const WM: usize = 0;
const GM: usize = 1;
const CSF: usize = 2;
const ED: usize = 3;
const NCR: usize = 4;
const ET: usize = 5;
const BACKGROUND: u8 = u8::MAX;

/// Mean intensity per tissue `[WM, GM, CSF, ED, NCR, ET]` per modality (ALL order).
const TISSUE_MEANS: [[f32; 6]; 4] = [
    [420.0, 520.0, 90.0, 900.0, 780.0, 850.0],    // FLAIR
    [620.0, 440.0, 160.0, 470.0, 260.0, 1250.0],  // T1ce
    [640.0, 450.0, 170.0, 400.0, 160.0, 260.0],   // T1
    [330.0, 460.0, 1150.0, 880.0, 1000.0, 640.0], // T2
];

/// Reference geometry of synthetic volumes: 1 mm voxels, world origin at the volume centre,
/// radiological-style axes (x and y flipped, as in BraTS), qform and sform both set.
pub fn synthetic_header(size: [usize; 3]) -> NiftiHeader {
    let mut h = NiftiHeader {
        pixdim: [1.0; 8],
        xyzt_units: 2 | 8, // mm, s
        qform_code: 1,
        sform_code: 1,
        ..NiftiHeader::default()
    };
    // 180° about z: quaternion (a, b, c, d) = (0, 0, 0, 1).
    h.quatern_b = 0.0;
    h.quatern_c = 0.0;
    h.quatern_d = 1.0;
    let offset = [
        (size[0] as f32 - 1.0) / 2.0,
        (size[1] as f32 - 1.0) / 2.0,
        -(size[2] as f32 - 1.0) / 2.0,
    ];
    h.quatern_x = offset[0];
    h.quatern_y = offset[1];
    h.quatern_z = offset[2];
    h.srow_x = [-1.0, 0.0, 0.0, offset[0]];
    h.srow_y = [0.0, -1.0, 0.0, offset[1]];
    h.srow_z = [0.0, 0.0, 1.0, offset[2]];
    h.set_description_str("CGGM Studio synthetic phantom").ok();
    h
}

/// Smooth random function of a unit direction: `1 + sum of low-order terms`, for organic shapes.
struct Wobble {
    c: [f32; 7],
}

impl Wobble {
    fn new(rng: &mut ChaCha8Rng, amplitude: f32) -> Self {
        Wobble {
            c: std::array::from_fn(|_| rng.gen_range(-amplitude..amplitude)),
        }
    }

    fn at(&self, u: [f32; 3]) -> f32 {
        let c = &self.c;
        1.0 + c[0] * u[0]
            + c[1] * u[1]
            + c[2] * u[2]
            + c[3] * u[0] * u[1]
            + c[4] * u[1] * u[2]
            + c[5] * (u[0] * u[0] - u[2] * u[2])
            + c[6] * u[0] * u[1] * u[2] * 3.0
    }
}

/// Anatomy + tumour labels: tissue class per voxel (`BACKGROUND` outside the brain).
fn tissue_map(size: [usize; 3], rng: &mut ChaCha8Rng) -> (Array3<u8>, bool) {
    let [nx, ny, nz] = size;
    // The draw order is part of the dataset: the brain's, then the tumour's.
    let brain = Brain::draw(size, rng);
    let tumour = Tumour::draw(size, &brain, rng);
    let mut tissue = Array3::from_elem((nx, ny, nz), BACKGROUND);
    for ((x, y, z), t) in tissue.indexed_iter_mut() {
        let p = [x as f32 + 0.5, y as f32 + 0.5, z as f32 + 0.5];
        if let Some(class) = brain.class_at(p) {
            *t = tumour.class_at(p, class) as u8;
        }
    }
    (tissue, tumour.has_enhancing)
}

/// The brain: an ellipsoid with a wobbly surface and folded grey matter.
struct Brain {
    centre: [f32; 3],
    semi: [f32; 3],
    shape: Wobble,
    fold_phase: [f32; 3],
    fold_freq: f32,
}

impl Brain {
    fn draw(size: [usize; 3], rng: &mut ChaCha8Rng) -> Self {
        let [nx, ny, nz] = size;
        let centre = [
            nx as f32 / 2.0 + rng.gen_range(-0.02..0.02) * nx as f32,
            ny as f32 / 2.0 + rng.gen_range(-0.02..0.02) * ny as f32,
            nz as f32 / 2.0 + rng.gen_range(-0.02..0.02) * nz as f32,
        ];
        let semi = [
            0.36 * nx as f32 * rng.gen_range(0.92..1.05),
            0.42 * ny as f32 * rng.gen_range(0.92..1.05),
            0.40 * nz as f32 * rng.gen_range(0.92..1.05),
        ];
        let shape = Wobble::new(rng, 0.05);
        let fold_phase = std::array::from_fn(|_| rng.gen_range(0.0..std::f32::consts::TAU));
        let fold_freq = rng.gen_range(9.0..14.0f32);
        Self {
            centre,
            semi,
            shape,
            fold_phase,
            fold_freq,
        }
    }

    /// The healthy tissue at point `p` (CSF rim, grey and white matter, ventricles, deep grey
    /// nuclei), or None outside the brain.
    fn class_at(&self, p: [f32; 3]) -> Option<usize> {
        let q: [f32; 3] = std::array::from_fn(|i| (p[i] - self.centre[i]) / self.semi[i]);
        let r = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt().max(1e-6);
        let u = q.map(|v| v / r);
        let boundary = self.shape.at(u);
        if r >= boundary {
            return None;
        }
        let depth = 1.0 - r / boundary;
        let (freq, phase) = (self.fold_freq, self.fold_phase);
        let mut class = if depth < 0.025 {
            CSF
        } else if depth < 0.2 {
            let fold = (freq * u[0] + phase[0]).sin()
                * (freq * u[1] + phase[1]).sin()
                * (freq * 0.8 * u[2] + phase[2]).sin();
            if depth < 0.11 + 0.06 * fold {
                GM
            } else {
                WM
            }
        } else {
            WM
        };
        // Lateral ventricles (CSF) and deep grey nuclei.
        let in_ellipsoid = |c: [f32; 3], s: [f32; 3]| {
            (0..3).map(|i| ((q[i] - c[i]) / s[i]).powi(2)).sum::<f32>() < 1.0
        };
        if in_ellipsoid([0.11, 0.05, 0.12], [0.06, 0.3, 0.12])
            || in_ellipsoid([-0.11, 0.05, 0.12], [0.06, 0.3, 0.12])
        {
            class = CSF;
        } else if in_ellipsoid([0.22, -0.08, -0.05], [0.1, 0.14, 0.12])
            || in_ellipsoid([-0.22, -0.08, -0.05], [0.1, 0.14, 0.12])
        {
            class = GM;
        }
        Some(class)
    }
}

/// The tumour: a wobbly core (necrosis inside an enhancing rim, or all non-enhancing) in a
/// wobbly oedema.
struct Tumour {
    centre: [f32; 3],
    axes: [f32; 3],
    shape: Wobble,
    has_enhancing: bool,
    necrotic_fraction: f32,
    oedema_scale: f32,
    oedema_shape: Wobble,
}

impl Tumour {
    /// A tumour centred inside `brain`, away from its surface.
    fn draw(size: [usize; 3], brain: &Brain, rng: &mut ChaCha8Rng) -> Self {
        let [nx, ny, nz] = size;
        let q = loop {
            let q: [f32; 3] = std::array::from_fn(|_| rng.gen_range(-0.55..0.55f32));
            if q.iter().map(|v| v * v).sum::<f32>() < 0.55 * 0.55 {
                break q;
            }
        };
        let centre = std::array::from_fn(|i| brain.centre[i] + q[i] * brain.semi[i]);
        let shortest = nx.min(ny).min(nz) as f32;
        let radius = rng.gen_range(0.09..0.2f32) * shortest;
        let axes = std::array::from_fn(|_| radius * rng.gen_range(0.75..1.3f32));
        let shape = Wobble::new(rng, 0.18);
        let has_enhancing = rng.gen_bool(0.8);
        let necrotic_fraction = if has_enhancing && rng.gen_bool(0.85) {
            rng.gen_range(0.35..0.7f32)
        } else {
            0.0
        };
        let oedema_scale = rng.gen_range(1.5..2.6f32);
        let oedema_shape = Wobble::new(rng, 0.3);
        Self {
            centre,
            axes,
            shape,
            has_enhancing,
            necrotic_fraction,
            oedema_scale,
            oedema_shape,
        }
    }

    /// The class at point `p` of healthy tissue `class`: the tumour's where it reaches (oedema
    /// spares CSF and most grey matter), else `class`.
    fn class_at(&self, p: [f32; 3], class: usize) -> usize {
        let d: [f32; 3] = std::array::from_fn(|i| p[i] - self.centre[i]);
        let dn: [f32; 3] = std::array::from_fn(|i| d[i] / self.axes[i]);
        let tr = (dn[0] * dn[0] + dn[1] * dn[1] + dn[2] * dn[2])
            .sqrt()
            .max(1e-6);
        if tr >= 2.0 * self.oedema_scale {
            return class;
        }
        let tu = dn.map(|v| v / tr);
        let core = tr / self.shape.at(tu).max(0.3);
        let oedema = tr / (self.oedema_scale * self.oedema_shape.at(tu).max(0.3));
        if core < 1.0 {
            if !self.has_enhancing || core < self.necrotic_fraction {
                NCR
            } else {
                ET
            }
        } else if oedema < 1.0 && class != CSF && (class != GM || oedema < 0.75) {
            ED
        } else {
            class
        }
    }
}

/// Separable [0.15, 0.7, 0.15] blur along each axis: partial-volume softness.
fn blur(volume: &mut Array3<f32>) {
    for axis in 0..3 {
        let n = volume.shape()[axis];
        if n < 3 {
            continue;
        }
        for mut lane in volume.lanes_mut(ndarray::Axis(axis)) {
            let mut previous = lane[0];
            for i in 0..n {
                let current = lane[i];
                let next = if i + 1 < n { lane[i + 1] } else { current };
                lane[i] = 0.15 * previous + 0.7 * current + 0.15 * next;
                previous = current;
            }
        }
    }
}

/// Generates case number `case` of a dataset (pure function of `config.seed`, `case`, sizes).
pub fn phantom(config: &SynthConfig, case: usize) -> Phantom {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(case as u64);
    let size = config.size;
    let (tissue, has_enhancing) = tissue_map(size, &mut rng);
    let label = tissue.mapv(|t| match t as usize {
        NCR => 1,
        ED => 2,
        ET => 4,
        _ => 0,
    });
    let imbalance = config.imbalance.max(0.0) as f32;
    let images = std::array::from_fn(|m| {
        let modality = Modality::ALL[m];
        let means = TISSUE_MEANS[m];
        let (contrast, noise_gain) = if modality == Modality::Flair {
            (1.0, 1.0)
        } else {
            (1.0 / (1.0 + 0.5 * imbalance), 1.0 + imbalance)
        };
        let level = |class: u8| -> f32 {
            let class = class as usize;
            if class >= ED {
                means[WM] + (means[class] - means[WM]) * contrast
            } else {
                means[class]
            }
        };
        let mut volume = tissue.mapv(|t| if t == BACKGROUND { 0.0 } else { level(t) });
        blur(&mut volume);
        let bias = Wobble::new(&mut rng, 0.12);
        let sigma = 0.03 * means[WM] * noise_gain;
        let noise = Normal::new(0.0f32, sigma).expect("positive sigma");
        let half = size.map(|s| s as f32 / 2.0);
        ndarray::Zip::indexed(&volume)
            .and(&tissue)
            .map_collect(|(x, y, z), v, &t| {
                if t == BACKGROUND {
                    return 0i16;
                }
                let u = [
                    (x as f32 - half[0]) / half[0],
                    (y as f32 - half[1]) / half[1],
                    (z as f32 - half[2]) / half[2],
                ];
                let biased = *v * bias.at(u).clamp(0.7, 1.3);
                let real = biased + noise.sample(&mut rng);
                let imaginary = noise.sample(&mut rng);
                let magnitude = (real * real + imaginary * imaginary).sqrt();
                magnitude.round().clamp(1.0, i16::MAX as f32) as i16
            })
    });
    Phantom {
        images,
        label,
        has_enhancing,
    }
}

/// Case folder name of case `index` (BraTS 2021 style).
pub fn case_name(index: usize) -> String {
    format!("BraTS2021_{index:05}")
}

/// Writes `config.cases` phantoms under `out` in the BraTS 2021 layout, in parallel. Returns the
/// case folders.
pub fn write_synthetic_dataset(
    out: &Path,
    config: &SynthConfig,
) -> Result<Vec<PathBuf>, DataError> {
    if config.size.iter().any(|&s| s < 8) {
        return Err(DataError::Config {
            detail: format!(
                "synthetic size {:?} is too small; use at least 8x8x8",
                config.size
            ),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, &e))?;
    let header = synthetic_header(config.size);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(config.cases.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None::<DataError>);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let case = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if case >= config.cases {
                    break;
                }
                if let Err(e) = write_case(out, config, case, &header) {
                    first_error.lock().expect("error lock").get_or_insert(e);
                    break;
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error lock") {
        return Err(e);
    }
    Ok((0..config.cases).map(|c| out.join(case_name(c))).collect())
}

fn write_case(
    out: &Path,
    config: &SynthConfig,
    case: usize,
    header: &NiftiHeader,
) -> Result<(), DataError> {
    let name = case_name(case);
    let dir = out.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, &e))?;
    let phantom = phantom(config, case);
    for (m, image) in Modality::ALL.iter().zip(&phantom.images) {
        let path = dir.join(format!("{name}_{}.nii.gz", m.name()));
        write_volume_i16(&path, &image.view(), header)?;
    }
    write_volume_u8(
        &dir.join(format!("{name}_seg.nii.gz")),
        &phantom.label.view(),
        header,
    )
}
