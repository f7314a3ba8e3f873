//! The on-disk slice cache. A BraTS training set is ~180 GB as float32, so each case is decoded,
//! checked and z-scored once, then stored so that one axial slice of all four modalities plus its
//! label is a single contiguous read:
//!
//! - `<id>-<key>.slices`: for each stored z (the brain's z range), `[4][bx][by]` f16 little-endian
//!   followed by `[bx][by]` u8 internal labels, where `bx × by` is the brain's bounding box in the
//!   axial plane (everything outside it is background, 0);
//! - `<id>-<key>.json`: [`CacheIndex`] with the geometry and the tumour / brain slice lists, written
//!   last, so its presence means the slice file is complete.
//!
//! `key` hashes the canonical paths, sizes and modification times of the case's files and the
//! format version, so an edited file gets a fresh entry. Both files are written atomically.
//! Storing f16 inside the bounding box takes a BraTS case from ~143 MB (f32) to ~30 MB.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use ndarray::{Array3, Array4};
use serde::{Deserialize, Serialize};

use super::nifti_io::write_atomically;
use super::{load_study, CaseSource, DataError};

const FORMAT_VERSION: u32 = 1;

/// `${CGGM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cggm-studio}/slices`.
pub(crate) fn default_cache_dir() -> PathBuf {
    let root = if let Some(dir) = std::env::var_os("CGGM_CACHE_DIR").filter(|v| !v.is_empty()) {
        PathBuf::from(dir)
    } else {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                    .join(".cache")
            });
        base.join("cggm-studio")
    };
    root.join("slices")
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CacheIndex {
    pub version: u32,
    pub case: String,
    pub sources: Vec<PathBuf>,
    /// Full volume shape `[X, Y, Z]`.
    pub shape: [usize; 3],
    /// Stored box, half-open: x in `x_range`, y in `y_range`, z in `z_range`.
    pub x_range: [usize; 2],
    pub y_range: [usize; 2],
    pub z_range: [usize; 2],
    /// Absolute z of slices with any tumour label.
    pub tumour_slices: Vec<u32>,
    /// Absolute z of slices with brain but no tumour.
    pub other_brain_slices: Vec<u32>,
    pub voxel_volume_ml: f64,
}

impl CacheIndex {
    pub fn box_size(&self) -> (usize, usize) {
        (
            self.x_range[1] - self.x_range[0],
            self.y_range[1] - self.y_range[0],
        )
    }

    pub fn record_bytes(&self) -> usize {
        let (bx, by) = self.box_size();
        bx * by * (4 * 2 + 1)
    }
}

/// One preprocessed case, ready for slice reads.
#[derive(Clone, Debug)]
pub(crate) struct CachedCase {
    pub slices_path: PathBuf,
    pub index: CacheIndex,
}

/// One axial slice as stored: images `[4][bx][by]` as f16 bits, labels `[bx][by]`.
pub(crate) struct StoredSlice {
    pub images: Vec<u16>,
    pub labels: Vec<u8>,
}

impl CachedCase {
    pub fn read_slice(&self, z: usize) -> Result<StoredSlice, DataError> {
        let index = &self.index;
        let cache_error = |detail: String| DataError::Cache {
            file: self.slices_path.clone(),
            detail,
        };
        if z < index.z_range[0] || z >= index.z_range[1] {
            return Err(cache_error(format!(
                "slice {z} is outside the stored range"
            )));
        }
        let record = index.record_bytes();
        let mut bytes = vec![0u8; record];
        let mut file = File::open(&self.slices_path).map_err(|e| cache_error(e.to_string()))?;
        file.seek(SeekFrom::Start(((z - index.z_range[0]) * record) as u64))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| cache_error(e.to_string()))?;
        let (bx, by) = index.box_size();
        let n_images = 4 * bx * by;
        let images = bytes[..n_images * 2]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let labels = bytes[n_images * 2..].to_vec();
        Ok(StoredSlice { images, labels })
    }
}

fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= b as u64;
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

fn cache_key(case: &CaseSource) -> Result<String, DataError> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    fnv1a(&mut hash, &FORMAT_VERSION.to_le_bytes());
    for path in case.paths() {
        let canonical = path
            .canonicalize()
            .map_err(|e| DataError::io(&path, &e).in_case(&case.id))?;
        let meta = std::fs::metadata(&canonical)
            .map_err(|e| DataError::io(&path, &e).in_case(&case.id))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        fnv1a(&mut hash, canonical.to_string_lossy().as_bytes());
        fnv1a(&mut hash, &[0]);
        fnv1a(&mut hash, &meta.len().to_le_bytes());
        fnv1a(&mut hash, &mtime.to_le_bytes());
    }
    let safe_id: String = case
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    Ok(format!("{safe_id}-{hash:016x}"))
}

fn try_open(slices_path: &Path, index_path: &Path) -> Option<CachedCase> {
    let text = std::fs::read_to_string(index_path).ok()?;
    let index: CacheIndex = serde_json::from_str(&text).ok()?;
    let expected = (index.z_range[1] - index.z_range[0]) * index.record_bytes();
    let actual = std::fs::metadata(slices_path).ok()?.len();
    (index.version == FORMAT_VERSION && actual == expected as u64).then(|| CachedCase {
        slices_path: slices_path.to_path_buf(),
        index,
    })
}

/// Returns the cached case, building the cache entry first when it is missing or stale. Requires
/// a label (training data).
pub(crate) fn prepare(case: &CaseSource, cache_dir: &Path) -> Result<CachedCase, DataError> {
    if case.label_path().is_none() {
        return Err(DataError::MissingLabel {
            case: case.id.clone(),
        });
    }
    let key = cache_key(case)?;
    let slices_path = cache_dir.join(format!("{key}.slices"));
    let index_path = cache_dir.join(format!("{key}.json"));
    if let Some(cached) = try_open(&slices_path, &index_path) {
        return Ok(cached);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| DataError::Cache {
        file: cache_dir.to_path_buf(),
        detail: format!("cannot create the cache folder: {e}"),
    })?;
    let study = load_study(case)?;
    let label = study.label.as_ref().expect("label checked above");
    let (_, nx, ny, nz) = study.images.dim();
    let [x_range, y_range, z_range] = brain_box(&study.images, label);
    let mut index = CacheIndex {
        version: FORMAT_VERSION,
        case: case.id.clone(),
        sources: case.paths(),
        shape: [nx, ny, nz],
        x_range,
        y_range,
        z_range,
        tumour_slices: Vec::new(),
        other_brain_slices: Vec::new(),
        voxel_volume_ml: study.voxel_volume_ml,
    };
    let body = slice_records(&study.images, label, &mut index);
    write_atomically(&slices_path, |w| w.write_all(&body))?;
    let json = serde_json::to_vec(&index).expect("index serialises");
    write_atomically(&index_path, |w| w.write_all(&json))?;
    Ok(CachedCase { slices_path, index })
}

/// The brain's bounding box `[x, y, z]` as half-open ranges: voxels non-zero in any modality or
/// in the label.
fn brain_box(images: &Array4<f32>, label: &Array3<u8>) -> [[usize; 2]; 3] {
    let (_, nx, ny, nz) = images.dim();
    let mut ranges = [[nx, 0], [ny, 0], [nz, 0]];
    let mut include = |at: [usize; 3]| {
        for (range, v) in ranges.iter_mut().zip(at) {
            *range = [range[0].min(v), range[1].max(v + 1)];
        }
    };
    for ((_, x, y, z), &v) in images.indexed_iter() {
        if v != 0.0 {
            include([x, y, z]);
        }
    }
    for ((x, y, z), &l) in label.indexed_iter() {
        if l != 0 {
            include([x, y, z]);
        }
    }
    ranges
}

/// The cache file's body: per slice of the box, the four modalities as f16 then the labels; the
/// index learns which slices hold tumour and which only brain.
fn slice_records(images: &Array4<f32>, label: &Array3<u8>, index: &mut CacheIndex) -> Vec<u8> {
    let [x_range, y_range, z_range] = [index.x_range, index.y_range, index.z_range];
    let (bx, by) = index.box_size();
    let mut body = Vec::with_capacity((z_range[1] - z_range[0]) * index.record_bytes());
    for z in z_range[0]..z_range[1] {
        let mut brain = false;
        let mut tumour = false;
        for c in 0..4 {
            for x in x_range[0]..x_range[1] {
                for y in y_range[0]..y_range[1] {
                    let v = images[[c, x, y, z]];
                    brain |= v != 0.0;
                    body.extend_from_slice(&f32_to_f16(v).to_le_bytes());
                }
            }
        }
        for x in x_range[0]..x_range[1] {
            for y in y_range[0]..y_range[1] {
                let l = label[[x, y, z]];
                tumour |= l != 0;
                body.push(l);
            }
        }
        if tumour {
            index.tumour_slices.push(z as u32);
        } else if brain {
            index.other_brain_slices.push(z as u32);
        }
    }
    debug_assert_eq!(body.len(), (z_range[1] - z_range[0]) * bx * by * 9);
    body
}

/// f32 → IEEE half (round to nearest even). Non-zero values never round to zero, so that brain
/// voxels stay distinguishable from background.
pub(crate) fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    let half = if e >= 31 {
        sign | 0x7c00
    } else if e <= 0 {
        if e < -10 {
            sign
        } else {
            let m = mant | 0x80_0000;
            let shift = (14 - e) as u32;
            let halfway = 1u32 << (shift - 1);
            let mut r = m >> shift;
            let rem = m & ((1 << shift) - 1);
            if rem > halfway || (rem == halfway && r & 1 == 1) {
                r += 1;
            }
            sign | r as u16
        }
    } else {
        let mut r = ((e as u32) << 10) | (mant >> 13);
        let rem = mant & 0x1fff;
        if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
            r += 1;
        }
        sign | r as u16
    };
    if half & 0x7fff == 0 && value != 0.0 {
        sign | 1
    } else {
        half
    }
}

fn f16_to_f32_slow(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    match exp {
        0 => sign * mant as f32 * (2.0f32).powi(-24),
        31 if mant == 0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => f32::from_bits(((h as u32 & 0x8000) << 16) | ((exp + 112) << 23) | (mant << 13)),
    }
}

static F16_TABLE: LazyLock<Vec<f32>> =
    LazyLock::new(|| (0..=u16::MAX).map(f16_to_f32_slow).collect());

/// IEEE half bits → f32 (table lookup: the loader converts millions of voxels per second).
#[inline]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    F16_TABLE[h as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_round_trip_is_close_and_keeps_brain_non_zero() {
        for v in [
            0.0f32, 1.0, -1.0, 0.333, -2.5, 7.125, 12.3456, 65504.0, 1e-9, -1e-9,
        ] {
            let back = f16_to_f32(f32_to_f16(v));
            if v == 0.0 {
                assert_eq!(back, 0.0);
            } else {
                assert!(back != 0.0, "{v} became background");
                if v.abs() > 1e-4 {
                    assert!((back - v).abs() <= v.abs() * 1e-3, "{v} -> {back}");
                }
            }
        }
    }
}
