//! Evaluation users can trust: per case and in 3-D. Every axial slice is predicted, the slices are
//! stacked, then Dice and HD95 are computed per region (WT, TC, ET) with the BraTS conventions,
//! for the fused model and for each modality's classifier. Lesion-wise Dice and HD95 (BraTS since
//! 2023) are reported beside the region scores.
//!
//! Brain mask: a voxel where every modality of the study is zero lies outside the brain (skull
//! stripping zeroes it, z-scoring keeps it at exactly 0); predictions there are set to background
//! before scoring and before writing, so false positives in the air never lower the 3-D Dice.

use crate::data::{load_study, voxel_spacing_mm, CaseSource, Study};
use crate::events::RegionScores;
use crate::metrics::lesion::lesion_scores;
use crate::metrics::{dice_scores, hd95_scores_with, mean_scores, Hd95Definition};
use crate::predict::{Predictor, VolumePrediction};
use anyhow::{Context, Result};
use ndarray::{Array3, Axis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use cggm_core::metrics::CaseScores;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvalReport {
    pub cases: Vec<CaseScores>,
    pub dice: RegionScores,
    pub hd95: RegionScores,
    pub modality_dice: BTreeMap<String, RegionScores>,
    /// Mean of the authors' one-random-slice Dice over the cases with tumour (comparison only;
    /// `dice` is the number to trust).
    #[serde(default)]
    pub authors_random_slice_dice: Option<RegionScores>,
    /// Mean lesion-wise Dice and HD95 (mm) over the cases.
    #[serde(default)]
    pub lesion_dice: RegionScores,
    #[serde(default)]
    pub lesion_hd95: RegionScores,
    /// The HD95 definition of `hd95` (the official pooled one unless asked otherwise).
    #[serde(default)]
    pub hd95_definition: Hd95Definition,
}

/// Scores one predicted case against its label with the official HD95.
pub fn score_case(
    id: &str,
    pred: &VolumePrediction,
    truth: &Array3<u8>,
    spacing: [f64; 3],
    names: &[String],
) -> CaseScores {
    score_case_with(id, pred, truth, spacing, names, Hd95Definition::BratsPooled)
}

/// Scores one predicted case against its label.
pub fn score_case_with(
    id: &str,
    pred: &VolumePrediction,
    truth: &Array3<u8>,
    spacing: [f64; 3],
    names: &[String],
    definition: Hd95Definition,
) -> CaseScores {
    // Compare voxel by voxel in logical [X, Y, Z] order, whatever the arrays' memory layouts.
    let truth_std = truth.as_standard_layout();
    let truth_flat = truth_std.as_slice().expect("standard layout");
    let flat = |a: &Array3<u8>| {
        a.as_standard_layout()
            .into_owned()
            .into_raw_vec_and_offset()
            .0
    };
    let dice = dice_scores(&flat(&pred.fused), truth_flat);
    let hd95 = hd95_scores_with(&pred.fused.view(), &truth.view(), spacing, definition);
    let lesion = lesion_scores(&pred.fused.view(), &truth.view(), spacing);
    let modality_dice = pred
        .per_modality
        .iter()
        .zip(names)
        .map(|(p, name)| (name.clone(), dice_scores(&flat(p), truth_flat)))
        .collect();
    let authors_random_slice_dice = random_tumour_slice_dice(id, &pred.fused, truth);
    CaseScores {
        case: id.to_string(),
        dice,
        hd95,
        modality_dice,
        authors_random_slice_dice,
        lesion,
    }
}

/// Dice of one random tumour-containing axial slice (the evaluation of the authors' code).
fn random_tumour_slice_dice(
    id: &str,
    pred: &Array3<u8>,
    truth: &Array3<u8>,
) -> Option<RegionScores> {
    let tumour_slices: Vec<usize> = (0..truth.dim().2)
        .filter(|&z| truth.index_axis(Axis(2), z).iter().any(|&c| c != 0))
        .collect();
    if tumour_slices.is_empty() {
        return None;
    }
    // FNV-1a of the case id: the same slice every time for the same case.
    let seed = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let z = tumour_slices[(seed % tumour_slices.len() as u64) as usize];
    let p: Vec<u8> = pred.index_axis(Axis(2), z).iter().copied().collect();
    let t: Vec<u8> = truth.index_axis(Axis(2), z).iter().copied().collect();
    Some(dice_scores(&p, &t))
}

/// Evaluates cases one at a time (one volume in memory), averaging per-case scores, with the
/// official HD95.
pub fn evaluate(
    predictor: &Predictor,
    cases: &[CaseSource],
    with_classifiers: bool,
) -> Result<EvalReport> {
    evaluate_with(
        predictor,
        cases,
        with_classifiers,
        Hd95Definition::BratsPooled,
    )
}

/// [`evaluate`] with a chosen HD95 definition.
pub fn evaluate_with(
    predictor: &Predictor,
    cases: &[CaseSource],
    with_classifiers: bool,
    definition: Hd95Definition,
) -> Result<EvalReport> {
    evaluate_cases(predictor, cases, with_classifiers, definition, None, |_| {})
}

/// [`evaluate_with`], calling `done(n)` after the n-th case (for a progress bar).
pub fn evaluate_counting(
    predictor: &Predictor,
    cases: &[CaseSource],
    with_classifiers: bool,
    definition: Hd95Definition,
    done: impl FnMut(usize),
) -> Result<EvalReport> {
    evaluate_cases(predictor, cases, with_classifiers, definition, None, done)
}

/// [`evaluate`] that also writes each case's predicted segmentation to
/// `save_dir/<case>_seg.nii.gz` (BraTS labels, the input's geometry), so that the cases can be
/// reviewed beside their ground truth without predicting them again.
pub fn evaluate_saving_predictions(
    predictor: &Predictor,
    cases: &[CaseSource],
    with_classifiers: bool,
    save_dir: &std::path::Path,
) -> Result<EvalReport> {
    std::fs::create_dir_all(save_dir)
        .with_context(|| format!("creating {}", save_dir.display()))?;
    evaluate_cases(
        predictor,
        cases,
        with_classifiers,
        Hd95Definition::BratsPooled,
        Some(save_dir),
        |_| {},
    )
}

pub use cggm_core::rundir::saved_prediction_name;

fn evaluate_cases(
    predictor: &Predictor,
    cases: &[CaseSource],
    with_classifiers: bool,
    definition: Hd95Definition,
    save_dir: Option<&std::path::Path>,
    mut done: impl FnMut(usize),
) -> Result<EvalReport> {
    let mut scores = Vec::new();
    // The next case is read and decoded on another thread while this one is predicted and
    // scored (two studies in memory at most).
    std::thread::scope(|scope| -> Result<()> {
        let load = |case: &CaseSource| {
            load_study(case).with_context(|| format!("loading case {}", case.id))
        };
        let mut next = cases.first().map(|c| scope.spawn(move || load(c)));
        for (i, case) in cases.iter().enumerate() {
            let study = next
                .take()
                .expect("spawned for every case")
                .join()
                .map_err(|_| {
                    anyhow::anyhow!("the loader thread for case {} panicked", case.id)
                })??;
            next = cases.get(i + 1).map(|c| scope.spawn(move || load(c)));
            scores.push(score_loaded(
                predictor,
                case,
                &study,
                with_classifiers,
                definition,
                save_dir,
            )?);
            done(scores.len());
        }
        Ok(())
    })?;
    let mut report = summarise(scores);
    report.hd95_definition = definition;
    Ok(report)
}

/// Predicts and scores one loaded case.
fn score_loaded(
    predictor: &Predictor,
    case: &CaseSource,
    study: &Study,
    with_classifiers: bool,
    definition: Hd95Definition,
    save_dir: Option<&std::path::Path>,
) -> Result<CaseScores> {
    let truth = study
        .label
        .as_ref()
        .with_context(|| format!("case {} has no label volume to evaluate against", case.id))?;
    let pred = predictor.predict(study, with_classifiers, |_| {});
    if let Some(dir) = save_dir {
        let path = dir.join(saved_prediction_name(&case.id));
        crate::data::write_label_volume(&path, &pred.fused.view(), &study.header)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(score_case_with(
        &case.id,
        &pred,
        truth,
        voxel_spacing(study),
        &predictor.modality_names,
        definition,
    ))
}

/// Voxel size in mm along x, y, z: the loader's rule (`data::voxel_spacing_mm`), one rule for
/// volumes, distances and the written predictions.
pub fn voxel_spacing(study: &Study) -> [f64; 3] {
    voxel_spacing_mm(&study.header)
}

pub fn summarise(cases: Vec<CaseScores>) -> EvalReport {
    let dice = mean_scores(&cases.iter().map(|c| c.dice.clone()).collect::<Vec<_>>());
    let hd95 = mean_scores(&cases.iter().map(|c| c.hd95.clone()).collect::<Vec<_>>());
    let mut modality_dice = BTreeMap::new();
    if let Some(first) = cases.first() {
        for name in first.modality_dice.keys() {
            let per: Vec<RegionScores> = cases
                .iter()
                .filter_map(|c| c.modality_dice.get(name).cloned())
                .collect();
            modality_dice.insert(name.clone(), mean_scores(&per));
        }
    }
    let slices: Vec<RegionScores> = cases
        .iter()
        .filter_map(|c| c.authors_random_slice_dice.clone())
        .collect();
    let authors_random_slice_dice = (!slices.is_empty()).then(|| mean_scores(&slices));
    let lesion_dice = mean_scores(&cases.iter().map(|c| c.lesion.dice()).collect::<Vec<_>>());
    let lesion_hd95 = mean_scores(&cases.iter().map(|c| c.lesion.hd95()).collect::<Vec<_>>());
    EvalReport {
        cases,
        dice,
        hd95,
        modality_dice,
        authors_random_slice_dice,
        lesion_dice,
        lesion_hd95,
        hd95_definition: Hd95Definition::BratsPooled,
    }
}

/// A plain-text table of a report, one row per case and a mean row.
pub fn format_table(report: &EvalReport) -> String {
    let names: Vec<&String> = report.modality_dice.keys().collect();
    let mut out = format!(
        "{:<24} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8}",
        "case", "WT", "TC", "ET", "mean", "HD95wt", "HD95tc", "HD95et"
    );
    for n in &names {
        out.push_str(&format!(" {:>9}", format!("{n}-mean")));
    }
    out.push('\n');
    let row = |out: &mut String,
               name: &str,
               d: &RegionScores,
               h: &RegionScores,
               md: &BTreeMap<String, RegionScores>| {
        out.push_str(&format!(
            "{:<24} {:>6.4} {:>6.4} {:>6.4} {:>6.4} {:>8.2} {:>8.2} {:>8.2}",
            name, d.wt, d.tc, d.et, d.mean, h.wt, h.tc, h.et
        ));
        for n in &names {
            out.push_str(&format!(
                " {:>9.4}",
                md.get(*n).map_or(f64::NAN, |s| s.mean)
            ));
        }
        out.push('\n');
    };
    for c in &report.cases {
        row(&mut out, &c.case, &c.dice, &c.hd95, &c.modality_dice);
    }
    row(
        &mut out,
        "MEAN",
        &report.dice,
        &report.hd95,
        &report.modality_dice,
    );
    let (ld, lh) = (&report.lesion_dice, &report.lesion_hd95);
    out.push_str(&format!(
        "lesion-wise (BraTS 2023+): Dice WT {:.4} TC {:.4} ET {:.4} mean {:.4}; \
         HD95 WT {:.2} TC {:.2} ET {:.2} mm\n",
        ld.wt, ld.tc, ld.et, ld.mean, lh.wt, lh.tc, lh.et
    ));
    if report.hd95_definition == Hd95Definition::MaxOfDirected {
        out.push_str(
            "(HD95 above: max of the two directed 95th percentiles, not the official pooled one)\n",
        );
    }
    if let Some(d) = &report.authors_random_slice_dice {
        out.push_str(&format!(
            "(authors' protocol, one random tumour slice per case, for comparison only: \
             WT {:.4} TC {:.4} ET {:.4} mean {:.4})\n",
            d.wt, d.tc, d.et, d.mean
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voxel_size_follows_one_pixdim_rule() {
        let mut h = nifti::NiftiHeader {
            xyzt_units: 2,
            ..Default::default()
        };
        h.pixdim = [1.0, -0.9, 1.3, 0.0, 1.0, 0.0, 0.0, 0.0];
        // A negative pixdim is a flip, a zero one unknown (1 mm).
        assert_eq!(voxel_spacing_mm(&h), [0.9f32 as f64, 1.3f32 as f64, 1.0]);
        h.xyzt_units = 1; // metres
        h.pixdim[1] = 0.001;
        assert!((voxel_spacing_mm(&h)[0] - 1.0).abs() < 1e-6);
        h.xyzt_units = 3; // micrometres
        h.pixdim[1] = 500.0;
        assert!((voxel_spacing_mm(&h)[0] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn authors_slice_protocol_picks_a_tumour_slice_and_can_flatter_the_3d_score() {
        let mut truth = Array3::<u8>::zeros((8, 8, 4));
        truth[[2, 2, 2]] = 2;
        truth[[2, 3, 2]] = 3;
        let mut pred = truth.clone();
        // A false positive on a slice without tumour: the 3-D Dice sees it, one tumour slice not.
        pred[[5, 5, 0]] = 2;
        let scores = score_case(
            "case",
            &VolumePrediction {
                fused: pred,
                per_modality: vec![],
            },
            &truth,
            [1.0; 3],
            &[],
        );
        assert!(scores.dice.wt < 1.0);
        assert_eq!(scores.authors_random_slice_dice.unwrap().wt, 1.0);
        let empty = Array3::<u8>::zeros((8, 8, 4));
        assert!(random_tumour_slice_dice("x", &empty, &empty).is_none());
    }
}
