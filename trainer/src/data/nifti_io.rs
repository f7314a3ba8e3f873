//! NIfTI-1 reading and writing. The header is parsed by the `nifti` crate; the voxel data is decoded
//! here so that every failure (not NIfTI, NIfTI-2, corrupt gzip, truncated data, odd datatype) gets
//! its own typed [`DataError`], and writing is atomic (temporary file + rename) so that a crash
//! never leaves a half-written prediction or dataset behind.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::{ArrayD, ArrayView3, IxDyn, ShapeBuilder};
use nifti::{Endianness, NiftiHeader};

use super::DataError;

const NIFTI1_HEADER_SIZE: usize = 348;
const NIFTI2_HEADER_SIZE: i32 = 540;
/// Header plus the 4-byte extension flag: where single-file voxel data starts when we write.
const WRITE_VOX_OFFSET: usize = 352;

pub(crate) const DT_UINT8: i16 = 2;
pub(crate) const DT_INT16: i16 = 4;
const DT_INT32: i16 = 8;
const DT_FLOAT32: i16 = 16;
const DT_FLOAT64: i16 = 64;
const DT_INT8: i16 = 256;
const DT_UINT16: i16 = 512;
const DT_UINT32: i16 = 768;
const DT_INT64: i16 = 1024;
const DT_UINT64: i16 = 1280;

/// A decoded volume: voxels as f32 (scaling applied) in NIfTI order (x fastest), dims without
/// dim[0].
pub(crate) struct RawVolume {
    pub header: NiftiHeader,
    pub dims: Vec<usize>,
    /// Fortran order: index = x + X*(y + Y*(z + Z*t)).
    pub data: Vec<f32>,
}

/// Reads a `.nii` or `.nii.gz` NIfTI-1 volume of any supported datatype, `scl_slope`/`scl_inter`
/// applied. The array has the file's dimensions (`[X, Y, Z]`, `[X, Y, Z, T]`, ...) indexed as
/// `[x, y, z, ..]`.
pub fn read_volume(path: &Path) -> Result<(NiftiHeader, ArrayD<f32>), DataError> {
    let volume = read_raw_volume(path)?;
    let array = ArrayD::from_shape_vec(IxDyn(&volume.dims).f(), volume.data).map_err(|e| {
        DataError::BadHeader {
            case: String::new(),
            file: path.to_path_buf(),
            detail: format!("dimensions do not match the data: {e}"),
        }
    })?;
    Ok((volume.header, array))
}

fn read_file_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, &e))?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)
        .map_err(|e| DataError::io(path, &e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut decoded = Vec::with_capacity(raw.len() * 4);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut decoded)
            .map_err(|e| DataError::CorruptGzip {
                case: String::new(),
                file: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Ok(decoded)
    } else if path.to_string_lossy().ends_with(".gz") {
        Err(DataError::CorruptGzip {
            case: String::new(),
            file: path.to_path_buf(),
            detail: "the name ends in .gz but the file does not start with the gzip signature"
                .into(),
        })
    } else {
        Ok(raw)
    }
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<NiftiHeader, DataError> {
    let not_nifti = |detail: String| DataError::NotNifti {
        case: String::new(),
        file: path.to_path_buf(),
        detail,
    };
    if bytes.len() < 4 {
        return Err(not_nifti(format!("only {} bytes long", bytes.len())));
    }
    let size_le = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if size_le == NIFTI2_HEADER_SIZE || size_be == NIFTI2_HEADER_SIZE {
        return Err(DataError::Nifti2Unsupported {
            case: String::new(),
            file: path.to_path_buf(),
        });
    }
    if size_le != NIFTI1_HEADER_SIZE as i32 && size_be != NIFTI1_HEADER_SIZE as i32 {
        return Err(not_nifti(
            "the first four bytes are not the NIfTI-1 header size 348".into(),
        ));
    }
    if bytes.len() < NIFTI1_HEADER_SIZE {
        return Err(DataError::TruncatedData {
            case: String::new(),
            file: path.to_path_buf(),
            expected: NIFTI1_HEADER_SIZE as u64,
            got: bytes.len() as u64,
        });
    }
    let header = NiftiHeader::from_reader(&bytes[..NIFTI1_HEADER_SIZE])
        .map_err(|e| not_nifti(e.to_string()))?;
    if &header.magic == b"ni1\0" {
        return Err(not_nifti(
            "it is the header of a two-file .hdr/.img pair; convert it to a single .nii.gz \
             (e.g. nibabel: nib.save(nib.load('x.hdr'), 'x.nii.gz'))"
                .into(),
        ));
    }
    Ok(header)
}

pub(crate) fn read_raw_volume(path: &Path) -> Result<RawVolume, DataError> {
    let bytes = read_file_bytes(path)?;
    let header = parse_header(path, &bytes)?;
    let bad_header = |detail: String| DataError::BadHeader {
        case: String::new(),
        file: path.to_path_buf(),
        detail,
    };
    let rank = header.dim[0] as usize;
    if rank == 0 || rank > 7 {
        return Err(bad_header(format!("dim[0] = {rank} must be 1..7")));
    }
    let dims: Vec<usize> = header.dim[1..=rank].iter().map(|&d| d as usize).collect();
    if dims.contains(&0) {
        return Err(bad_header(format!("a dimension is zero: {dims:?}")));
    }
    let count: usize = dims.iter().product();
    let (width, name) = match header.datatype {
        DT_UINT8 => (1, "uint8"),
        DT_INT8 => (1, "int8"),
        DT_INT16 => (2, "int16"),
        DT_UINT16 => (2, "uint16"),
        DT_INT32 => (4, "int32"),
        DT_UINT32 => (4, "uint32"),
        DT_FLOAT32 => (4, "float32"),
        DT_INT64 => (8, "int64"),
        DT_UINT64 => (8, "uint64"),
        DT_FLOAT64 => (8, "float64"),
        other => {
            let name = match other {
                32 => "complex64",
                128 => "rgb24",
                1536 => "float128",
                1792 => "complex128",
                2048 => "complex256",
                2304 => "rgba32",
                1 => "binary",
                _ => "unknown",
            };
            return Err(DataError::UnsupportedDatatype {
                case: String::new(),
                file: path.to_path_buf(),
                code: other,
                name: name.into(),
            });
        }
    };
    let _ = name;
    let offset = header.vox_offset.max(NIFTI1_HEADER_SIZE as f32) as usize;
    let needed = count * width;
    let available = bytes.len().saturating_sub(offset);
    if available < needed {
        return Err(DataError::TruncatedData {
            case: String::new(),
            file: path.to_path_buf(),
            expected: needed as u64,
            got: available as u64,
        });
    }
    let payload = &bytes[offset..offset + needed];
    let big = header.endianness == Endianness::Big;
    let data = decode_voxels(payload, header.datatype, big);
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    let data =
        if slope != 0.0 && slope.is_finite() && inter.is_finite() && (slope, inter) != (1.0, 0.0) {
            data.into_iter().map(|v| v * slope + inter).collect()
        } else {
            data
        };
    Ok(RawVolume { header, dims, data })
}

fn decode_voxels(payload: &[u8], datatype: i16, big: bool) -> Vec<f32> {
    macro_rules! decode {
        ($t:ty, $n:expr) => {
            payload
                .chunks_exact($n)
                .map(|c| {
                    let b: [u8; $n] = c.try_into().expect("chunk width");
                    (if big {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    }) as f32
                })
                .collect()
        };
    }
    match datatype {
        DT_UINT8 => payload.iter().map(|&v| v as f32).collect(),
        DT_INT8 => payload.iter().map(|&v| v as i8 as f32).collect(),
        DT_INT16 => decode!(i16, 2),
        DT_UINT16 => decode!(u16, 2),
        DT_INT32 => decode!(i32, 4),
        DT_UINT32 => decode!(u32, 4),
        DT_FLOAT32 => decode!(f32, 4),
        DT_INT64 => decode!(i64, 8),
        DT_UINT64 => decode!(u64, 8),
        DT_FLOAT64 => decode!(f64, 8),
        _ => unreachable!("datatype checked by the caller"),
    }
}

/// The voxel-to-world affine (3 rows of 4) the way viewers pick it: sform when its code is set,
/// else qform, else the plain pixdim scaling.
pub fn header_affine(h: &NiftiHeader) -> [[f64; 4]; 3] {
    if h.sform_code > 0 {
        let row = |r: &[f32; 4]| r.map(|v| v as f64);
        [row(&h.srow_x), row(&h.srow_y), row(&h.srow_z)]
    } else if h.qform_code > 0 {
        qform_affine(h)
    } else {
        let p = |i: usize| h.pixdim[i] as f64;
        [
            [p(1), 0.0, 0.0, 0.0],
            [0.0, p(2), 0.0, 0.0],
            [0.0, 0.0, p(3), 0.0],
        ]
    }
}

/// The qform affine, as in the NIfTI-1 standard (method 2).
pub(crate) fn qform_affine(h: &NiftiHeader) -> [[f64; 4]; 3] {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let rotation = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let scale = [
        h.pixdim[1] as f64,
        h.pixdim[2] as f64,
        h.pixdim[3] as f64 * qfac,
    ];
    let offset = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
    let mut out = [[0.0; 4]; 3];
    for r in 0..3 {
        for col in 0..3 {
            out[r][col] = rotation[r][col] * scale[col];
        }
        out[r][3] = offset[r];
    }
    out
}

/// Serialises a NIfTI-1 header little-endian (348 bytes), as `parse_header_2` of the `nifti` crate
/// reads it.
fn header_bytes(h: &NiftiHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(NIFTI1_HEADER_SIZE);
    let i16s = |out: &mut Vec<u8>, v: i16| out.extend_from_slice(&v.to_le_bytes());
    let f32s = |out: &mut Vec<u8>, v: f32| out.extend_from_slice(&v.to_le_bytes());
    out.extend_from_slice(&(NIFTI1_HEADER_SIZE as i32).to_le_bytes());
    out.extend_from_slice(&h.data_type);
    out.extend_from_slice(&h.db_name);
    out.extend_from_slice(&h.extents.to_le_bytes());
    i16s(&mut out, h.session_error);
    out.push(h.regular);
    out.push(h.dim_info);
    for d in h.dim {
        out.extend_from_slice(&d.to_le_bytes());
    }
    f32s(&mut out, h.intent_p1);
    f32s(&mut out, h.intent_p2);
    f32s(&mut out, h.intent_p3);
    i16s(&mut out, h.intent_code);
    i16s(&mut out, h.datatype);
    i16s(&mut out, h.bitpix);
    i16s(&mut out, h.slice_start);
    for p in h.pixdim {
        f32s(&mut out, p);
    }
    f32s(&mut out, h.vox_offset);
    f32s(&mut out, h.scl_slope);
    f32s(&mut out, h.scl_inter);
    i16s(&mut out, h.slice_end);
    out.push(h.slice_code);
    out.push(h.xyzt_units);
    f32s(&mut out, h.cal_max);
    f32s(&mut out, h.cal_min);
    f32s(&mut out, h.slice_duration);
    f32s(&mut out, h.toffset);
    out.extend_from_slice(&h.glmax.to_le_bytes());
    out.extend_from_slice(&h.glmin.to_le_bytes());
    let mut descrip = [0u8; 80];
    let n = h.descrip.len().min(80);
    descrip[..n].copy_from_slice(&h.descrip[..n]);
    out.extend_from_slice(&descrip);
    out.extend_from_slice(&h.aux_file);
    i16s(&mut out, h.qform_code);
    i16s(&mut out, h.sform_code);
    for v in [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ] {
        f32s(&mut out, v);
    }
    for row in [h.srow_x, h.srow_y, h.srow_z] {
        for v in row {
            f32s(&mut out, v);
        }
    }
    out.extend_from_slice(&h.intent_name);
    out.extend_from_slice(b"n+1\0");
    debug_assert_eq!(out.len(), NIFTI1_HEADER_SIZE);
    out
}

/// A temporary sibling of `path` for atomic writes (same directory, so rename stays atomic).
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{unique}", std::process::id()))
}

/// Writes `bytes` (produced by `fill`) to `path` atomically: a temporary file in the same folder,
/// flushed, then renamed over the target.
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), DataError> {
    let temp = temp_sibling(path);
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&temp)?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(DataError::io(path, &e));
    }
    Ok(())
}

fn is_gz(path: &Path) -> bool {
    path.to_string_lossy().to_ascii_lowercase().ends_with(".gz")
}

/// Writes a 3-D volume with `header`'s geometry. `datatype`/`bitpix` and the data-dependent
/// fields are set here; gzip when the name ends in `.gz`.
fn write_nifti(
    path: &Path,
    reference: &NiftiHeader,
    shape: [usize; 3],
    datatype: i16,
    bitpix: i16,
    voxels_le: &[u8],
    compression: Compression,
) -> Result<(), DataError> {
    let mut h = reference.clone();
    h.sizeof_hdr = NIFTI1_HEADER_SIZE as i32;
    h.dim = [1; 8];
    h.dim[0] = 3;
    for (i, &s) in shape.iter().enumerate() {
        h.dim[i + 1] = u16::try_from(s).map_err(|_| DataError::Config {
            detail: format!("dimension {s} does not fit a NIfTI-1 header"),
        })?;
    }
    h.datatype = datatype;
    h.bitpix = bitpix;
    h.vox_offset = WRITE_VOX_OFFSET as f32;
    h.magic = *b"n+1\0";
    h.endianness = Endianness::Little;
    h.intent_code = 0;
    for p in h.pixdim.iter_mut().skip(4) {
        *p = if *p == 0.0 { 1.0 } else { *p };
    }
    if h.pixdim[0] != 1.0 && h.pixdim[0] != -1.0 {
        h.pixdim[0] = 1.0;
    }
    let header = header_bytes(&h);
    write_atomically(path, |out| {
        let body = |w: &mut dyn Write| -> std::io::Result<()> {
            w.write_all(&header)?;
            w.write_all(&[0u8; WRITE_VOX_OFFSET - NIFTI1_HEADER_SIZE])?;
            w.write_all(voxels_le)
        };
        if is_gz(path) {
            let mut gz = GzEncoder::new(out, compression);
            body(&mut gz)?;
            gz.finish()?;
            Ok(())
        } else {
            body(out)
        }
    })
}

/// Voxels of a 3-D view in NIfTI order (x fastest).
fn fortran_order<T: Copy>(data: &ArrayView3<T>) -> Vec<T> {
    data.t().iter().copied().collect()
}

/// Writes a uint8 volume (`[X, Y, Z]`) with the reference's geometry (qform, sform, pixdim,
/// units), no intensity scaling.
pub fn write_volume_u8(
    path: &Path,
    data: &ArrayView3<u8>,
    reference: &NiftiHeader,
) -> Result<(), DataError> {
    let mut h = reference.clone();
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    let max = data.iter().copied().max().unwrap_or(0);
    h.cal_min = 0.0;
    h.cal_max = max as f32;
    let (x, y, z) = data.dim();
    write_nifti(
        path,
        &h,
        [x, y, z],
        DT_UINT8,
        8,
        &fortran_order(data),
        Compression::default(),
    )
}

/// Writes an int16 volume (`[X, Y, Z]`) with the reference's geometry, no intensity scaling. Uses
/// fast gzip: synthetic datasets of hundreds of MB must be written in seconds.
pub fn write_volume_i16(
    path: &Path,
    data: &ArrayView3<i16>,
    reference: &NiftiHeader,
) -> Result<(), DataError> {
    let mut h = reference.clone();
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h.cal_min = 0.0;
    h.cal_max = 0.0;
    let (x, y, z) = data.dim();
    let bytes: Vec<u8> = fortran_order(data)
        .into_iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_nifti(
        path,
        &h,
        [x, y, z],
        DT_INT16,
        16,
        &bytes,
        Compression::fast(),
    )
}

/// Writes a predicted segmentation: `labels_internal` (`[X, Y, Z]`, internal classes 0..3) stored
/// as uint8 BraTS values 0/1/2/4, carrying the reference's qform, sform, pixdim and units so that
/// viewers overlay it on the input exactly. `.nii.gz` or `.nii` by extension; written atomically.
pub fn write_label_volume(
    path: &Path,
    labels_internal: &ArrayView3<u8>,
    reference: &NiftiHeader,
) -> Result<(), DataError> {
    if let Some(bad) = labels_internal.iter().find(|&&v| v > 3) {
        return Err(DataError::BadLabelValues {
            case: String::new(),
            file: path.to_path_buf(),
            values: vec![*bad as f64],
            convention: "internal",
            allowed: "0, 1, 2, 3",
        });
    }
    let brats = labels_internal.mapv(super::internal_to_brats);
    let mut h = reference.clone();
    h.set_description_str("CGGM Studio segmentation (BraTS labels 0/1/2/4)")
        .ok();
    write_volume_u8(path, &brats.view(), &h)
}
