//! One case in memory: the four modalities checked against each other, z-scored, and the label
//! mapped to the internal classes. Also the full dataset check behind `cggm validate`.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, ArrayView3, ShapeBuilder};
use nifti::NiftiHeader;

use super::nifti_io::{header_affine, read_raw_volume, RawVolume};
use super::{
    discover, CaseFiles, CaseProblem, CaseSource, DataError, DiscoveryReport, LabelValues,
    Modality, LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA,
};

/// A loaded, checked and normalised case.
#[derive(Debug)]
pub struct Study {
    pub id: String,
    /// `[4, X, Y, Z]` in [`Modality::ALL`] order, z-scored per modality over non-zero voxels,
    /// background exactly 0.
    pub images: Array4<f32>,
    /// `[X, Y, Z]` internal classes (0 background, 1 NCR/NET, 2 oedema, 3 enhancing).
    pub label: Option<Array3<u8>>,
    /// Header of the first modality: the reference geometry for writing predictions.
    pub header: NiftiHeader,
    pub voxel_volume_ml: f64,
}

/// BraTS label value → internal class: 0, 1 NCR, 2 oedema, 4 ET (3 in newer releases: also ET).
pub fn brats_to_internal(value: u8) -> Option<u8> {
    match value {
        0 => Some(0),
        1 => Some(LABEL_NCR),
        2 => Some(LABEL_OEDEMA),
        3 | 4 => Some(LABEL_ENHANCING),
        _ => None,
    }
}

/// MSD Task01 label value → internal class: 1 oedema, 2 non-enhancing tumour, 3 enhancing.
pub fn msd_to_internal(value: u8) -> Option<u8> {
    match value {
        0 => Some(0),
        1 => Some(LABEL_OEDEMA),
        2 => Some(LABEL_NCR),
        3 => Some(LABEL_ENHANCING),
        _ => None,
    }
}

/// Internal class → BraTS label value written to disk (0, 1, 2, 4).
pub fn internal_to_brats(class: u8) -> u8 {
    if class == LABEL_ENHANCING {
        4
    } else {
        class
    }
}

/// Spatial dims of a volume that must be 3-D; trailing singleton dimensions are tolerated.
fn spatial_dims(volume: &RawVolume, file: &Path) -> Result<[usize; 3], DataError> {
    let dims = &volume.dims;
    if dims.len() >= 3 && dims[3..].iter().all(|&d| d == 1) {
        Ok([dims[0], dims[1], dims[2]])
    } else {
        Err(DataError::NotThreeD {
            case: String::new(),
            file: file.to_path_buf(),
            dims: dims.clone(),
        })
    }
}

fn check_finite(data: &[f32], dims: [usize; 3], file: &Path) -> Result<(), DataError> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    let first = data.iter().position(|v| !v.is_finite()).expect("bad > 0");
    let (x, y) = (first % dims[0], (first / dims[0]) % dims[1]);
    let z = first / (dims[0] * dims[1]);
    Err(DataError::NonFiniteIntensity {
        case: String::new(),
        file: file.to_path_buf(),
        count: bad,
        first_voxel: vec![x, y, z],
    })
}

/// Largest absolute difference between two affines; tolerant of float32 header round-off.
fn affine_difference(a: &NiftiHeader, b: &NiftiHeader) -> f64 {
    let (a, b) = (header_affine(a), header_affine(b));
    let mut max: f64 = 0.0;
    for r in 0..3 {
        for c in 0..4 {
            max = max.max((a[r][c] - b[r][c]).abs());
        }
    }
    max
}

const AFFINE_TOLERANCE_MM: f64 = 1e-3;

/// Z-scores `volume` over its non-zero voxels in place; zeros (background) stay 0.
fn z_score(volume: &mut [f32]) {
    let (mut n, mut sum, mut sum_sq) = (0usize, 0f64, 0f64);
    for &v in volume.iter().filter(|v| **v != 0.0) {
        n += 1;
        sum += v as f64;
        sum_sq += (v as f64) * (v as f64);
    }
    if n == 0 {
        return;
    }
    let mean = sum / n as f64;
    let std = (sum_sq / n as f64 - mean * mean).max(0.0).sqrt();
    let std = if std > 1e-8 { std } else { 1.0 };
    let (mean, inv) = (mean as f32, (1.0 / std) as f32);
    for v in volume.iter_mut().filter(|v| **v != 0.0) {
        // A brain voxel exactly at the mean would become 0 and read as background: nudge it.
        let z = (*v - mean) * inv;
        *v = if z == 0.0 { f32::MIN_POSITIVE } else { z };
    }
}

/// Voxel size in mm along x, y, z: the one pixdim rule of the project (volumes, HD95, writing).
/// |pixdim[1..=3]| (a negative pixdim is a flip, not a size) times the header's spatial unit
/// (metres 1000, micrometres 0.001, millimetres or unknown 1); a zero or non-finite pixdim is
/// taken as 1 mm.
pub fn voxel_spacing_mm(h: &NiftiHeader) -> [f64; 3] {
    let mm_per_unit = match h.xyzt_units & 0x07 {
        1 => 1000.0,
        3 => 0.001,
        _ => 1.0,
    };
    let size = |v: f32| {
        let v = (v as f64).abs();
        if v.is_finite() && v > 0.0 {
            v * mm_per_unit
        } else {
            1.0
        }
    };
    [size(h.pixdim[1]), size(h.pixdim[2]), size(h.pixdim[3])]
}

fn voxel_volume_ml(h: &NiftiHeader) -> f64 {
    voxel_spacing_mm(h).iter().product::<f64>() / 1000.0
}

struct Checked {
    reference_file: std::path::PathBuf,
    reference_header: NiftiHeader,
    shape: [usize; 3],
}

impl Checked {
    fn same_grid(
        &self,
        case: &str,
        file: &Path,
        header: &NiftiHeader,
        shape: [usize; 3],
    ) -> Result<(), DataError> {
        if shape != self.shape {
            return Err(DataError::ShapeMismatch {
                case: case.to_string(),
                file: file.to_path_buf(),
                shape: shape.to_vec(),
                reference: self.reference_file.clone(),
                reference_shape: self.shape.to_vec(),
            });
        }
        let difference = affine_difference(header, &self.reference_header);
        if difference > AFFINE_TOLERANCE_MM {
            return Err(DataError::AffineMismatch {
                case: case.to_string(),
                file: file.to_path_buf(),
                reference: self.reference_file.clone(),
                max_difference: difference,
            });
        }
        Ok(())
    }
}

fn read_label(
    case: &str,
    file: &Path,
    checked: &Checked,
    values: LabelValues,
) -> Result<Array3<u8>, DataError> {
    let volume = read_raw_volume(file).map_err(|e| e.in_case(case))?;
    let shape = spatial_dims(&volume, file).map_err(|e| e.in_case(case))?;
    checked.same_grid(case, file, &volume.header, shape)?;
    let mut bad: Vec<f64> = Vec::new();
    let mut classes = Vec::with_capacity(volume.data.len());
    for &v in &volume.data {
        let class = if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
            values.class_of(v as u8)
        } else {
            None
        };
        match class {
            Some(c) => classes.push(c),
            None => {
                if bad.len() < 8 && !bad.contains(&(v as f64)) {
                    bad.push(v as f64);
                }
                classes.push(0);
            }
        }
    }
    if !bad.is_empty() {
        return Err(DataError::BadLabelValues {
            case: case.to_string(),
            file: file.to_path_buf(),
            values: bad,
            convention: values.describe().0,
            allowed: values.describe().1,
        });
    }
    Ok(Array3::from_shape_vec(shape.f(), classes)
        .expect("length checked by the reader")
        .as_standard_layout()
        .into_owned())
}

fn store_modality(
    images: &mut Array4<f32>,
    modality: Modality,
    shape: [usize; 3],
    mut data: Vec<f32>,
) {
    z_score(&mut data);
    let view = ArrayView3::from_shape(shape.f(), &data).expect("length checked by the reader");
    images
        .index_axis_mut(ndarray::Axis(0), modality.index())
        .assign(&view);
}

/// Reads, checks and normalises one case: every modality present and 3-D, all volumes (label
/// included) on one grid with one affine, finite intensities, label values in the convention.
pub fn load_study(source: &CaseSource) -> Result<Study, DataError> {
    let (images, checked, label) = match &source.files {
        CaseFiles::Separate {
            images,
            label,
            label_values,
        } => {
            let (volumes, checked) = load_separate(&source.id, images)?;
            (volumes, checked, label.as_ref().map(|l| (l, *label_values)))
        }
        CaseFiles::Msd4d {
            image,
            label,
            channels,
        } => {
            let (volumes, checked) = load_msd4d(&source.id, image, channels)?;
            (
                volumes,
                checked,
                label.as_ref().map(|l| (l, LabelValues::Msd)),
            )
        }
    };
    let label = match label {
        Some((file, values)) => Some(read_label(&source.id, file, &checked, values)?),
        None => None,
    };
    Ok(Study {
        id: source.id.clone(),
        images,
        label,
        voxel_volume_ml: voxel_volume_ml(&checked.reference_header),
        header: checked.reference_header,
    })
}

/// A modality that is zero everywhere holds no brain (a blank or wrongly exported file).
fn ensure_brain(case: &str, data: &[f32], file: &Path) -> Result<(), DataError> {
    if data.iter().all(|&v| v == 0.0) {
        Err(DataError::EmptyVolume {
            case: case.to_string(),
            file: file.to_path_buf(),
        })
    } else {
        Ok(())
    }
}

/// The four modalities of a case stored one file each, checked to share one grid: the images
/// `[4, X, Y, Z]` and the grid the label must match.
fn load_separate(case: &str, files: &[PathBuf; 4]) -> Result<(Array4<f32>, Checked), DataError> {
    // The four files decode at once (inflating gzip is most of a case's load time); the checks
    // then run in modality order, so the problem reported is the one reading them one by one
    // would meet first.
    let volumes: Vec<_> = std::thread::scope(|scope| {
        let decoders: Vec<_> = Modality::ALL
            .iter()
            .map(|m| {
                let file = &files[m.index()];
                scope.spawn(move || read_raw_volume(file))
            })
            .collect();
        decoders
            .into_iter()
            .map(|d| d.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut checked: Option<Checked> = None;
    let mut images = Array4::<f32>::zeros((0, 0, 0, 0));
    for (m, volume) in Modality::ALL.into_iter().zip(volumes) {
        let file = &files[m.index()];
        let volume = volume.map_err(|e| e.in_case(case))?;
        let shape = spatial_dims(&volume, file).map_err(|e| e.in_case(case))?;
        match &checked {
            None => {
                images = Array4::zeros((4, shape[0], shape[1], shape[2]));
                checked = Some(Checked {
                    reference_file: file.clone(),
                    reference_header: volume.header.clone(),
                    shape,
                });
            }
            Some(c) => c.same_grid(case, file, &volume.header, shape)?,
        }
        check_finite(&volume.data, shape, file).map_err(|e| e.in_case(case))?;
        ensure_brain(case, &volume.data, file)?;
        store_modality(&mut images, m, shape, volume.data);
    }
    Ok((images, checked.expect("four modalities")))
}

/// The four modalities of an MSD case stored as one 4-D file, channel `i` being `channels[i]`.
fn load_msd4d(
    case: &str,
    image: &Path,
    channels: &[Modality; 4],
) -> Result<(Array4<f32>, Checked), DataError> {
    let volume = read_raw_volume(image).map_err(|e| e.in_case(case))?;
    let dims = volume.dims.clone();
    if dims.len() != 4 || dims[3] != 4 {
        return Err(DataError::NotThreeD {
            case: case.to_string(),
            file: image.to_path_buf(),
            dims,
        });
    }
    let shape = [dims[0], dims[1], dims[2]];
    let per_channel = shape.iter().product::<usize>();
    check_finite(&volume.data[..], [shape[0], shape[1], shape[2] * 4], image)
        .map_err(|e| e.in_case(case))?;
    let mut images = Array4::zeros((4, shape[0], shape[1], shape[2]));
    for (channel, &m) in channels.iter().enumerate() {
        let data = volume.data[channel * per_channel..(channel + 1) * per_channel].to_vec();
        ensure_brain(case, &data, image)?;
        store_modality(&mut images, m, shape, data);
    }
    let checked = Checked {
        reference_file: image.to_path_buf(),
        reference_header: volume.header,
        shape,
    };
    Ok((images, checked))
}

/// Discovers the dataset under `dir`, then fully loads and checks every case (in parallel). Bad
/// cases move to `problems`; this never aborts. This is what `cggm validate` prints.
pub fn validate_dataset(dir: &Path) -> DiscoveryReport {
    validate_dataset_counting(dir, &|_, _| {})
}

/// [`validate_dataset`], calling `checked(0, total)` before the first case and `checked(n, total)`
/// as cases finish (from the worker threads).
pub fn validate_dataset_counting(
    dir: &Path,
    checked: &(dyn Fn(usize, usize) + Sync),
) -> DiscoveryReport {
    let mut report = discover(dir);
    let cases = std::mem::take(&mut report.cases);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(cases.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let finished = std::sync::atomic::AtomicUsize::new(0);
    checked(0, cases.len());
    let mut results: Vec<Option<Result<(), DataError>>> = vec![None; cases.len()];
    let slots: Vec<std::sync::Mutex<Option<Result<(), DataError>>>> = (0..cases.len())
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let outcome = load_study(case).map(|_| ());
                *slots[i].lock().expect("no panics while holding") = Some(outcome);
                checked(
                    finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                    cases.len(),
                );
            });
        }
    });
    for (slot, result) in slots.into_iter().zip(results.iter_mut()) {
        *result = slot.into_inner().expect("no panics while holding");
    }
    for (case, result) in cases.into_iter().zip(results) {
        match result {
            Some(Ok(())) => report.cases.push(case),
            Some(Err(error)) => report.problems.push(CaseProblem {
                case: case.id.clone(),
                error,
            }),
            None => unreachable!("every case is visited"),
        }
    }
    report.problems.sort_by(|a, b| a.case.cmp(&b.case));
    report
}
