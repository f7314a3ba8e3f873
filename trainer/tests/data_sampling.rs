//! Synthetic phantom contrasts, and the slice loader: reproducibility, resumption, crops, tumour
//! share and the on-disk cache.

mod data_common;

use std::path::Path;

use cggm_trainer::data::synth::{phantom, SynthConfig};
use cggm_trainer::data::{
    discover, load_study, CaseSource, Modality, SamplerConfig, SliceBatch, SliceLoader,
};
use data_common::tiny_dataset;

fn mean_where(image: &ndarray::Array3<i16>, mask: impl Fn(usize, usize, usize) -> bool) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for ((x, y, z), &v) in image.indexed_iter() {
        if mask(x, y, z) {
            sum += v as f64;
            n += 1;
        }
    }
    assert!(n > 0, "empty region");
    sum / n as f64
}

#[test]
fn phantom_contrasts_follow_real_mri() {
    let config = SynthConfig {
        cases: 10,
        seed: 0,
        size: [64, 64, 40],
        imbalance: 1.0,
    };
    let mut without_enhancing = 0;
    for case in 0..config.cases {
        let p = phantom(&config, case);
        let label = &p.label;
        assert!(label.iter().all(|l| [0, 1, 2, 4].contains(l)));
        let flair = &p.images[Modality::Flair.index()];
        let t1ce = &p.images[Modality::T1ce.index()];
        let t1 = &p.images[Modality::T1.index()];
        let t2 = &p.images[Modality::T2.index()];
        // Normal brain: brain voxels (non-zero) without tumour; mostly white and grey matter.
        let normal = |img: &ndarray::Array3<i16>| {
            mean_where(img, |x, y, z| label[[x, y, z]] == 0 && img[[x, y, z]] != 0)
        };
        let oedema = |x: usize, y: usize, z: usize| label[[x, y, z]] == 2;
        let core = |x: usize, y: usize, z: usize| matches!(label[[x, y, z]], 1 | 4);
        assert!(
            mean_where(flair, oedema) > 1.6 * normal(flair),
            "case {case}: FLAIR oedema bright"
        );
        assert!(
            mean_where(flair, core) > 1.4 * normal(flair),
            "case {case}: FLAIR tumour bright"
        );
        assert!(
            mean_where(t1, core) < 0.88 * normal(t1),
            "case {case}: T1 tumour dark"
        );
        assert!(
            mean_where(t2, oedema) > 1.3 * normal(t2),
            "case {case}: T2 oedema bright"
        );
        if p.has_enhancing {
            let rim = |x: usize, y: usize, z: usize| label[[x, y, z]] == 4;
            assert!(
                mean_where(t1ce, rim) > 1.4 * normal(t1ce),
                "case {case}: T1ce rim bright"
            );
            let t1ce_rim = mean_where(t1ce, rim);
            if label.iter().any(|&l| l == 1) {
                let necrosis = |x: usize, y: usize, z: usize| label[[x, y, z]] == 1;
                assert!(
                    mean_where(t1ce, necrosis) < 0.75 * t1ce_rim,
                    "case {case}: necrosis dark"
                );
            }
        } else {
            without_enhancing += 1;
            assert!(!label.iter().any(|&l| l == 4));
        }
        assert!(
            flair[[0, 0, 0]] == 0 && label[[0, 0, 0]] == 0,
            "background is 0"
        );
    }
    assert!(
        (1..=5).contains(&without_enhancing),
        "some but not most cases lack enhancing tumour: {without_enhancing}"
    );
}

#[test]
fn phantom_is_deterministic_per_seed_and_varies_between_cases() {
    let config = SynthConfig {
        size: [32, 32, 16],
        ..SynthConfig::default()
    };
    let a = phantom(&config, 1);
    let b = phantom(&config, 1);
    let c = phantom(&config, 2);
    assert_eq!(a.images, b.images);
    assert_eq!(a.label, b.label);
    assert_ne!(a.label, c.label);
    let other_seed = phantom(&SynthConfig { seed: 9, ..config }, 1);
    assert_ne!(a.label, other_seed.label);
}

/// Contrast-to-noise of the enhancing rim in T1ce: mean difference to normal brain over the
/// normal brain's standard deviation.
fn t1ce_rim_cnr(imbalance: f64) -> f64 {
    let config = SynthConfig {
        size: [48, 48, 32],
        imbalance,
        ..SynthConfig::default()
    };
    let case = (0..20)
        .find(|&c| phantom(&config, c).has_enhancing)
        .expect("a case with enhancing tumour");
    let p = phantom(&config, case);
    let t1ce = &p.images[Modality::T1ce.index()];
    let mut normal = Vec::new();
    let mut rim = Vec::new();
    for ((x, y, z), &v) in t1ce.indexed_iter() {
        match p.label[[x, y, z]] {
            0 if v != 0 => normal.push(v as f64),
            4 => rim.push(v as f64),
            _ => {}
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mn, mr) = (mean(&normal), mean(&rim));
    let sd = (normal.iter().map(|v| (v - mn).powi(2)).sum::<f64>() / normal.len() as f64).sqrt();
    (mr - mn) / sd
}

#[test]
fn imbalance_weakens_the_non_flair_modalities() {
    assert!(t1ce_rim_cnr(0.0) > 1.3 * t1ce_rim_cnr(3.0));
}

fn config(cache: &Path) -> SamplerConfig {
    SamplerConfig {
        batch_size: 4,
        crop: 24,
        random_crop: true,
        tumour_fraction: 0.5,
        rotate90: true,
        flip: true,
        noise_std: 0.1,
        workers: 2,
        prefetch: 2,
        cache_dir: Some(cache.to_path_buf()),
        ..SamplerConfig::default()
    }
}

fn dataset(dir: &Path) -> Vec<CaseSource> {
    tiny_dataset(dir, 3, 11);
    discover(dir).cases
}

fn take(loader: &mut SliceLoader, n: usize) -> Vec<SliceBatch> {
    (0..n).map(|_| loader.next_batch().unwrap()).collect()
}

fn same(a: &SliceBatch, b: &SliceBatch) -> bool {
    a.images == b.images && a.labels == b.labels
}

#[test]
fn batches_depend_only_on_seed_and_index_and_resume_exactly() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = dataset(data.path());
    let mut threaded = SliceLoader::new(&cases, config(cache.path()), 7, 0).unwrap();
    let first = take(&mut threaded, 8);
    assert_eq!(first[0].images.shape(), [4, 4, 24, 24]);
    assert_eq!(first[0].labels.shape(), [4, 24, 24]);

    let inline = SamplerConfig {
        workers: 0,
        ..config(cache.path())
    };
    let mut single = SliceLoader::new(&cases, inline, 7, 0).unwrap();
    for (k, batch) in take(&mut single, 8).iter().enumerate() {
        assert!(
            same(batch, &first[k]),
            "batch {k} differs between 0 and 2 workers"
        );
    }

    let mut resumed = SliceLoader::new(&cases, config(cache.path()), 7, 5).unwrap();
    assert_eq!(resumed.position(), 5);
    for (k, batch) in take(&mut resumed, 3).iter().enumerate() {
        assert!(
            same(batch, &first[5 + k]),
            "resumed batch {} differs",
            5 + k
        );
    }

    let mut other = SliceLoader::new(&cases, config(cache.path()), 8, 0).unwrap();
    assert!(
        !same(&other.next_batch().unwrap(), &first[0]),
        "another seed, another batch"
    );
    assert!(
        !same(&first[0], &first[1]),
        "batches differ from each other"
    );
}

#[test]
fn tumour_fraction_controls_the_share_of_tumour_slices() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = dataset(data.path());
    let centre_only = |fraction: f64| SamplerConfig {
        crop: 32,
        random_crop: false,
        rotate90: false,
        flip: false,
        noise_std: 0.0,
        tumour_fraction: fraction,
        batch_size: 8,
        ..config(cache.path())
    };
    let has_tumour = |batch: &SliceBatch, i: usize| {
        batch
            .labels
            .index_axis(ndarray::Axis(0), i)
            .iter()
            .any(|&l| l != 0)
    };
    let mut all_tumour = SliceLoader::new(&cases, centre_only(1.0), 1, 0).unwrap();
    for batch in take(&mut all_tumour, 4) {
        assert!((0..8).all(|i| has_tumour(&batch, i)));
    }
    let mut no_tumour = SliceLoader::new(&cases, centre_only(0.0), 1, 0).unwrap();
    for batch in take(&mut no_tumour, 4) {
        assert!((0..8).all(|i| !has_tumour(&batch, i)));
        // Still brain slices: some non-zero intensity in every sample.
        for i in 0..8 {
            assert!(batch
                .images
                .index_axis(ndarray::Axis(0), i)
                .iter()
                .any(|&v| v != 0.0));
        }
    }
}

#[test]
fn unaugmented_centre_crop_reproduces_the_normalised_study_slice() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = dataset(data.path());
    let studies: Vec<_> = cases.iter().map(|c| load_study(c).unwrap()).collect();
    let plain = SamplerConfig {
        crop: 40, // larger than the 32x32 slice: zero padding of 4 on each side
        random_crop: false,
        rotate90: false,
        flip: false,
        noise_std: 0.0,
        tumour_fraction: 0.5,
        batch_size: 6,
        ..config(cache.path())
    };
    let mut loader = SliceLoader::new(&cases, plain, 3, 0).unwrap();
    let batch = loader.next_batch().unwrap();
    for i in 0..6 {
        let sample = batch.images.index_axis(ndarray::Axis(0), i);
        let labels = batch.labels.index_axis(ndarray::Axis(0), i);
        // Padding is zero.
        assert!(sample.iter().enumerate().all(|(n, &v)| {
            let (r, c) = ((n / 40) % 40, n % 40);
            v == 0.0 || (4..36).contains(&r) && (4..36).contains(&c)
        }));
        // The sample equals one axial slice of one study (f16 storage tolerance).
        let found = studies.iter().any(|study| {
            (0..16).any(|z| {
                (0..32).all(|x| {
                    (0..32).all(|y| {
                        study.label.as_ref().unwrap()[[x, y, z]] == labels[[x + 4, y + 4]]
                            && (0..4).all(|c| {
                                let want = study.images[[c, x, y, z]];
                                let got = sample[[c, x + 4, y + 4]];
                                (want - got).abs() <= 2e-3 * want.abs().max(1.0)
                            })
                    })
                })
            })
        });
        assert!(found, "sample {i} is not a slice of the dataset");
    }
}

#[test]
fn cache_is_written_once_and_reused() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = dataset(data.path());
    drop(SliceLoader::new(&cases, config(cache.path()), 0, 0).unwrap());
    let mut files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        6,
        "one .slices and one .json per case: {files:?}"
    );
    assert!(files
        .iter()
        .all(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.')));
    let modified: Vec<_> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
        .collect();
    drop(SliceLoader::new(&cases, config(cache.path()), 0, 0).unwrap());
    let again: Vec<_> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
        .collect();
    assert_eq!(modified, again, "a warm cache is not rewritten");
}

#[test]
fn loader_rejects_unlabelled_cases_and_bad_config() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut cases = dataset(data.path());
    let bad = SamplerConfig {
        tumour_fraction: 1.5,
        ..config(cache.path())
    };
    assert!(SliceLoader::new(&cases, bad, 0, 0).is_err());
    if let cggm_trainer::data::CaseFiles::Separate { label, .. } = &mut cases[0].files {
        *label = None;
    }
    let err = match SliceLoader::new(&cases, config(cache.path()), 0, 0) {
        Err(e) => e,
        Ok(_) => panic!("an unlabelled case must be rejected"),
    };
    assert!(
        matches!(err, cggm_trainer::data::DataError::MissingLabel { .. }),
        "{err}"
    );
}

#[test]
fn noise_is_zero_mean_with_the_configured_std_on_brain_pixels_only() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = dataset(data.path());
    let with_noise = |std: f32| SamplerConfig {
        batch_size: 1,
        noise_std: std,
        workers: 0,
        ..config(cache.path())
    };
    let mut clean = SliceLoader::new(&cases, with_noise(0.0), 5, 0).unwrap();
    let mut noisy = SliceLoader::new(&cases, with_noise(0.5), 5, 0).unwrap();
    let mut differences = Vec::new();
    for _ in 0..6 {
        let (a, b) = (clean.next_batch().unwrap(), noisy.next_batch().unwrap());
        assert_eq!(
            a.labels, b.labels,
            "noise draws come after the slice choice"
        );
        for (x, y) in a.images.iter().zip(b.images.iter()) {
            if *x == 0.0 {
                assert_eq!(*y, 0.0, "background stays 0");
            } else {
                differences.push((*y - *x) as f64);
            }
        }
    }
    let n = differences.len() as f64;
    let mean = differences.iter().sum::<f64>() / n;
    let std = (differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(
        n > 1000.0 && mean.abs() < 0.05 && (std - 0.5).abs() < 0.05,
        "{n} {mean} {std}"
    );
}
