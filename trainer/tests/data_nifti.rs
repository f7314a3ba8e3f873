//! NIfTI input/output checked against nibabel, and every file-level error path.

mod data_common;

use std::path::{Path, PathBuf};

use cggm_trainer::data::{header_affine, read_volume, write_label_volume, DataError};
use data_common::run_python;
use ndarray::{Array3, ShapeBuilder};
use serde_json::Value;

/// nibabel writes one volume per datatype (some gzipped, one big-endian, one scaled) with a
/// rotated affine, and records what it reads back itself: the oracle for our reader.
const WRITE_DTYPES: &str = r#"
import sys, json, struct, numpy as np, nibabel as nib
out = sys.argv[1]
shape = (5, 4, 3)
affine = np.array([[0.0, -1.2, 0.0, 10.5], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 3.25], [0, 0, 0, 1]])
manifest = []
cases = [("uint8", "nii.gz", "<", None), ("int16", "nii", "<", None), ("int16", "nii.gz", ">", None),
         ("int32", "nii.gz", "<", None), ("float32", "nii", "<", None), ("float64", "nii.gz", "<", None),
         ("int16", "nii", "<", (2.5, -3.0))]
for i, (dtype, ext, endian, scale) in enumerate(cases):
    base = np.arange(np.prod(shape)).reshape(shape, order="F")
    if dtype in ("float32", "float64"):
        data = (base * 0.37 - 5.1).astype(dtype)
    elif dtype == "uint8":
        data = (base * 4 % 256).astype(dtype)
    else:
        data = (base * 97 - 2000).astype(dtype)
    header = nib.Nifti1Header(endianness=endian)
    img = nib.Nifti1Image(data, affine, header)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    path = f"{out}/vol{i}_{dtype}.{ext}"
    nib.save(img, path)
    if scale is not None:
        with open(path, "r+b") as f:
            f.seek(112)
            f.write(struct.pack("<ff", *scale))
    back = nib.load(path)
    manifest.append({"file": path, "dtype": dtype, "shape": list(back.shape),
                     "affine": back.affine[:3].tolist(),
                     "values": np.asarray(back.get_fdata(), dtype=np.float64).ravel(order="F").tolist()})
print(json.dumps(manifest))
"#;

#[test]
fn every_supported_datatype_reads_like_nibabel() {
    let dir = tempfile::tempdir().unwrap();
    let manifest: Value = serde_json::from_str(&run_python(WRITE_DTYPES, &[dir.path()])).unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 7);
    for entry in entries {
        let file = PathBuf::from(entry["file"].as_str().unwrap());
        let (header, volume) = read_volume(&file).unwrap_or_else(|e| panic!("{e}"));
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(volume.shape(), shape.as_slice(), "{}", file.display());
        let expected: Vec<f64> = entry["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let ours: Vec<f32> = volume.t().iter().copied().collect();
        for (a, b) in ours.iter().zip(&expected) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}: {a} != {b}",
                file.display()
            );
        }
        let affine = header_affine(&header);
        let oracle = entry["affine"].as_array().unwrap();
        for r in 0..3 {
            for c in 0..4 {
                let want = oracle[r][c].as_f64().unwrap();
                assert!(
                    (affine[r][c] - want).abs() < 1e-4,
                    "{} affine[{r}][{c}]",
                    file.display()
                );
            }
        }
    }
}

const REFERENCE_IMAGE: &str = r#"
import sys, numpy as np, nibabel as nib
qform = np.array([[-1.0, 0, 0, 119.5], [0, -1.0, 0, 100.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])
sform = np.array([[-1.0, 0.05, 0, 119.0], [0, -1.0, 0, 101.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])
img = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4)).astype(np.float32), sform)
img.set_qform(qform, code=1)
img.set_sform(sform, code=2)
img.header.set_xyzt_units("mm", "sec")
nib.save(img, sys.argv[1])
"#;

const DESCRIBE_LABEL: &str = r#"
import sys, json, numpy as np, nibabel as nib
out = {}
for key, path in (("reference", sys.argv[1]), ("written", sys.argv[2])):
    img = nib.load(path)
    q, qcode = img.header.get_qform(coded=True)
    s, scode = img.header.get_sform(coded=True)
    out[key] = {"shape": list(img.shape), "dtype": str(img.get_data_dtype()), "qform": q.tolist(),
                "qcode": int(qcode), "sform": s.tolist(), "scode": int(scode),
                "zooms": [float(z) for z in img.header.get_zooms()[:3]],
                "units": list(img.header.get_xyzt_units()),
                "values": np.asarray(img.dataobj).ravel(order="F").tolist()}
print(json.dumps(out))
"#;

fn written_label_is_read_by_nibabel_with_reference_geometry(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let reference_path = dir.path().join("reference.nii.gz");
    run_python(REFERENCE_IMAGE, &[&reference_path]);
    let (reference, _) = read_volume(&reference_path).unwrap();
    let labels = Array3::from_shape_fn((6, 5, 4), |(x, y, z)| ((x + 2 * y + 3 * z) % 4) as u8);
    let written = dir.path().join(name);
    write_label_volume(&written, &labels.view(), &reference).unwrap();

    let report: Value =
        serde_json::from_str(&run_python(DESCRIBE_LABEL, &[&reference_path, &written])).unwrap();
    let (r, w) = (&report["reference"], &report["written"]);
    assert_eq!(w["shape"], serde_json::json!([6, 5, 4]));
    assert_eq!(w["dtype"], "uint8");
    for key in ["qform", "qcode", "sform", "scode", "zooms", "units"] {
        assert_eq!(r[key], w[key], "{key} differs");
    }
    let expected: Vec<u64> = labels
        .t()
        .iter()
        .map(|&c| if c == 3 { 4 } else { c as u64 })
        .collect();
    let values: Vec<u64> = w["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(values, expected, "BraTS values 0/1/2/4 in NIfTI order");
}

#[test]
fn label_volume_gz_keeps_reference_qform_sform_and_brats_values() {
    written_label_is_read_by_nibabel_with_reference_geometry("seg.nii.gz");
}

#[test]
fn label_volume_uncompressed_keeps_reference_geometry() {
    written_label_is_read_by_nibabel_with_reference_geometry("seg.nii");
}

#[test]
fn label_volume_rejects_values_outside_the_internal_classes() {
    let dir = tempfile::tempdir().unwrap();
    let header = cggm_trainer::data::synth::synthetic_header([4, 4, 4]);
    let labels = Array3::from_elem((4, 4, 4), 7u8);
    let err =
        write_label_volume(&dir.path().join("x.nii.gz"), &labels.view(), &header).unwrap_err();
    assert!(matches!(err, DataError::BadLabelValues { .. }), "{err}");
    assert!(!dir.path().join("x.nii.gz").exists());
}

fn small_valid_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let header = cggm_trainer::data::synth::synthetic_header([8, 8, 8]);
    let data = Array3::from_shape_vec((8, 8, 8).f(), (0..512).map(|v| (v % 300) as i16).collect())
        .unwrap();
    cggm_trainer::data::write_volume_i16(&path, &data.view(), &header).unwrap();
    path
}

#[test]
fn a_text_file_is_reported_as_not_nifti() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.nii");
    std::fs::write(
        &path,
        "this is a text file, certainly not a NIfTI volume at all",
    )
    .unwrap();
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::NotNifti { .. }), "{err}");
    assert!(err.to_string().contains("notes.nii"));
}

/// nibabel writes NIfTI-2 (gzipped float32 with a rotated affine, and plain big-endian int16) and
/// records what it reads back: our reader must agree on shape, values and affine.
const WRITE_NIFTI2: &str = r#"
import sys, json, numpy as np, nibabel as nib
out = sys.argv[1]
affine = np.array([[0.0, -1.2, 0.0, 10.5], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 3.25], [0, 0, 0, 1]])
manifest = []
for name, dtype, endian in [("two.nii.gz", "float32", "<"), ("two_be.nii", "int16", ">")]:
    data = (np.arange(5 * 4 * 3).reshape((5, 4, 3), order="F") * 3 - 17).astype(dtype)
    img = nib.Nifti2Image(data, affine, nib.Nifti2Header(endianness=endian))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    nib.save(img, f"{out}/{name}")
    back = nib.load(f"{out}/{name}")
    assert back.header.sizeof_hdr == 540
    manifest.append({"file": f"{out}/{name}", "shape": list(back.shape),
                     "affine": back.affine[:3].tolist(),
                     "values": np.asarray(back.get_fdata(), dtype=np.float64).ravel(order="F").tolist()})
print(json.dumps(manifest))
"#;

#[test]
fn nifti2_files_read_like_nibabel_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let manifest: Value = serde_json::from_str(&run_python(WRITE_NIFTI2, &[dir.path()])).unwrap();
    for entry in manifest.as_array().unwrap() {
        let file = PathBuf::from(entry["file"].as_str().unwrap());
        let (header, volume) = read_volume(&file).unwrap_or_else(|e| panic!("{e}"));
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(volume.shape(), &shape[..], "{}", file.display());
        let expected: Vec<f64> = entry["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got: Vec<f64> = volume.t().iter().map(|&v| v as f64).collect();
        assert_eq!(got, expected, "{}", file.display());
        let affine = header_affine(&header);
        for (r, row) in entry["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                let want = v.as_f64().unwrap();
                assert!(
                    (affine[r][c] - want).abs() < 1e-5,
                    "{}: affine[{r}][{c}] = {} but nibabel says {want}",
                    file.display(),
                    affine[r][c]
                );
            }
        }
    }
}

#[test]
fn truncated_gzip_is_reported_as_corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_valid_file(dir.path(), "cut.nii.gz");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err}");
}

#[test]
fn damaged_gzip_bytes_are_reported_as_corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_valid_file(dir.path(), "flipped.nii.gz");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 8] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = read_volume(&path).unwrap_err();
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err}");
}

#[test]
fn truncated_uncompressed_data_is_reported_with_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_valid_file(dir.path(), "short.nii");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = read_volume(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TruncatedData {
                expected: 1024,
                got: 924,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn complex_datatype_is_reported_as_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("complex.nii.gz");
    run_python(
        "import sys, numpy as np, nibabel as nib; nib.save(nib.Nifti1Image(np.ones((4,4,4), np.complex64), np.eye(4)), sys.argv[1])",
        &[&path],
    );
    let err = read_volume(&path).unwrap_err();
    assert!(
        matches!(err, DataError::UnsupportedDatatype { code: 32, .. }),
        "{err}"
    );
}

#[test]
fn missing_file_is_an_io_error_naming_the_file() {
    let err = read_volume(Path::new("/nonexistent/BraTS2021_00000_flair.nii.gz")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("BraTS2021_00000_flair.nii.gz"));
}
