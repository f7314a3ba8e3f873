//! Dataset layouts, case validation errors, case assembly for inference, and splits.

mod data_common;

use std::path::{Path, PathBuf};

use cggm_trainer::data::synth::synthetic_header;
use cggm_trainer::data::{
    case_from_paths, discover, load_study, split_cases, split_from_file, validate_dataset,
    write_volume_i16, write_volume_u8, CaseFiles, CaseSource, DataError, Layout, Modality,
};
use data_common::{case_file, run_python, tiny_dataset};
use ndarray::Array3;

fn problem_for<'a>(report: &'a cggm_trainer::data::DiscoveryReport, case: &str) -> &'a DataError {
    &report
        .problems
        .iter()
        .find(|p| p.case == case)
        .unwrap_or_else(|| panic!("no problem reported for {case}: {:?}", report.problems))
        .error
}

fn case_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn synthetic_brats_dataset_is_discovered_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 3, 1);
    let report = validate_dataset(dir.path());
    assert_eq!(report.layout, Layout::BraTS2021);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let ids: Vec<&str> = report.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    );

    let study = load_study(&report.cases[0]).unwrap();
    assert_eq!(study.images.shape(), [4, 32, 32, 16]);
    let label = study.label.as_ref().unwrap();
    assert!(label.iter().all(|&l| l <= 3));
    assert!(label.iter().any(|&l| l != 0), "the phantom has a tumour");
    assert!((study.voxel_volume_ml - 0.001).abs() < 1e-9);
    // z-scored over the brain, background exactly 0.
    for m in Modality::ALL {
        let channel = study.images.index_axis(ndarray::Axis(0), m.index());
        let brain: Vec<f32> = channel.iter().copied().filter(|v| *v != 0.0).collect();
        let mean = brain.iter().map(|v| *v as f64).sum::<f64>() / brain.len() as f64;
        let var = brain
            .iter()
            .map(|v| (*v as f64 - mean).powi(2))
            .sum::<f64>()
            / brain.len() as f64;
        assert!(
            mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-3,
            "{m}: {mean} {var}"
        );
    }
    // The flair file of case 0 is the first modality: a corner voxel is background.
    let (_, flair) = cggm_trainer::data::read_volume(&case_file(&cases[0], "flair")).unwrap();
    assert_eq!(flair[[0, 0, 0]], 0.0);
    assert_eq!(study.images[[0, 0, 0, 0]], 0.0);
}

#[test]
fn synthetic_dataset_matches_nibabel_shapes_affines_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 1, 2);
    let out = run_python(
        r#"
import sys, json, numpy as np, nibabel as nib
res = {}
for path in sys.argv[1:]:
    img = nib.load(path)
    res[path] = {"shape": list(img.shape), "dtype": str(img.get_data_dtype()),
                 "affine": img.affine[:3].tolist(), "unique": sorted(np.unique(np.asarray(img.dataobj)).tolist())}
print(json.dumps(res))
"#,
        &[
            &case_file(&cases[0], "flair"),
            &case_file(&cases[0], "t1ce"),
            &case_file(&cases[0], "seg"),
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (path, info) in report.as_object().unwrap() {
        let (header, volume) = cggm_trainer::data::read_volume(Path::new(path)).unwrap();
        assert_eq!(info["shape"], serde_json::json!(volume.shape()));
        let affine = cggm_trainer::data::header_affine(&header);
        for r in 0..3 {
            for c in 0..4 {
                assert!((info["affine"][r][c].as_f64().unwrap() - affine[r][c]).abs() < 1e-5);
            }
        }
        if path.ends_with("_seg.nii.gz") {
            assert_eq!(info["dtype"], "uint8");
            let unique: Vec<u64> = info["unique"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(
                unique.iter().all(|v| [0, 1, 2, 4].contains(v)),
                "{unique:?}"
            );
        } else {
            assert_eq!(info["dtype"], "int16");
        }
    }
}

#[test]
fn missing_modality_is_reported_and_other_cases_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 3, 3);
    std::fs::remove_file(case_file(&cases[1], "t1ce")).unwrap();
    let report = discover(dir.path());
    assert_eq!(report.cases.len(), 2);
    let err = problem_for(&report, "BraTS2021_00001");
    assert!(
        matches!(
            err,
            DataError::MissingModality {
                modality: Modality::T1ce,
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("BraTS2021_00001") && message.contains("t1ce"),
        "{message}"
    );
}

#[test]
fn shape_mismatch_between_modalities_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 2, 4);
    let small = Array3::from_elem((30, 32, 16), 100i16);
    write_volume_i16(
        &case_file(&cases[0], "t1"),
        &small.view(),
        &synthetic_header([30, 32, 16]),
    )
    .unwrap();
    let report = validate_dataset(dir.path());
    assert_eq!(report.cases.len(), 1);
    let err = problem_for(&report, &case_name(&cases[0]));
    assert!(matches!(err, DataError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("_t1.nii.gz"));
}

#[test]
fn affine_mismatch_between_modalities_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 1, 5);
    let path = case_file(&cases[0], "t2");
    let (_, data) = cggm_trainer::data::read_volume(&path).unwrap();
    let data = data
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap()
        .mapv(|v| v as i16);
    let mut header = synthetic_header([32, 32, 16]);
    header.srow_x[3] += 5.0;
    write_volume_i16(&path, &data.view(), &header).unwrap();
    let err = load_study(&discover(dir.path()).cases[0]).unwrap_err();
    assert!(
        matches!(err, DataError::AffineMismatch { max_difference, .. } if (max_difference - 5.0).abs() < 1e-3),
        "{err}"
    );
}

#[test]
fn label_on_another_grid_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 1, 6);
    let label = Array3::<u8>::zeros((32, 32, 15));
    write_volume_u8(
        &case_file(&cases[0], "seg"),
        &label.view(),
        &synthetic_header([32, 32, 15]),
    )
    .unwrap();
    let err = load_study(&discover(dir.path()).cases[0]).unwrap_err();
    assert!(matches!(err, DataError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("_seg.nii.gz"));
}

#[test]
fn label_values_outside_brats_convention_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 1, 7);
    let mut label = Array3::<u8>::zeros((32, 32, 16));
    label[[3, 3, 3]] = 5;
    label[[4, 4, 4]] = 4;
    label[[5, 5, 5]] = 3;
    write_volume_u8(
        &case_file(&cases[0], "seg"),
        &label.view(),
        &synthetic_header([32, 32, 16]),
    )
    .unwrap();
    let err = load_study(&discover(dir.path()).cases[0]).unwrap_err();
    assert!(
        matches!(&err, DataError::BadLabelValues { values, .. } if values == &vec![5.0]),
        "{err}"
    );
}

#[test]
fn enhancing_written_as_3_or_4_maps_to_the_same_class() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 1, 8);
    let mut label = Array3::<u8>::zeros((32, 32, 16));
    label[[10, 10, 8]] = 3;
    label[[11, 10, 8]] = 4;
    label[[12, 10, 8]] = 1;
    label[[13, 10, 8]] = 2;
    write_volume_u8(
        &case_file(&cases[0], "seg"),
        &label.view(),
        &synthetic_header([32, 32, 16]),
    )
    .unwrap();
    let study = load_study(&discover(dir.path()).cases[0]).unwrap();
    let l = study.label.unwrap();
    assert_eq!(
        [
            l[[10, 10, 8]],
            l[[11, 10, 8]],
            l[[12, 10, 8]],
            l[[13, 10, 8]]
        ],
        [3, 3, 1, 2]
    );
}

#[test]
fn nan_and_4d_and_corrupt_files_are_reported_per_case() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 4, 9);
    // Case 0: NaN intensities in a float32 flair; case 1: 4-D t2; case 2: truncated gzip t1.
    run_python(
        r#"
import sys, numpy as np, nibabel as nib
ref = nib.load(sys.argv[1])
data = np.asarray(ref.dataobj).astype(np.float32)
data[5, 6, 7] = np.nan
data[6, 6, 7] = np.inf
nib.save(nib.Nifti1Image(data, ref.affine), sys.argv[1])
ref = nib.load(sys.argv[2])
four = np.stack([np.asarray(ref.dataobj)] * 2, axis=-1)
nib.save(nib.Nifti1Image(four, ref.affine), sys.argv[2])
"#,
        &[&case_file(&cases[0], "flair"), &case_file(&cases[1], "t2")],
    );
    let t1 = case_file(&cases[2], "t1");
    let bytes = std::fs::read(&t1).unwrap();
    std::fs::write(&t1, &bytes[..bytes.len() * 2 / 3]).unwrap();
    std::fs::write(case_file(&cases[3], "t1ce"), b"<html>not found</html>").unwrap();

    let report = validate_dataset(dir.path());
    assert!(report.cases.is_empty(), "{:?}", report.cases);
    let nan = problem_for(&report, "BraTS2021_00000");
    assert!(
        matches!(nan, DataError::NonFiniteIntensity { count: 2, first_voxel, .. } if first_voxel == &vec![5, 6, 7]),
        "{nan}"
    );
    let four = problem_for(&report, "BraTS2021_00001");
    assert!(matches!(four, DataError::NotThreeD { .. }), "{four}");
    let gz = problem_for(&report, "BraTS2021_00002");
    assert!(matches!(gz, DataError::CorruptGzip { .. }), "{gz}");
    assert!(gz.to_string().contains("case BraTS2021_00002"), "{gz}");
    let html = problem_for(&report, "BraTS2021_00003");
    assert!(
        matches!(
            html,
            DataError::CorruptGzip { .. } | DataError::NotNifti { .. }
        ),
        "{html}"
    );
}

/// A tiny MSD Task01 dataset: channel c of the image is non-zero only where x % 4 == c, so that
/// the channel → modality mapping is visible after z-scoring; labels 1, 2, 3 in known places.
const WRITE_MSD: &str = r#"
import sys, os, numpy as np, nibabel as nib
root = sys.argv[1]
os.makedirs(f"{root}/imagesTr"); os.makedirs(f"{root}/labelsTr")
rng = np.random.default_rng(0)
for case in ("BRATS_001", "BRATS_002"):
    img = np.zeros((12, 10, 6, 4), np.float32)
    for c in range(4):
        img[c::4, :, :, c] = rng.uniform(100, 200, size=img[c::4, :, :, c].shape)
    lab = np.zeros((12, 10, 6), np.uint8)
    lab[1, 1, 1] = 1; lab[2, 2, 2] = 2; lab[3, 3, 3] = 3
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), f"{root}/imagesTr/{case}.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), f"{root}/labelsTr/{case}.nii.gz")
open(f"{root}/imagesTr/._BRATS_001.nii.gz", "wb").write(b"macOS resource fork")
"#;

#[test]
fn msd_task01_layout_maps_channels_and_labels_to_the_internal_convention() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Task01_BrainTumour");
    run_python(WRITE_MSD, &[&root]);
    // Found from the task folder itself and from its parent.
    for start in [root.as_path(), dir.path()] {
        let report = validate_dataset(start);
        assert_eq!(report.layout, Layout::MsdTask01);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.cases.len(), 2);
    }
    let case = &discover(&root).cases[0];
    assert_eq!(case.id, "BRATS_001");
    assert!(matches!(
        &case.files,
        CaseFiles::Msd4d { label: Some(_), .. }
    ));
    let study = load_study(case).unwrap();
    assert_eq!(study.images.shape(), [4, 12, 10, 6]);
    // MSD channels: 0 FLAIR, 1 T1w, 2 T1gd, 3 T2w.
    for (modality, channel) in [
        (Modality::Flair, 0),
        (Modality::T1, 1),
        (Modality::T1ce, 2),
        (Modality::T2, 3),
    ] {
        for x in 0..12 {
            let non_zero = study.images[[modality.index(), x, 5, 3]] != 0.0;
            assert_eq!(non_zero, x % 4 == channel, "{modality} at x={x}");
        }
    }
    let label = study.label.unwrap();
    assert_eq!(
        [label[[1, 1, 1]], label[[2, 2, 2]], label[[3, 3, 3]]],
        [2, 1, 3],
        "1 oedema -> 2, 2 non-enhancing -> 1, 3 enhancing -> 3"
    );
}

#[test]
fn case_from_paths_accepts_brats_files_in_any_order_and_2023_names() {
    let dir = tempfile::tempdir().unwrap();
    let cases = tiny_dataset(dir.path(), 1, 10);
    let mut files: Vec<PathBuf> = ["t2", "seg", "flair", "t1", "t1ce"]
        .iter()
        .map(|s| case_file(&cases[0], s))
        .collect();
    let case = case_from_paths(&files).unwrap();
    assert_eq!(case.id, "BraTS2021_00000");
    let CaseFiles::Separate { images, label, .. } = &case.files else {
        panic!("expected separate files")
    };
    for m in Modality::ALL {
        assert!(images[m.index()]
            .to_string_lossy()
            .ends_with(&format!("_{}.nii.gz", m.name())));
    }
    assert!(label.is_some());
    assert!(load_study(&case).is_ok());

    // BraTS 2023 names: t2f, t1c, t1n, t2w.
    let renamed = dir.path().join("renamed");
    std::fs::create_dir(&renamed).unwrap();
    let mut new_files = Vec::new();
    for (old, new) in [
        ("flair", "t2f"),
        ("t1ce", "t1c"),
        ("t1", "t1n"),
        ("t2", "t2w"),
    ] {
        let target = renamed.join(format!("BraTS-GLI-00000-000-{new}.nii.gz"));
        std::fs::copy(case_file(&cases[0], old), &target).unwrap();
        new_files.push(target);
    }
    let case = case_from_paths(&new_files).unwrap();
    assert_eq!(case.id, "BraTS-GLI-00000-000");
    assert!(case.label_path().is_none());
    let from_folder = case_from_paths(std::slice::from_ref(&renamed)).unwrap();
    assert_eq!(from_folder.id, "renamed");

    files.retain(|f| !f.to_string_lossy().contains("_t1ce"));
    let err = case_from_paths(&files).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::MissingModality {
                modality: Modality::T1ce,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn case_from_paths_accepts_one_msd_image() {
    let dir = tempfile::tempdir().unwrap();
    run_python(WRITE_MSD, &[dir.path()]);
    let image = dir.path().join("imagesTr/BRATS_002.nii.gz");
    let label = dir.path().join("labelsTr/BRATS_002.nii.gz");
    let case = case_from_paths(std::slice::from_ref(&image)).unwrap();
    assert!(matches!(&case.files, CaseFiles::Msd4d { label: None, .. }));
    let with_label = case_from_paths(&[image, label]).unwrap();
    assert!(matches!(
        &with_label.files,
        CaseFiles::Msd4d { label: Some(_), .. }
    ));
    assert!(load_study(&with_label).unwrap().label.is_some());
}

#[test]
fn empty_folder_has_empty_layout() {
    let dir = tempfile::tempdir().unwrap();
    let report = discover(dir.path());
    assert_eq!(report.layout, Layout::Empty);
    assert!(report.cases.is_empty() && report.problems.is_empty());
}

fn fake_cases(n: usize) -> Vec<CaseSource> {
    (0..n)
        .map(|i| CaseSource {
            id: format!("case{i:03}"),
            files: CaseFiles::Msd4d {
                image: PathBuf::from(format!("/x/case{i:03}.nii.gz")),
                label: None,
                channels: cggm_trainer::data::MSD_CHANNELS,
            },
        })
        .collect()
}

fn ids(cases: &[CaseSource]) -> Vec<String> {
    cases.iter().map(|c| c.id.clone()).collect()
}

#[test]
fn split_is_reproducible_disjoint_and_independent_of_input_order() {
    let cases = fake_cases(50);
    let mut reversed = cases.clone();
    reversed.reverse();
    let a = split_cases(&cases, 42, 0.2, 0.1);
    let b = split_cases(&reversed, 42, 0.2, 0.1);
    assert_eq!(ids(&a.train), ids(&b.train));
    assert_eq!(ids(&a.val), ids(&b.val));
    assert_eq!(ids(&a.test), ids(&b.test));
    assert_eq!((a.train.len(), a.val.len(), a.test.len()), (35, 10, 5));
    let mut all: Vec<String> = [ids(&a.train), ids(&a.val), ids(&a.test)].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 50);
    let c = split_cases(&cases, 43, 0.2, 0.1);
    assert_ne!(ids(&a.val), ids(&c.val), "another seed gives another split");
}

#[test]
fn split_keeps_one_validation_case_for_tiny_datasets() {
    let two = split_cases(&fake_cases(2), 0, 0.0, 0.0);
    assert_eq!((two.train.len(), two.val.len(), two.test.len()), (1, 1, 0));
    let three = split_cases(&fake_cases(3), 0, 0.5, 0.5);
    assert_eq!(
        (three.train.len(), three.val.len(), three.test.len()),
        (1, 2, 0)
    );
    let one = split_cases(&fake_cases(1), 0, 0.5, 0.5);
    assert_eq!((one.train.len(), one.val.len(), one.test.len()), (1, 0, 0));
}

#[test]
fn split_file_selects_named_cases_and_rejects_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cases = fake_cases(5);
    let file = dir.path().join("split.json");
    std::fs::write(
        &file,
        r#"{"train": ["case000", "case001", "case002"], "val": ["case003"], "test": ["case004"]}"#,
    )
    .unwrap();
    let split = split_from_file(&cases, &file).unwrap();
    assert_eq!(ids(&split.train), ["case000", "case001", "case002"]);
    assert_eq!(ids(&split.val), ["case003"]);
    assert_eq!(ids(&split.test), ["case004"]);

    std::fs::write(&file, r#"{"train": ["case000", "nope"], "val": []}"#).unwrap();
    let err = split_from_file(&cases, &file).unwrap_err();
    assert!(
        matches!(err, DataError::SplitFile { .. }) && err.to_string().contains("nope"),
        "{err}"
    );

    std::fs::write(&file, r#"{"train": ["case000"], "val": ["case000"]}"#).unwrap();
    assert!(
        split_from_file(&cases, &file).is_err(),
        "a case in two parts is rejected"
    );
}
