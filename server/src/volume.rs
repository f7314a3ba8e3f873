//! Volumes for the viewer: NIfTI decoding, intensity windows, 2-D slices rendered to PNG, label
//! overlays in BraTS colours and region volumes. Decoded volumes are kept in a small cache so that
//! stepping through slices does not decompress the file on every request.

use ndarray::{ArrayD, Axis, IxDyn};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A decoded volume: `data` has axes [X, Y, Z] or [X, Y, Z, C].
pub struct Volume {
    pub data: ArrayD<f32>,
    /// Voxel size in mm (x, y, z).
    pub spacing: [f32; 3],
    /// Intensity window (0.5 and 99.5 percentiles of the non-zero voxels), one per channel.
    pub windows: Vec<(f32, f32)>,
}

impl Volume {
    pub fn shape3(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    pub fn channels(&self) -> usize {
        if self.data.ndim() >= 4 {
            self.data.shape()[3]
        } else {
            1
        }
    }

    fn at(&self, x: usize, y: usize, z: usize, c: usize) -> f32 {
        if self.data.ndim() >= 4 {
            self.data[IxDyn(&[x, y, z, c])]
        } else {
            self.data[IxDyn(&[x, y, z])]
        }
    }
}

/// Why a volume could not be read or a slice of it drawn.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Read(#[from] cggm_core::data::DataError),
    #[error("expected a 3-D or 4-D volume, found {0} dimensions")]
    Dimensions(usize),
    #[error("the label volume is {labels:?} but the image is {image:?}")]
    LabelShape {
        labels: [usize; 3],
        image: [usize; 3],
    },
    #[error("slice {index} is outside 0..{depth} for the {plane:?} plane")]
    Slice {
        index: usize,
        depth: usize,
        plane: Plane,
    },
    #[error(transparent)]
    Png(#[from] png::EncodingError),
    /// The blocking decode task panicked or was cancelled.
    #[error(transparent)]
    Decode(#[from] tokio::task::JoinError),
}

/// Reads a .nii or .nii.gz file (NIfTI-1 or NIfTI-2) fully with the trainer's reader, the one
/// NIfTI reader of the project: a hostile file is refused from its header or cut off at the bytes
/// the header accounts for, so a decode never costs more memory than the voxel limit allows.
pub fn read_volume(path: &Path) -> Result<Volume, VolumeError> {
    let (header, data) = cggm_core::data::read_volume(path)?;
    if data.ndim() < 3 || data.ndim() > 4 {
        return Err(VolumeError::Dimensions(data.ndim()));
    }
    let spacing = [
        header.pixdim[1].abs(),
        header.pixdim[2].abs(),
        header.pixdim[3].abs(),
    ]
    .map(|s| if s.is_finite() && s > 0.0 { s } else { 1.0 });
    let channels = if data.ndim() == 4 { data.shape()[3] } else { 1 };
    let windows = (0..channels)
        .map(|c| {
            if data.ndim() == 4 {
                percentile_window(data.index_axis(Axis(3), c).iter())
            } else {
                percentile_window(data.iter())
            }
        })
        .collect();
    Ok(Volume {
        data,
        spacing,
        windows,
    })
}

fn percentile_window<'a>(values: impl Iterator<Item = &'a f32>) -> (f32, f32) {
    let mut v: Vec<f32> = values
        .copied()
        .filter(|x| *x != 0.0 && x.is_finite())
        .collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    let pick = |v: &mut Vec<f32>, q: f64| {
        let k = ((v.len() - 1) as f64 * q).round() as usize;
        *v.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let lo = pick(&mut v, 0.005);
    let hi = pick(&mut v, 0.995);
    if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + 1.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    Axial,
    Coronal,
    Sagittal,
}

impl Plane {
    /// Number of slices along this plane's normal.
    pub fn depth(self, shape: [usize; 3]) -> usize {
        match self {
            Plane::Axial => shape[2],
            Plane::Coronal => shape[1],
            Plane::Sagittal => shape[0],
        }
    }

    /// Image width and height, and the voxel behind image pixel (col, row). Rows go top-down with
    /// anterior/superior up, as radiologists expect.
    fn frame(self, shape: [usize; 3]) -> (usize, usize) {
        match self {
            Plane::Axial => (shape[0], shape[1]),
            Plane::Coronal => (shape[0], shape[2]),
            Plane::Sagittal => (shape[1], shape[2]),
        }
    }

    fn voxel(
        self,
        shape: [usize; 3],
        index: usize,
        col: usize,
        row: usize,
    ) -> (usize, usize, usize) {
        let (_, h) = self.frame(shape);
        let up = h - 1 - row;
        match self {
            Plane::Axial => (col, up, index),
            Plane::Coronal => (col, index, up),
            Plane::Sagittal => (index, col, up),
        }
    }
}

/// A grey-scale PNG of one slice of channel `channel`, windowed to the volume's percentiles.
pub fn render_slice(
    volume: &Volume,
    plane: Plane,
    index: usize,
    channel: usize,
) -> Result<Vec<u8>, VolumeError> {
    let shape = volume.shape3();
    check_index(plane, shape, index)?;
    let (w, h) = plane.frame(shape);
    let (lo, hi) = volume.windows.get(channel).copied().unwrap_or((0.0, 1.0));
    let scale = 255.0 / (hi - lo);
    let mut pixels = Vec::with_capacity(w * h);
    for row in 0..h {
        for col in 0..w {
            let (x, y, z) = plane.voxel(shape, index, col, row);
            let v = ((volume.at(x, y, z, channel) - lo) * scale).clamp(0.0, 255.0);
            pixels.push(v as u8);
        }
    }
    encode_png(w, h, png::ColorType::Grayscale, &pixels)
}

/// The three tumour classes a label volume marks, whatever its numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TumourClass {
    /// Necrotic / non-enhancing tumour core.
    Ncr,
    /// Peritumoral oedema.
    Ed,
    /// Enhancing tumour.
    Et,
}

impl TumourClass {
    pub const ALL: [TumourClass; 3] = [TumourClass::Ncr, TumourClass::Ed, TumourClass::Et];

    /// The viewer's colours (PNG overlays and NiiVue): necrotic core red, oedema green,
    /// enhancing tumour yellow.
    pub fn colour(self) -> [u8; 3] {
        match self {
            TumourClass::Ncr => [230, 40, 40],
            TumourClass::Ed => [40, 200, 60],
            TumourClass::Et => [250, 220, 30],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TumourClass::Ncr => "necrotic core",
            TumourClass::Ed => "oedema",
            TumourClass::Et => "enhancing tumour",
        }
    }
}

/// How a label file numbers the classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelConvention {
    /// BraTS: 1 NCR, 2 ED, 4 ET (3 in newer releases). Every file the project writes.
    Brats,
    /// Medical Segmentation Decathlon Task01: 1 oedema, 2 non-enhancing tumour, 3 enhancing.
    Msd,
}

impl LabelConvention {
    pub fn class_of(self, value: u8) -> Option<TumourClass> {
        match (self, value) {
            (LabelConvention::Brats, 1) | (LabelConvention::Msd, 2) => Some(TumourClass::Ncr),
            (LabelConvention::Brats, 2) | (LabelConvention::Msd, 1) => Some(TumourClass::Ed),
            (LabelConvention::Brats, 3 | 4) | (LabelConvention::Msd, 3) => Some(TumourClass::Et),
            _ => None,
        }
    }

    /// Every label value of the convention with its class, for colour tables.
    pub fn values(self) -> Vec<(u8, TumourClass)> {
        (1..=4)
            .filter_map(|v| Some((v, self.class_of(v)?)))
            .collect()
    }
}

/// BraTS label colours: 1 necrotic core red, 2 oedema green, 4 (or 3) enhancing tumour yellow.
pub fn label_colour(label: u8) -> Option<[u8; 3]> {
    LabelConvention::Brats
        .class_of(label)
        .map(TumourClass::colour)
}

/// The axial slice with the most labelled voxels (the middle one when nothing is labelled).
pub fn most_labelled_axial_slice(labels: &Volume) -> usize {
    let shape = labels.shape3();
    let mut counts = vec![0usize; shape[2]];
    for (index, v) in labels.data.indexed_iter() {
        if v.round() as i64 > 0 {
            counts[index[2]] += 1;
        }
    }
    match counts.iter().enumerate().max_by_key(|(_, c)| **c) {
        Some((z, c)) if *c > 0 => z,
        _ => shape[2] / 2,
    }
}

/// An RGB PNG of an axial slice of `image` (channel `channel`) with `labels` blended over it at
/// half opacity in the viewer's colours: the thumbnails of dataset cases and test cases.
pub fn render_thumbnail(
    image: &Volume,
    channel: usize,
    labels: Option<(&Volume, LabelConvention)>,
    index: usize,
) -> Result<Vec<u8>, VolumeError> {
    let shape = image.shape3();
    check_index(Plane::Axial, shape, index)?;
    if let Some((l, _)) = labels {
        if l.shape3() != shape {
            return Err(VolumeError::LabelShape {
                labels: l.shape3(),
                image: shape,
            });
        }
    }
    let (w, h) = Plane::Axial.frame(shape);
    let (lo, hi) = image.windows.get(channel).copied().unwrap_or((0.0, 1.0));
    let scale = 255.0 / (hi - lo);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        for col in 0..w {
            let (x, y, z) = Plane::Axial.voxel(shape, index, col, row);
            let grey = ((image.at(x, y, z, channel) - lo) * scale).clamp(0.0, 255.0);
            let class = labels.and_then(|(l, convention)| {
                let value = l.at(x, y, z, 0).round().clamp(0.0, 255.0) as u8;
                convention.class_of(value)
            });
            let rgb = match class {
                Some(c) => c.colour().map(|v| ((grey + v as f32) / 2.0) as u8),
                None => [grey as u8; 3],
            };
            pixels.extend_from_slice(&rgb);
        }
    }
    encode_png(w, h, png::ColorType::Rgb, &pixels)
}

/// An RGBA PNG of one slice of a label volume: shown labels opaque in their colour, the rest
/// transparent (the page sets the opacity).
pub fn render_labels(
    volume: &Volume,
    plane: Plane,
    index: usize,
    shown: &[u8],
) -> Result<Vec<u8>, VolumeError> {
    let shape = volume.shape3();
    check_index(plane, shape, index)?;
    let (w, h) = plane.frame(shape);
    let mut pixels = Vec::with_capacity(w * h * 4);
    for row in 0..h {
        for col in 0..w {
            let (x, y, z) = plane.voxel(shape, index, col, row);
            let label = volume.at(x, y, z, 0).round() as u8;
            let show = shown.contains(&label) || (label == 3 && shown.contains(&4));
            match label_colour(label).filter(|_| show) {
                Some([r, g, b]) => pixels.extend_from_slice(&[r, g, b, 255]),
                None => pixels.extend_from_slice(&[0, 0, 0, 0]),
            }
        }
    }
    encode_png(w, h, png::ColorType::Rgba, &pixels)
}

fn check_index(plane: Plane, shape: [usize; 3], index: usize) -> Result<(), VolumeError> {
    let depth = plane.depth(shape);
    if index >= depth {
        return Err(VolumeError::Slice {
            index,
            depth,
            plane,
        });
    }
    Ok(())
}

fn encode_png(
    w: usize,
    h: usize,
    colour: png::ColorType,
    pixels: &[u8],
) -> Result<Vec<u8>, VolumeError> {
    let mut out = Vec::with_capacity(pixels.len() / 2 + 64);
    let mut encoder = png::Encoder::new(&mut out, w as u32, h as u32);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Volumes of each BraTS label and region in millilitres.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct RegionVolumes {
    pub ncr_ml: f64,
    pub ed_ml: f64,
    pub et_ml: f64,
    pub wt_ml: f64,
    pub tc_ml: f64,
}

pub fn region_volumes(labels: &Volume) -> RegionVolumes {
    let voxel_ml = labels.spacing.iter().map(|s| *s as f64).product::<f64>() / 1000.0;
    let mut counts = [0usize; 5];
    for v in labels.data.iter() {
        let l = v.round() as usize;
        if l < counts.len() {
            counts[l] += 1;
        }
    }
    let ncr = counts[1] as f64 * voxel_ml;
    let ed = counts[2] as f64 * voxel_ml;
    let et = (counts[3] + counts[4]) as f64 * voxel_ml;
    RegionVolumes {
        ncr_ml: ncr,
        ed_ml: ed,
        et_ml: et,
        wt_ml: ncr + ed + et,
        tc_ml: ncr + et,
    }
}

/// A few decoded volumes, most recently used first. Decodes are deduplicated (concurrent requests
/// for one file wait for one decode) and limited in number ([`DECODE_SLOTS`], shared with upload
/// checks), so that dragging the slider over a new study, or several uploads at once, cannot make
/// the server decode dozens of volumes side by side.
pub struct VolumeCache {
    entries: Mutex<Vec<(PathBuf, Arc<Volume>)>>,
    loading: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    decodes: tokio::sync::Semaphore,
}

/// How many NIfTI decodes (viewer cache misses and upload checks) run at the same time.
pub const DECODE_SLOTS: usize = 2;

impl Default for VolumeCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            loading: Mutex::default(),
            decodes: tokio::sync::Semaphore::new(DECODE_SLOTS),
        }
    }
}

/// Decoded voxels kept in memory (a BraTS volume is 36 MB as f32; an MSD 4-D file four times
/// that). The most recent volume always stays, whatever its size.
const CACHE_BYTES: usize = 512 * 1024 * 1024;

impl VolumeCache {
    /// A decode slot: hold it while decoding NIfTI data (here and in upload checks).
    pub async fn decode_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.decodes
            .acquire()
            .await
            .expect("the decode semaphore is never closed")
    }

    /// The decoded volume at `path`, reading it (on a blocking thread) when not cached.
    pub async fn get(&self, path: &Path) -> Result<Arc<Volume>, VolumeError> {
        if let Some(hit) = self.lookup(path) {
            return Ok(hit);
        }
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        let result = async {
            let _one_decode_per_file = gate.lock().await;
            if let Some(hit) = self.lookup(path) {
                return Ok(hit);
            }
            let _slot = self.decode_slot().await;
            let owned = path.to_path_buf();
            let volume = tokio::task::spawn_blocking(move || read_volume(&owned)).await??;
            Ok(self.insert(path, volume))
        }
        .await;
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&gate) <= 2 {
            loading.remove(path);
        }
        result
    }

    fn insert(&self, path: &Path, volume: Volume) -> Arc<Volume> {
        let volume = Arc::new(volume);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(0, (path.to_path_buf(), volume.clone()));
        let mut total = 0;
        let keep = entries
            .iter()
            .position(|(_, v)| {
                total += v.data.len() * std::mem::size_of::<f32>();
                total > CACHE_BYTES
            })
            .map_or(entries.len(), |over| over.max(1));
        entries.truncate(keep);
        volume
    }

    /// Forgets the volumes of files under `dir` (a deleted study or prediction).
    pub fn forget_under(&self, dir: &Path) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| !p.starts_with(dir));
    }

    fn lookup(&self, path: &Path) -> Option<Arc<Volume>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let pos = entries.iter().position(|(p, _)| p == path)?;
        let entry = entries.remove(pos);
        let volume = entry.1.clone();
        entries.insert(0, entry);
        Some(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let data = ArrayD::from_shape_fn(IxDyn(&shape), |i| f(i[0], i[1], i[2]));
        let windows = vec![percentile_window(data.iter())];
        Volume {
            data,
            spacing: [1.0, 1.0, 2.0],
            windows,
        }
    }

    #[test]
    fn window_ignores_background_and_outliers() {
        let mut values: Vec<f32> = (1..=1000).map(|v| v as f32).collect();
        values.extend([0.0; 5000]);
        values.push(1e9);
        let (lo, hi) = percentile_window(values.iter());
        assert!((lo - 6.0).abs() < 2.0, "{lo}");
        assert!((990.0..=1000.0).contains(&hi), "{hi}");
        assert_eq!(percentile_window([0.0f32; 4].iter()), (0.0, 1.0));
    }

    #[test]
    fn each_plane_maps_pixels_to_the_right_voxels_with_superior_and_anterior_up() {
        let shape = [4, 3, 2];
        assert_eq!(Plane::Axial.frame(shape), (4, 3));
        assert_eq!(Plane::Coronal.frame(shape), (4, 2));
        assert_eq!(Plane::Sagittal.frame(shape), (3, 2));
        // Top-left pixel: highest y (axial) or highest z (coronal, sagittal).
        assert_eq!(Plane::Axial.voxel(shape, 1, 0, 0), (0, 2, 1));
        assert_eq!(Plane::Coronal.voxel(shape, 2, 3, 0), (3, 2, 1));
        assert_eq!(Plane::Sagittal.voxel(shape, 3, 2, 1), (3, 2, 0));
        assert_eq!(Plane::Coronal.depth(shape), 3);
    }

    #[test]
    fn region_volumes_use_the_voxel_size_and_brats_regions() {
        // x = 0..4 -> labels 0, 1, 2, 4; each label 3 x 2 voxels of 2 mm^3.
        let labels = volume([4, 3, 2], |x, _, _| [0.0, 1.0, 2.0, 4.0][x]);
        let v = region_volumes(&labels);
        let per_label = 6.0 * 2.0 / 1000.0;
        assert!((v.ncr_ml - per_label).abs() < 1e-12);
        assert!((v.tc_ml - 2.0 * per_label).abs() < 1e-12);
        assert!((v.wt_ml - 3.0 * per_label).abs() < 1e-12);
    }

    #[test]
    fn label_overlay_shows_only_the_chosen_labels_and_accepts_et_as_3() {
        let labels = volume([4, 1, 1], |x, _, _| [0.0, 1.0, 3.0, 2.0][x]);
        let png_bytes = render_labels(&labels, Plane::Axial, 0, &[4]).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        let alpha: Vec<u8> = pixels.chunks(4).map(|p| p[3]).collect();
        assert_eq!(alpha, [0, 0, 255, 0]);
        assert!(render_labels(&labels, Plane::Axial, 1, &[4]).is_err());
    }
}
