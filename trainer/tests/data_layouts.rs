//! The layouts researchers hold, written by nibabel as their tools write them: MSD Task01 with its
//! own `dataset.json`, nnU-Net v2 raw with `channel_names` in a non-default order, BraTS 2023 GLI
//! and PED names with ET = 3, plain `.nii` float32; and links that lead outside a dataset folder.

mod data_common;

use std::path::Path;

use cggm_trainer::data::features::is_feature_dataset;
use cggm_trainer::data::{
    discover, load_study, validate_dataset, DataError, Layout, Modality, CHANNEL_MAP_FILE,
    LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA,
};
use data_common::{run_python, tiny_dataset};

/// Writes `argv[1]` in layout `argv[2]`. Every image channel `c` (in the order the layout's
/// description lists them) is non-zero only where x % 4 == c, so that the channel -> modality
/// mapping is visible after z-scoring; labels 1, 2, 3 sit at (1,1,1), (2,2,2), (3,3,3).
const WRITE_LAYOUT: &str = r#"
import sys, os, json, numpy as np, nibabel as nib
root, layout = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
aff = np.diag([1.0, 1.0, 1.0, 1.0])
def channel(c):
    img = np.zeros((12, 10, 6), np.float32)
    img[c::4] = rng.uniform(100, 200, size=img[c::4].shape)
    return img
lab = np.zeros((12, 10, 6), np.uint8)
lab[1, 1, 1] = 1; lab[2, 2, 2] = 2; lab[3, 3, 3] = 3
if layout == "msd":
    os.makedirs(f"{root}/imagesTr"); os.makedirs(f"{root}/labelsTr"); os.makedirs(f"{root}/imagesTs")
    # The MSD file as downloaded, but with its channels listed in another order.
    json.dump({"name": "BRATS", "description": "Gliomas", "tensorImageSize": "4D",
               "modality": {"0": "T2w", "1": "FLAIR", "2": "T1w", "3": "t1gd"},
               "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
               "numTraining": 2, "numTest": 1,
               "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
               "test": ["./imagesTs/BRATS_900.nii.gz"]}, open(f"{root}/dataset.json", "w"))
    for case in ("BRATS_001", "BRATS_002"):
        img = np.stack([channel(c) for c in range(4)], axis=-1)
        nib.save(nib.Nifti1Image(img, aff), f"{root}/imagesTr/{case}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), f"{root}/labelsTr/{case}.nii.gz")
elif layout.startswith("nnunet"):
    os.makedirs(f"{root}/imagesTr"); os.makedirs(f"{root}/labelsTr"); os.makedirs(f"{root}/imagesTs")
    names = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    if layout == "nnunet-unknown":
        names["1"] = "T1 post-Gd VIBE"
    json.dump({"channel_names": names,
               "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
               "regions_class_order": [1, 2, 3], "numTraining": 2, "file_ending": ".nii.gz"},
              open(f"{root}/dataset.json", "w"))
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        for c in range(4):
            nib.save(nib.Nifti1Image(channel(c), aff), f"{root}/imagesTr/{case}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), f"{root}/labelsTr/{case}.nii.gz")
    for c in range(4):
        nib.save(nib.Nifti1Image(channel(c), aff), f"{root}/imagesTs/BraTS2021_00900_{c:04d}.nii.gz")
elif layout == "brats2023":
    # GLI (adult glioma) and PED (paediatric) names; channel order t2f, t1c, t1n, t2w.
    for case in ("BraTS-GLI-00000-000", "BraTS-PED-00001-000"):
        os.makedirs(f"{root}/{case}")
        for c, suffix in enumerate(("t2f", "t1c", "t1n", "t2w")):
            nib.save(nib.Nifti1Image(channel(c), aff), f"{root}/{case}/{case}-{suffix}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), f"{root}/{case}/{case}-seg.nii.gz")
elif layout == "plain-nii":
    # BraTS 2021 names, uncompressed .nii, float32 labels.
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        os.makedirs(f"{root}/{case}")
        for c, suffix in enumerate(("flair", "t1ce", "t1", "t2")):
            nib.save(nib.Nifti1Image(channel(c), aff), f"{root}/{case}/{case}_{suffix}.nii")
        seg = lab.astype(np.float32); seg[seg == 3] = 4
        nib.save(nib.Nifti1Image(seg, aff), f"{root}/{case}/{case}_seg.nii")
"#;

fn write(root: &Path, layout: &str) {
    run_python(WRITE_LAYOUT, &[root, Path::new(layout)]);
}

/// Which channel (x % 4 == channel) each modality of the first case came from.
fn channel_of_each_modality(dir: &Path) -> Vec<(Modality, usize)> {
    let case = &discover(dir).cases[0];
    let study = load_study(case).unwrap();
    Modality::ALL
        .iter()
        .map(|&m| {
            let channel = (0..4)
                .find(|x| study.images[[m.index(), *x, 5, 3]] != 0.0)
                .expect("one channel is bright");
            (m, channel)
        })
        .collect()
}

fn assert_labels_internal(dir: &Path, expected: [u8; 3]) {
    let study = load_study(&discover(dir).cases[0]).unwrap();
    let label = study.label.expect("a label");
    assert_eq!(
        [label[[1, 1, 1]], label[[2, 2, 2]], label[[3, 3, 3]]],
        expected
    );
}

#[test]
fn an_msd_folder_as_downloaded_uses_its_modality_map_and_is_no_feature_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Task01_BrainTumour");
    write(&root, "msd");
    assert!(
        !is_feature_dataset(&root),
        "an MSD dataset.json is not ours"
    );
    for start in [root.as_path(), dir.path()] {
        let report = validate_dataset(start);
        assert_eq!(report.layout, Layout::MsdTask01);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.cases.len(), 2);
    }
    // dataset.json lists T2w, FLAIR, T1w, t1gd.
    assert_eq!(
        channel_of_each_modality(&root),
        [
            (Modality::Flair, 1),
            (Modality::T1ce, 3),
            (Modality::T1, 2),
            (Modality::T2, 0)
        ]
    );
    assert_labels_internal(&root, [LABEL_OEDEMA, LABEL_NCR, LABEL_ENHANCING]);
}

#[test]
fn nnunet_v2_raw_maps_channels_by_name_and_region_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Dataset137_BraTS2021");
    write(&root, "nnunet");
    for start in [root.as_path(), dir.path()] {
        let report = validate_dataset(start);
        assert_eq!(report.layout, Layout::NnUnetV2, "{start:?}");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let ids: Vec<&str> = report.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["BraTS2021_00000", "BraTS2021_00002"],
            "channel files are not cases"
        );
        assert!(report.cases.iter().all(|c| c.label_path().is_some()));
    }
    // channel_names: 0 T1, 1 T1ce, 2 T2, 3 Flair.
    assert_eq!(
        channel_of_each_modality(&root),
        [
            (Modality::Flair, 3),
            (Modality::T1ce, 1),
            (Modality::T1, 0),
            (Modality::T2, 2)
        ]
    );
    // Regions whole tumor [1,2,3], tumor core [2,3], enhancing [3]: 1 oedema, 2 core, 3 ET.
    assert_labels_internal(&root, [LABEL_OEDEMA, LABEL_NCR, LABEL_ENHANCING]);
}

#[test]
fn an_unknown_nnunet_channel_name_is_named_and_can_be_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Dataset500_Mine");
    write(&root, "nnunet-unknown");
    let report = discover(&root);
    assert_eq!(report.layout, Layout::NnUnetV2);
    assert!(report.cases.is_empty());
    let message = report.problems[0].error.to_string();
    assert!(
        message.contains("T1 post-Gd VIBE") && message.contains(CHANNEL_MAP_FILE),
        "{message}"
    );
    std::fs::write(
        root.join(CHANNEL_MAP_FILE),
        r#"{"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}"#,
    )
    .unwrap();
    let report = validate_dataset(&root);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.cases.len(), 2);
}

#[test]
fn brats_2023_names_with_et_3_are_their_own_layout() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "brats2023");
    let report = validate_dataset(dir.path());
    assert_eq!(report.layout, Layout::BraTS2023);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.cases.len(), 2);
    assert_eq!(
        channel_of_each_modality(dir.path()),
        [
            (Modality::Flair, 0),
            (Modality::T1ce, 1),
            (Modality::T1, 2),
            (Modality::T2, 3)
        ]
    );
    assert_labels_internal(dir.path(), [LABEL_NCR, LABEL_OEDEMA, LABEL_ENHANCING]);
}

#[test]
fn plain_nii_float32_is_read_like_gzip() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "plain-nii");
    let report = validate_dataset(dir.path());
    assert_eq!(report.layout, Layout::BraTS2021);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_labels_internal(dir.path(), [LABEL_NCR, LABEL_OEDEMA, LABEL_ENHANCING]);
}

#[test]
fn links_that_leave_the_dataset_folder_are_ignored_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dataset");
    let outside = dir.path().join("outside");
    tiny_dataset(&root, 3, 1);
    tiny_dataset(&outside, 1, 2);
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    // Case 0: its FLAIR is a link to a file outside (as `-> /etc/passwd` would be).
    let flair = std::fs::read_dir(&cases[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("_flair"))
        .unwrap();
    let secret = dir.path().join("secret.nii.gz");
    std::fs::write(&secret, b"not for you").unwrap();
    std::fs::remove_file(&flair).unwrap();
    std::os::unix::fs::symlink(&secret, &flair).unwrap();
    // A whole case folder linked to a folder outside.
    let outside_case = std::fs::read_dir(&outside)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let linked = root.join("LinkedCase");
    std::os::unix::fs::symlink(&outside_case, &linked).unwrap();
    // A link that stays inside is fine: case 1's T2 points at its own copy.
    let t2 = std::fs::read_dir(&cases[1])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("_t2."))
        .unwrap();
    let copy = cases[1].join("t2-copy.bin");
    std::fs::rename(&t2, &copy).unwrap();
    std::os::unix::fs::symlink(&copy, &t2).unwrap();

    let report = discover(&root);
    let found: Vec<&str> = report.cases.iter().map(|c| c.id.as_str()).collect();
    let first = cases[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(!found.contains(&first.as_str()), "{found:?}");
    assert!(!found.contains(&"LinkedCase"), "{found:?}");
    assert_eq!(
        found.len(),
        2,
        "the untouched case and the inside link remain: {found:?}"
    );
    for case in [first.as_str(), "LinkedCase"] {
        let problem = report
            .problems
            .iter()
            .find(|p| p.case == case)
            .unwrap_or_else(|| panic!("{case} is named: {:?}", report.problems));
        assert!(
            matches!(problem.error, DataError::OutsideDataset { .. }),
            "{}",
            problem.error
        );
        assert!(problem
            .error
            .to_string()
            .contains("outside the dataset folder"));
    }
    assert!(report.cases.iter().flat_map(|c| c.paths()).all(|p| p
        .canonicalize()
        .unwrap()
        .starts_with(root.canonicalize().unwrap())));
}
