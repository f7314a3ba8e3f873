//! NIfTI reading (NIfTI-1 and NIfTI-2) and NIfTI-1 writing. A NIfTI-1 header is parsed by the
//! `nifti` crate, a NIfTI-2 header here; the voxel data is decoded here, streaming and bounded by
//! what the header promises and by a voxel limit, so that a hostile file (gzip bomb, lying header)
//! costs neither time nor memory, and every failure (not NIfTI, too large, corrupt gzip, truncated
//! data, odd datatype) gets its own typed [`DataError`]. Writing is atomic (temporary file +
//! rename) so that a crash never leaves a half-written prediction or dataset behind.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::{ArrayD, ArrayView3, IxDyn, ShapeBuilder};
use nifti::{Endianness, NiftiHeader};

use super::DataError;
use super::OutputLabels;

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

/// Reads a `.nii` or `.nii.gz` NIfTI-1 or NIfTI-2 volume of any supported datatype,
/// `scl_slope`/`scl_inter` applied. The array has the file's dimensions (`[X, Y, Z]`,
/// `[X, Y, Z, T]`, ...) indexed as `[x, y, z, ..]`. Hostile files are refused before memory is
/// spent on them: see [`read_raw_volume`].
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

/// The largest volume (in voxels, all dimensions multiplied) any reader accepts, from
/// `CGGM_MAX_VOXELS` (default 2^26 = 67 million: a 4-channel BraTS volume is 36 million, a 0.6 mm
/// isotropic head 64 million). A header asking for more is refused before any voxel is read.
pub fn max_voxels() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("CGGM_MAX_VOXELS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_MAX_VOXELS)
    })
}

pub const DEFAULT_MAX_VOXELS: u64 = 1 << 26;

/// Extensions between the header and the voxels larger than this are refused (real ones are a few
/// KiB); a lying `vox_offset` must not make the reader inflate gigabytes to skip them.
const MAX_EXTENSION_BYTES: u64 = 16 << 20;

/// After the voxels, how much more of a gzip stream is read to reach (and check) its trailer.
/// Anything beyond is ignored, never inflated.
const GZIP_TRAILER_SLACK: u64 = 64 << 10;

/// What the header says about the voxel data, whichever NIfTI version it came from.
pub struct HeaderInfo {
    /// A NIfTI-1 header (a NIfTI-2 header is converted: its fields in single precision).
    pub header: NiftiHeader,
    /// Dimensions without dim[0].
    pub dims: Vec<usize>,
    /// Where the voxel data starts in the (decompressed) file.
    pub vox_offset: u64,
    /// Bytes of voxel data the header promises.
    pub data_bytes: u64,
    /// Size of the header itself: 348 (NIfTI-1) or 540 (NIfTI-2).
    pub header_bytes: u64,
}

/// The file as a stream of decompressed bytes (gzip detected by its signature, not its name).
fn open_stream(path: &Path) -> Result<(Box<dyn Read>, Option<u64>), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, &e))?;
    let length = file.metadata().map_err(|e| DataError::io(path, &e))?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let signature = reader.fill_buf().map_err(|e| DataError::io(path, &e))?;
    if signature.starts_with(&[0x1f, 0x8b]) {
        Ok((Box::new(MultiGzDecoder::new(reader)), None))
    } else if is_gz(path) {
        Err(DataError::CorruptGzip {
            case: String::new(),
            file: path.to_path_buf(),
            detail: "the name ends in .gz but the file does not start with the gzip signature"
                .into(),
        })
    } else {
        Ok((Box::new(reader), Some(length)))
    }
}

/// Reads up to `limit` bytes; a short result means the stream ended. Gzip damage is reported as
/// such.
fn read_up_to(
    path: &Path,
    reader: &mut dyn Read,
    limit: u64,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    reader
        .take(limit)
        .read_to_end(out)
        .map(|_| ())
        .map_err(|e| gzip_error(path, &e))
}

fn gzip_error(path: &Path, e: &std::io::Error) -> DataError {
    DataError::CorruptGzip {
        case: String::new(),
        file: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Reads and checks the header of `path` only (a few hundred bytes inflated, whatever the file
/// claims): version, dimensions against [`max_voxels`], datatype.
pub fn read_header(path: &Path) -> Result<HeaderInfo, DataError> {
    let (mut stream, _) = open_stream(path)?;
    read_header_from(path, &mut *stream)
}

fn read_header_from(path: &Path, stream: &mut dyn Read) -> Result<HeaderInfo, DataError> {
    let mut bytes = Vec::with_capacity(NIFTI2_HEADER_SIZE as usize);
    read_up_to(path, stream, 4, &mut bytes)?;
    if bytes.len() < 4 {
        return Err(DataError::NotNifti {
            case: String::new(),
            file: path.to_path_buf(),
            detail: format!("only {} bytes long", bytes.len()),
        });
    }
    let size_le = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let version2 = size_le == NIFTI2_HEADER_SIZE || size_be == NIFTI2_HEADER_SIZE;
    let size = if version2 {
        NIFTI2_HEADER_SIZE as usize
    } else {
        NIFTI1_HEADER_SIZE
    };
    read_up_to(path, stream, size as u64 - 4, &mut bytes)?;
    let (header, dims, vox_offset) = if version2 {
        parse_header_2(path, &bytes)?
    } else {
        let header = parse_header(path, &bytes)?;
        let rank = header.dim[0] as usize;
        if rank == 0 || rank > 7 {
            return Err(bad_header(path, format!("dim[0] = {rank} must be 1..7")));
        }
        let dims: Vec<u64> = header.dim[1..=rank].iter().map(|&d| d as u64).collect();
        let offset = header.vox_offset;
        if !offset.is_finite() || offset < 0.0 {
            return Err(bad_header(path, format!("vox_offset {offset} is invalid")));
        }
        let offset = (offset as u64).max(NIFTI1_HEADER_SIZE as u64);
        (header, dims, offset)
    };
    let width = datatype_width(path, header.datatype)?;
    let data_bytes = checked_size(path, &dims, width)?;
    if vox_offset > size as u64 + MAX_EXTENSION_BYTES {
        return Err(bad_header(
            path,
            format!(
                "vox_offset {vox_offset} puts the voxels more than {MAX_EXTENSION_BYTES} bytes \
                 after the header"
            ),
        ));
    }
    Ok(HeaderInfo {
        header,
        dims: dims.iter().map(|&d| d as usize).collect(),
        vox_offset,
        data_bytes,
        header_bytes: size as u64,
    })
}

fn bad_header(path: &Path, detail: String) -> DataError {
    DataError::BadHeader {
        case: String::new(),
        file: path.to_path_buf(),
        detail,
    }
}

/// Bytes of voxel data for `dims`, refusing zero dimensions and volumes over [`max_voxels`]
/// (checked without overflow, so a lying 20000^3 header is refused, not wrapped).
fn checked_size(path: &Path, dims: &[u64], width: u64) -> Result<u64, DataError> {
    if dims.contains(&0) {
        return Err(bad_header(path, format!("a dimension is zero: {dims:?}")));
    }
    let limit = max_voxels();
    let voxels = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&v| v <= limit));
    match voxels {
        Some(voxels) => Ok(voxels * width),
        None => Err(DataError::TooLarge {
            case: String::new(),
            file: path.to_path_buf(),
            dims: dims.to_vec(),
            limit,
        }),
    }
}

fn datatype_width(path: &Path, datatype: i16) -> Result<u64, DataError> {
    Ok(match datatype {
        DT_UINT8 | DT_INT8 => 1,
        DT_INT16 | DT_UINT16 => 2,
        DT_INT32 | DT_UINT32 | DT_FLOAT32 => 4,
        DT_INT64 | DT_UINT64 | DT_FLOAT64 => 8,
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
    })
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<NiftiHeader, DataError> {
    let not_nifti = |detail: String| DataError::NotNifti {
        case: String::new(),
        file: path.to_path_buf(),
        detail,
    };
    let size_le = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if size_le != NIFTI1_HEADER_SIZE as i32 && size_be != NIFTI1_HEADER_SIZE as i32 {
        return Err(not_nifti(
            "the first four bytes are neither the NIfTI-1 header size 348 nor the NIfTI-2 size 540"
                .into(),
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

/// A NIfTI-2 header (540 bytes, 64-bit dimensions and double-precision geometry), converted to
/// the NIfTI-1 fields the rest of the project reads. Returns the header, the dimensions and the
/// voxel offset.
fn parse_header_2(path: &Path, bytes: &[u8]) -> Result<(NiftiHeader, Vec<u64>, u64), DataError> {
    if bytes.len() < NIFTI2_HEADER_SIZE as usize {
        return Err(DataError::TruncatedData {
            case: String::new(),
            file: path.to_path_buf(),
            expected: NIFTI2_HEADER_SIZE as u64,
            got: bytes.len() as u64,
        });
    }
    check_magic_2(path, &bytes[4..8])?;
    let fields = Fields2 {
        bytes,
        big: i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) != NIFTI2_HEADER_SIZE,
    };
    let (dims, vox_offset) = dims_2(path, &fields)?;
    Ok((header_from_2(&fields, &dims, vox_offset), dims, vox_offset))
}

/// A single-file NIfTI-2 has the magic `n+2`; the two-file form and anything else are refused.
fn check_magic_2(path: &Path, magic: &[u8]) -> Result<(), DataError> {
    if magic == b"n+2\0" {
        return Ok(());
    }
    let detail = if magic == b"ni2\0" {
        "it is the header of a two-file NIfTI-2 .hdr/.img pair; convert it to a single .nii.gz"
            .to_string()
    } else {
        format!("NIfTI-2 size but magic {magic:?} instead of \"n+2\"")
    };
    Err(DataError::NotNifti {
        case: String::new(),
        file: path.to_path_buf(),
        detail,
    })
}

/// The fields of a NIfTI-2 header at their byte offsets, in the header's byte order (`big`: the
/// size field did not read 540 little-endian). Offsets are within the checked 540 bytes.
struct Fields2<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Fields2<'_> {
    fn raw<const N: usize>(&self, at: usize) -> [u8; N] {
        self.bytes[at..at + N]
            .try_into()
            .expect("offset within the header")
    }

    fn i32(&self, at: usize) -> i32 {
        let b = self.raw(at);
        if self.big {
            i32::from_be_bytes(b)
        } else {
            i32::from_le_bytes(b)
        }
    }

    fn i16(&self, at: usize) -> i16 {
        let b = self.raw(at);
        if self.big {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }

    fn i64(&self, at: usize) -> i64 {
        let b = self.raw(at);
        if self.big {
            i64::from_be_bytes(b)
        } else {
            i64::from_le_bytes(b)
        }
    }

    /// A double field, narrowed to the NIfTI-1 header's single precision.
    fn f32(&self, at: usize) -> f32 {
        let b = self.raw(at);
        (if self.big {
            f64::from_be_bytes(b)
        } else {
            f64::from_le_bytes(b)
        }) as f32
    }
}

/// The dimensions (`dim[1..=dim[0]]`, each positive) and the voxel offset (not negative).
fn dims_2(path: &Path, fields: &Fields2) -> Result<(Vec<u64>, u64), DataError> {
    let rank = fields.i64(16);
    if !(1..=7).contains(&rank) {
        return Err(bad_header(path, format!("dim[0] = {rank} must be 1..7")));
    }
    let mut dims = Vec::new();
    for i in 1..=rank as usize {
        let d = fields.i64(16 + 8 * i);
        if d <= 0 {
            return Err(bad_header(path, format!("dim[{i}] = {d} must be positive")));
        }
        dims.push(d as u64);
    }
    let vox_offset = fields.i64(168);
    if vox_offset < 0 {
        return Err(bad_header(
            path,
            format!("vox_offset {vox_offset} is negative"),
        ));
    }
    Ok((dims, vox_offset as u64))
}

/// The NIfTI-1 header of a checked NIfTI-2 one (NIfTI-2 offsets, in `fields`' byte order).
fn header_from_2(fields: &Fields2, dims: &[u64], vox_offset: u64) -> NiftiHeader {
    let mut header = NiftiHeader {
        sizeof_hdr: NIFTI1_HEADER_SIZE as i32,
        datatype: fields.i16(12),
        bitpix: fields.i16(14),
        ..NiftiHeader::default()
    };
    header.dim = [1; 8];
    header.dim[0] = dims.len() as u16;
    for (i, &d) in dims.iter().enumerate() {
        // Larger dimensions exceed any voxel limit we accept; `checked_size` names the problem.
        header.dim[i + 1] = u16::try_from(d).unwrap_or(u16::MAX);
    }
    header.intent_p1 = fields.f32(80);
    header.intent_p2 = fields.f32(88);
    header.intent_p3 = fields.f32(96);
    for (i, p) in header.pixdim.iter_mut().enumerate() {
        *p = fields.f32(104 + 8 * i);
    }
    header.vox_offset = vox_offset as f32;
    header.scl_slope = fields.f32(176);
    header.scl_inter = fields.f32(184);
    header.cal_max = fields.f32(192);
    header.cal_min = fields.f32(200);
    header.slice_duration = fields.f32(208);
    header.toffset = fields.f32(216);
    header.descrip = fields.bytes[240..320].to_vec();
    header.aux_file = fields.raw(320);
    header.qform_code = fields.i32(344) as i16;
    header.sform_code = fields.i32(348) as i16;
    header.quatern_b = fields.f32(352);
    header.quatern_c = fields.f32(360);
    header.quatern_d = fields.f32(368);
    header.quatern_x = fields.f32(376);
    header.quatern_y = fields.f32(384);
    header.quatern_z = fields.f32(392);
    for (row, at) in [
        (&mut header.srow_x, 400),
        (&mut header.srow_y, 432),
        (&mut header.srow_z, 464),
    ] {
        for (c, v) in row.iter_mut().enumerate() {
            *v = fields.f32(at + 8 * c);
        }
    }
    header.slice_code = fields.i32(496) as u8;
    header.xyzt_units = fields.i32(500) as u8;
    header.intent_code = fields.i32(504) as i16;
    header.intent_name = fields.raw(508);
    header.dim_info = fields.bytes[524];
    header.magic = *b"n+1\0";
    header.endianness = if fields.big {
        Endianness::Big
    } else {
        Endianness::Little
    };
    header
}

/// Decodes a volume, streaming: the header is read and checked first (size limit, datatype), then
/// exactly the voxel bytes it promises are inflated, and at most a small slack beyond to check a
/// gzip trailer. A gzip bomb is refused from its header or cut off after the bytes the header
/// accounts for, so memory stays bounded by the voxel limit, not by the file.
pub(crate) fn read_raw_volume(path: &Path) -> Result<RawVolume, DataError> {
    let (mut stream, file_length) = open_stream(path)?;
    let info = read_header_from(path, &mut *stream)?;
    let payload = read_payload(path, &mut *stream, &info, file_length)?;
    let header = info.header;
    let big = header.endianness == Endianness::Big;
    let data = decode_voxels(&payload, header.datatype, big);
    drop(payload);
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    let data =
        if slope != 0.0 && slope.is_finite() && inter.is_finite() && (slope, inter) != (1.0, 0.0) {
            data.into_iter().map(|v| v * slope + inter).collect()
        } else {
            data
        };
    Ok(RawVolume {
        header,
        dims: info.dims,
        data,
    })
}

/// The voxel bytes `info` promises, from `stream` just past the header (`file_length`: the
/// uncompressed file's length, `None` for gzip); then the gzip trailer, to check its CRC.
fn read_payload(
    path: &Path,
    stream: &mut dyn Read,
    info: &HeaderInfo,
    file_length: Option<u64>,
) -> Result<Vec<u8>, DataError> {
    let truncated = |got: u64| DataError::TruncatedData {
        case: String::new(),
        file: path.to_path_buf(),
        expected: info.data_bytes,
        got,
    };
    // An uncompressed file's length says at once whether the data is all there.
    if let Some(length) = file_length {
        let available = length.saturating_sub(info.vox_offset);
        if available < info.data_bytes {
            return Err(truncated(available));
        }
    }
    let skip = info.vox_offset.saturating_sub(info.header_bytes);
    let skipped = std::io::copy(&mut (&mut *stream).take(skip), &mut std::io::sink())
        .map_err(|e| gzip_error(path, &e))?;
    if skipped < skip {
        return Err(truncated(0));
    }
    // Capacity is reserved, not touched: resident memory grows only as bytes arrive, so a file
    // that ends early costs only what it holds.
    let mut payload = Vec::new();
    payload
        .try_reserve_exact(info.data_bytes as usize)
        .map_err(|_| DataError::TooLarge {
            case: String::new(),
            file: path.to_path_buf(),
            dims: info.dims.iter().map(|&d| d as u64).collect(),
            limit: max_voxels(),
        })?;
    read_up_to(path, stream, info.data_bytes, &mut payload)?;
    if (payload.len() as u64) < info.data_bytes {
        return Err(truncated(payload.len() as u64));
    }
    if file_length.is_none() {
        // Reaching the gzip trailer checks the CRC of what was read; a longer tail is ignored.
        std::io::copy(
            &mut (&mut *stream).take(GZIP_TRAILER_SLACK),
            &mut std::io::sink(),
        )
        .map_err(|e| gzip_error(path, &e))?;
    }
    Ok(payload)
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
    header_key_and_dims(h, &mut out);
    data_history(h, &mut out);
    debug_assert_eq!(out.len(), NIFTI1_HEADER_SIZE);
    out
}

fn i16s(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn f32s(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The header's first two sections (bytes 0-147): `header_key` and `image_dimension`.
fn header_key_and_dims(h: &NiftiHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(&(NIFTI1_HEADER_SIZE as i32).to_le_bytes());
    out.extend_from_slice(&h.data_type);
    out.extend_from_slice(&h.db_name);
    out.extend_from_slice(&h.extents.to_le_bytes());
    i16s(out, h.session_error);
    out.push(h.regular);
    out.push(h.dim_info);
    for d in h.dim {
        out.extend_from_slice(&d.to_le_bytes());
    }
    f32s(out, h.intent_p1);
    f32s(out, h.intent_p2);
    f32s(out, h.intent_p3);
    i16s(out, h.intent_code);
    i16s(out, h.datatype);
    i16s(out, h.bitpix);
    i16s(out, h.slice_start);
    for p in h.pixdim {
        f32s(out, p);
    }
    f32s(out, h.vox_offset);
    f32s(out, h.scl_slope);
    f32s(out, h.scl_inter);
    i16s(out, h.slice_end);
    out.push(h.slice_code);
    out.push(h.xyzt_units);
    f32s(out, h.cal_max);
    f32s(out, h.cal_min);
    f32s(out, h.slice_duration);
    f32s(out, h.toffset);
    out.extend_from_slice(&h.glmax.to_le_bytes());
    out.extend_from_slice(&h.glmin.to_le_bytes());
}

/// The last section (bytes 148-347): `data_history` (description, orientation) and the magic.
fn data_history(h: &NiftiHeader, out: &mut Vec<u8>) {
    let mut descrip = [0u8; 80];
    let n = h.descrip.len().min(80);
    descrip[..n].copy_from_slice(&h.descrip[..n]);
    out.extend_from_slice(&descrip);
    out.extend_from_slice(&h.aux_file);
    i16s(out, h.qform_code);
    i16s(out, h.sform_code);
    for v in [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ] {
        f32s(out, v);
    }
    for row in [h.srow_x, h.srow_y, h.srow_z] {
        for v in row {
            f32s(out, v);
        }
    }
    out.extend_from_slice(&h.intent_name);
    out.extend_from_slice(b"n+1\0");
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
    write_label_volume_as(path, labels_internal, reference, OutputLabels::Brats2021)
}

/// [`write_label_volume`] in the label numbering `labels` asks for.
pub fn write_label_volume_as(
    path: &Path,
    labels_internal: &ArrayView3<u8>,
    reference: &NiftiHeader,
    labels: OutputLabels,
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
    let values = labels_internal.mapv(|class| labels.value_of(class));
    let mut h = reference.clone();
    h.set_description_str(format!("CGGM Studio segmentation ({})", labels.describe()))
        .ok();
    write_volume_u8(path, &values.view(), &h)
}
