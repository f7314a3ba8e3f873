//! TensorBoard event files: `events.out.tfevents.<time>.<host>.<pid>` in the run's folder, as
//! TFRecords (length, masked CRC-32C of the length, data, masked CRC-32C of the data) of
//! `tensorflow.Event` protobuf messages: first `file_version: "brain.Event:2"`, then one Event per
//! step (or validation, or test) whose summary holds that moment's scalars. The few messages and
//! fields are written by hand as prost messages (field numbers from TensorFlow's event.proto and
//! summary.proto): no protoc, no TensorFlow.

use anyhow::{Context, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tensorflow.Event` (event.proto): `wall_time = 1`, `step = 2`, and of the `what` oneof
/// `file_version = 3` and `summary = 5`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TfEvent {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary` (summary.proto): `repeated Value value = 1`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: `tag = 1` and, of the `value` oneof, `simple_value = 2` (optional
/// so that a 0.0 is still written: a value without its oneof set is no scalar to TensorBoard).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: a record is a few hundred
/// bytes, so a table buys nothing here.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC: a CRC of data that holds CRCs would be weak, so it is rotated and
/// offset.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: u64 length (little endian), masked CRC of those 8 bytes, the data, its masked CRC.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The machine's name for the file name, as TensorFlow writes it (without `gethostname`, which
/// would need unsafe code).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// An open events file.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// A write failed once (warned); the rest is dropped rather than warned about every step.
    broken: bool,
}

impl EventWriter {
    /// A new events file in `dir` (created), with its `file_version` record written and flushed.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "--tensorboard: cannot create the folder {}: give a folder this user may write",
                dir.display()
            )
        })?;
        let now = cggm_core::events::now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{}.{}",
            now as u64,
            host_name(),
            std::process::id()
        ));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("--tensorboard: cannot create {}", path.display()))?;
        let mut writer = Self {
            file: std::io::BufWriter::new(file),
            path,
            broken: false,
        };
        writer.write(&TfEvent {
            wall_time: now,
            file_version: Some("brain.Event:2".into()),
            ..TfEvent::default()
        });
        writer.flush();
        if writer.broken {
            anyhow::bail!("--tensorboard: cannot write {}", writer.path.display());
        }
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One Event holding `scalars` (tag, value) at `step`.
    pub fn scalars(&mut self, wall_time: f64, step: i64, scalars: &[(String, f64)]) {
        if scalars.is_empty() {
            return;
        }
        let value = scalars
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
            })
            .collect();
        self.write(&TfEvent {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary { value }),
        });
    }

    fn write(&mut self, event: &TfEvent) {
        if self.broken {
            return;
        }
        if let Err(e) = self.file.write_all(&tfrecord(&event.encode_to_vec())) {
            self.fail(e);
        }
    }

    /// Makes what was written visible to a TensorBoard watching the folder.
    pub fn flush(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.file.flush() {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.broken = true;
        eprintln!(
            "warning: TensorBoard: writing {} failed ({e}); training goes on without TensorBoard logging",
            self.path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value (RFC 3720, B.4: "123456789").
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn a_tfrecord_frames_its_data_with_masked_crcs() {
        let data = b"brain.Event:2";
        let record = tfrecord(data);
        assert_eq!(record.len(), 8 + 4 + data.len() + 4);
        assert_eq!(&record[..8], &(data.len() as u64).to_le_bytes());
        let len_crc = u32::from_le_bytes(record[8..12].try_into().unwrap());
        // The mask as TFRecord's format spells it, not as the code under test computes it.
        #[allow(clippy::manual_rotate)]
        let mask = |c: u32| ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(len_crc, mask(crc32c(&record[..8])));
        assert_eq!(&record[12..12 + data.len()], data);
        let data_crc = u32::from_le_bytes(record[12 + data.len()..].try_into().unwrap());
        assert_eq!(data_crc, mask(crc32c(data)));
    }

    #[test]
    fn a_zero_scalar_is_still_written() {
        let event = TfEvent {
            wall_time: 1.0,
            step: 0,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "loss".into(),
                    simple_value: Some(0.0),
                }],
            }),
        };
        let back = TfEvent::decode(event.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.summary.unwrap().value[0].simple_value, Some(0.0));
    }
}
