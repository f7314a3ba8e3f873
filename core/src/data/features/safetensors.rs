//! A minimal safetensors reader that parses the header first and reads only the tensors asked for
//! (a feature file may hold gigabytes; validation streams it in chunks). Format:
//! <https://github.com/huggingface/safetensors>: an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the raw little-endian bytes.

use super::FeatureError;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Element types the feature format accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    F16,
    I64,
    I32,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Self::F32,
            "F64" => Self::F64,
            "F16" => Self::F16,
            "I64" => Self::I64,
            "I32" => Self::I32,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64 | Self::F16)
    }

    fn decode(self, bytes: &[u8]) -> f64 {
        match self {
            Self::F32 => f32::from_le_bytes(bytes.try_into().expect("4 bytes")) as f64,
            Self::F64 => f64::from_le_bytes(bytes.try_into().expect("8 bytes")),
            Self::F16 => half_to_f64(u16::from_le_bytes(bytes.try_into().expect("2 bytes"))),
            Self::I64 => i64::from_le_bytes(bytes.try_into().expect("8 bytes")) as f64,
            Self::I32 => i32::from_le_bytes(bytes.try_into().expect("4 bytes")) as f64,
        }
    }
}

/// IEEE 754 half precision to f64 (subnormals, infinities and NaN included).
fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The header of one safetensors file, checked against the file's size.
#[derive(Debug)]
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// Headers larger than this are not feature files (safetensors itself caps them at 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// A file's parsed JSON header, with what checking its tensors needs.
struct Header<'a> {
    path: &'a Path,
    json: serde_json::Map<String, serde_json::Value>,
    /// Where the tensors' bytes start (their offsets count from here).
    data_start: u64,
    file_len: u64,
}

impl<'a> Header<'a> {
    fn bad(&self, problem: String) -> FeatureError {
        file_problem(self.path, problem)
    }

    /// The 8-byte length, then that many bytes of JSON, checked against the file's size.
    fn read(path: &'a Path) -> Result<Self, FeatureError> {
        let bad = |problem: String| file_problem(path, problem);
        let mut file = File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            bad("it is shorter than a safetensors header (8 bytes): the file is truncated or not safetensors; write it again (scripts/import-features.py)".into())
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(bad(format!(
                "its header claims {header_len} bytes but the file has {file_len}: the file is truncated or not safetensors; write it again"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("reading the header: {e}")))?;
        let json = serde_json::from_slice(&header).map_err(|e| {
            bad(format!(
                "its header is not valid JSON ({e}): the file is not safetensors"
            ))
        })?;
        Ok(Self {
            path,
            json,
            data_start: 8 + header_len,
            file_len,
        })
    }

    /// Tensor `name`'s entry: a known dtype, a shape and two offsets whose range holds exactly
    /// the shape's bytes, inside the file.
    fn tensor(&self, name: &str, value: &serde_json::Value) -> Result<TensorInfo, FeatureError> {
        let dtype_name = value["dtype"].as_str().unwrap_or("?");
        let dtype = Dtype::parse(dtype_name).ok_or_else(|| {
            self.bad(format!(
                "tensor {name:?} has dtype {dtype_name}; feature files hold F32, F64 or F16 features and I64, I32 or F32 labels: convert it"
            ))
        })?;
        let shape: Option<Vec<usize>> = value["shape"].as_array().map(|a| {
            a.iter()
                .filter_map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        });
        let offsets: Option<Vec<u64>> = value["data_offsets"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Err(self.bad(format!(
                "tensor {name:?} has no valid shape or data_offsets in the header"
            )));
        };
        let [begin, end] = offsets[..] else {
            return Err(self.bad(format!(
                "tensor {name:?}: data_offsets must hold two numbers"
            )));
        };
        let info = TensorInfo {
            dtype,
            begin: self.data_start + begin,
            end: self.data_start + end,
            shape,
        };
        let expected = (info.numel() * dtype.size()) as u64;
        if end < begin || end - begin != expected {
            return Err(self.bad(format!(
                "tensor {name:?} claims shape {:?} of {dtype_name} ({expected} bytes) but its data range holds {} bytes: the header lies; write the file again",
                info.shape,
                end.saturating_sub(begin)
            )));
        }
        if info.end > self.file_len {
            return Err(self.bad(format!(
                "tensor {name:?} ends at byte {} but the file has {}: the file is truncated; copy or write it again",
                info.end, self.file_len
            )));
        }
        Ok(info)
    }
}

fn file_problem(path: &Path, problem: String) -> FeatureError {
    FeatureError::File {
        path: path.to_path_buf(),
        problem,
    }
}

impl SafetensorsFile {
    /// Reads and checks the header only: every tensor's byte range must fit its dtype and shape
    /// and lie inside the file (a truncated file or a lying header is reported here).
    pub fn open(path: &Path) -> Result<Self, FeatureError> {
        let header = Header::read(path)?;
        let mut tensors = BTreeMap::new();
        for (name, value) in &header.json {
            if name == "__metadata__" {
                continue;
            }
            let info = header.tensor(name, value)?;
            tensors.insert(name.clone(), info);
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Streams tensor `name` in chunks of about 4 MB, handing each chunk's values (as f64) to
    /// `visit` together with the index of its first element.
    pub fn for_each_chunk(
        &self,
        name: &str,
        mut visit: impl FnMut(usize, &[f64]) -> Result<(), FeatureError>,
    ) -> Result<(), FeatureError> {
        let info = self.tensors.get(name).ok_or_else(|| FeatureError::File {
            path: self.path.clone(),
            problem: format!("it holds no tensor {name:?}"),
        })?;
        let io = |e: std::io::Error| FeatureError::File {
            path: self.path.clone(),
            problem: format!("reading tensor {name:?}: {e}"),
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(info.begin)).map_err(io)?;
        let size = info.dtype.size();
        let per_chunk = (4 << 20) / size;
        let mut buf = vec![0u8; per_chunk * size];
        let mut values = Vec::with_capacity(per_chunk);
        let mut done = 0usize;
        let total = info.numel();
        while done < total {
            let n = per_chunk.min(total - done);
            file.read_exact(&mut buf[..n * size]).map_err(io)?;
            values.clear();
            values.extend(
                buf[..n * size]
                    .chunks_exact(size)
                    .map(|b| info.dtype.decode(b)),
            );
            visit(done, &values)?;
            done += n;
        }
        Ok(())
    }

    /// Reads tensor `name` whole as f32 values (row-major).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, FeatureError> {
        let mut out = Vec::with_capacity(self.info(name).map_or(0, |i| i.numel()));
        self.for_each_chunk(name, |_, v| {
            out.extend(v.iter().map(|x| *x as f32));
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads tensor `name` whole as f64 values.
    pub fn read_f64(&self, name: &str) -> Result<Vec<f64>, FeatureError> {
        let mut out = Vec::with_capacity(self.info(name).map_or(0, |i| i.numel()));
        self.for_each_chunk(name, |_, v| {
            out.extend_from_slice(v);
            Ok(())
        })?;
        Ok(out)
    }
}

/// The values of one tensor to write.
pub enum Values<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

impl Values<'_> {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }
}

/// Writes `tensors` (name, shape, values; row-major, little-endian) as one safetensors file,
/// atomically. The format: an 8-byte header length, a JSON header of dtype/shape/offsets per tensor,
/// then the bytes.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &[usize], Values)]) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    let mut body = Vec::new();
    for (name, shape, values) in tensors {
        anyhow::ensure!(
            shape.iter().product::<usize>() == values.len(),
            "tensor {name}: shape {shape:?} does not hold {} values",
            values.len()
        );
        let start = body.len();
        let dtype = match values {
            Values::F32(v) => {
                v.iter()
                    .for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
                "F32"
            }
            Values::I64(v) => {
                v.iter()
                    .for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
                "I64"
            }
        };
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [start, body.len()] }),
        );
    }
    let header = serde_json::to_vec(&header)?;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&body);
    crate::atomic::write_bytes_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_decodes_known_values() {
        assert_eq!(half_to_f64(0x3c00), 1.0);
        assert_eq!(half_to_f64(0xc000), -2.0);
        assert!(half_to_f64(0x7c00).is_infinite());
        assert!(half_to_f64(0x7e00).is_nan());
    }
}
