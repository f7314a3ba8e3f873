//! Hostile NIfTI files: gzip bombs, lying headers, huge constant volumes, truncated data. The
//! reader refuses them from the header, or reads exactly the bytes the header accounts for, so
//! they cost neither memory nor time (the peak memory is measured in the README's table with
//! `/usr/bin/time -v cggm validate`, not asserted here).

use std::io::Write;
use std::path::{Path, PathBuf};

use cggm_trainer::data::{max_voxels, read_header, read_volume, DataError};
use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::{Array3, ShapeBuilder};

/// A valid uncompressed NIfTI-1 header (352 bytes with the extension flag) for a uint8 volume of
/// `dims`, taken from a file our writer made, with its dimensions patched.
fn header_claiming(dims: [u16; 3]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.nii");
    let header = cggm_trainer::data::synth::synthetic_header([2, 2, 2]);
    let data = Array3::from_shape_vec((2, 2, 2).f(), vec![1u8; 8]).unwrap();
    cggm_trainer::data::write_volume_u8(&path, &data.view(), &header).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(352);
    for (i, d) in dims.iter().enumerate() {
        // dim[1..=3] are int16 at byte 42, 44, 46.
        bytes[42 + 2 * i..44 + 2 * i].copy_from_slice(&(*d as i16).to_le_bytes());
    }
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `header` in one gzip member, then `members` members of 16 MiB of zeros each: about 16 KiB of
/// file per 16 MiB inflated (several gzip members are legal, and `MultiGzDecoder` reads them all).
fn write_bomb(path: &Path, header: &[u8], members: usize) {
    let zeros = gzip(&vec![0u8; 16 << 20]);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(&gzip(header)).unwrap();
    for _ in 0..members {
        file.write_all(&zeros).unwrap();
    }
    file.flush().unwrap();
}

fn temp_file(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn a_gzip_bomb_whose_header_claims_1500_cubed_voxels_is_refused_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "bomb_flair.nii.gz");
    // 3 MB on disk, 3.2 GB inflated: the bomb.
    write_bomb(&path, &header_claiming([1500, 1500, 1500]), 200);
    assert!(std::fs::metadata(&path).unwrap().len() < 8 << 20);
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::TooLarge { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("[1500, 1500, 1500]") && message.contains("CGGM_MAX_VOXELS"),
        "{message}"
    );
}

#[test]
fn a_gzip_bomb_behind_a_small_header_inflates_only_the_voxels_the_header_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "tail_bomb_t1.nii.gz");
    // 64^3 voxels promised, 3.2 GB of zeros behind them: the reader stops after 256 KiB (plus a
    // small slack), so this reads in milliseconds instead of inflating gigabytes.
    write_bomb(&path, &header_claiming([64, 64, 64]), 200);
    let (_, volume) = read_volume(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(volume.shape(), &[64, 64, 64]);
    assert!(volume.iter().all(|&v| v == 0.0));
}

#[test]
fn a_lying_20000_cubed_header_is_refused_before_reading_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "liar_t2.nii");
    std::fs::write(&path, header_claiming([20000, 20000, 20000])).unwrap();
    let err = read_header(&path).map(|_| ()).unwrap_err();
    assert!(matches!(err, DataError::TooLarge { .. }), "{err}");
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::TooLarge { .. }), "{err}");
}

#[test]
fn a_1024_cubed_constant_volume_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "constant_t1ce.nii.gz");
    // A genuine file (header + 1 GiB of ones, as 64 gzip members of 16 MiB) of about 1 MB.
    let ones = gzip(&vec![1u8; 16 << 20]);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    file.write_all(&gzip(&header_claiming([1024, 1024, 1024])))
        .unwrap();
    for _ in 0..64 {
        file.write_all(&ones).unwrap();
    }
    file.flush().unwrap();
    assert!(1024u64.pow(3) > max_voxels());
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::TooLarge { .. }), "{err}");
}

#[test]
fn a_header_promising_more_than_the_gzip_stream_holds_is_reported_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "short_flair.nii.gz");
    // 400^3 (within the limit) promised, 1 MiB present.
    let mut bytes = header_claiming([400, 400, 400]);
    bytes.extend(vec![7u8; 1 << 20]);
    std::fs::write(&path, gzip(&bytes)).unwrap();
    let err = read_volume(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TruncatedData {
                expected: 64_000_000,
                got: 1_048_576,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_vox_offset_far_beyond_the_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(&dir, "offset_flair.nii.gz");
    let mut bytes = header_claiming([4, 4, 4]);
    // vox_offset (float32 at byte 108) pointing 1 GB into the stream.
    bytes[108..112].copy_from_slice(&1.0e9f32.to_le_bytes());
    write_bomb(&path, &bytes, 2);
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
    assert!(err.to_string().contains("vox_offset"), "{err}");
}
