//! Segmentation metrics the BraTS challenge reports: Dice and the 95th-percentile Hausdorff distance
//! per region (WT = {NCR, ED, ET}, TC = {NCR, ET}, ET), computed per case in 3-D.
//!
//! Labels here are the internal classes: 0 background, 1 NCR/NET, 2 oedema, 3 enhancing tumour.
//! Lesion-wise scores (BraTS since 2023) live in [`lesion`].

pub mod lesion;

use crate::events::RegionScores;
use lesion::LesionReport;
use ndarray::{Array3, ArrayView3, Zip};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// HD95 of the legacy definition when exactly one of prediction and ground truth is empty: the
/// diagonal of the 240x240x155 BraTS grid in mm, as the BraTS 2021 evaluation did.
pub const HD95_EMPTY_PENALTY: f64 = 373.128_664_383_461_2;

/// The official package's penalty (`brats_evaluation.metrics_parser`: "diameter of the cube in SRI
/// space"), reported wherever panoptica's HD95 is infinite: one mask empty, or no overlap at all.
pub const BRATS_HD95_PENALTY: f64 = 373.0;

/// Which 95th-percentile Hausdorff distance to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hd95Definition {
    /// The official BraTS evaluation (`brats-evaluation` on PyPI, built on panoptica; MedPy's
    /// `hd95`): the 95th percentile of both directed surface-distance sets pooled. When the masks
    /// do not overlap at all (or one is empty) the package reports infinity, parsed as 373 mm.
    #[default]
    BratsPooled,
    /// The larger of the two directed 95th percentiles (what this project reported before; some
    /// papers use it). Up to 2x the pooled value on the same masks. Empty vs non-empty: 373.13 mm.
    MaxOfDirected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Wt,
    Tc,
    Et,
}

impl Region {
    pub const ALL: [Region; 3] = [Region::Wt, Region::Tc, Region::Et];

    pub fn contains(self, class: u8) -> bool {
        match self {
            Region::Wt => matches!(class, 1..=3),
            Region::Tc => class == 1 || class == 3,
            Region::Et => class == 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Region::Wt => "wt",
            Region::Tc => "tc",
            Region::Et => "et",
        }
    }
}

/// Dice from overlap counts, with the BraTS convention for an empty ground truth: 1 if the
/// prediction is empty too, else 0.
pub fn dice_from_counts(intersection: u64, predicted: u64, truth: u64) -> f64 {
    if truth == 0 {
        return if predicted == 0 { 1.0 } else { 0.0 };
    }
    2.0 * intersection as f64 / (predicted + truth) as f64
}

/// Dice of one region over any two label arrays of equal shape.
pub fn region_dice<'a>(
    pred: impl IntoIterator<Item = &'a u8>,
    truth: impl IntoIterator<Item = &'a u8>,
    region: Region,
) -> f64 {
    let (mut inter, mut p, mut t) = (0u64, 0u64, 0u64);
    for (&a, &b) in pred.into_iter().zip(truth) {
        let (pa, tb) = (region.contains(a), region.contains(b));
        p += pa as u64;
        t += tb as u64;
        inter += (pa && tb) as u64;
    }
    dice_from_counts(inter, p, t)
}

/// Dice per region and their mean.
pub fn dice_scores(pred: &[u8], truth: &[u8]) -> RegionScores {
    let d = |r| region_dice(pred, truth, r);
    RegionScores::new(d(Region::Wt), d(Region::Tc), d(Region::Et))
}

/// HD95 per region (mm) on a 3-D case with the official definition; `spacing` in mm along the
/// three axes.
pub fn hd95_scores(
    pred: &ArrayView3<u8>,
    truth: &ArrayView3<u8>,
    spacing: [f64; 3],
) -> RegionScores {
    hd95_scores_with(pred, truth, spacing, Hd95Definition::BratsPooled)
}

/// HD95 per region (mm) with the chosen definition.
pub fn hd95_scores_with(
    pred: &ArrayView3<u8>,
    truth: &ArrayView3<u8>,
    spacing: [f64; 3],
    definition: Hd95Definition,
) -> RegionScores {
    let h = |r: Region| {
        let p = pred.mapv(|c| r.contains(c));
        let t = truth.mapv(|c| r.contains(c));
        hd95_with(&p.view(), &t.view(), spacing, definition)
    };
    RegionScores::new(h(Region::Wt), h(Region::Tc), h(Region::Et))
}

/// The official BraTS HD95 (see [`Hd95Definition::BratsPooled`]): both empty 0 (the package
/// reports NaN there), one empty or no overlap [`BRATS_HD95_PENALTY`].
pub fn hd95(a: &ArrayView3<bool>, b: &ArrayView3<bool>, spacing: [f64; 3]) -> f64 {
    hd95_with(a, b, spacing, Hd95Definition::BratsPooled)
}

/// 95th-percentile Hausdorff distance between the surfaces of two masks (mm). A surface voxel is a
/// mask voxel with a 6-neighbour outside the mask or the grid (scipy's `binary_erosion` with the
/// cross structure, as panoptica and MedPy extract borders); distances are exact Euclidean
/// distances in mm from each surface voxel to the nearest surface voxel of the other mask.
pub fn hd95_with(
    a: &ArrayView3<bool>,
    b: &ArrayView3<bool>,
    spacing: [f64; 3],
    definition: Hd95Definition,
) -> f64 {
    let (a_any, b_any) = (a.iter().any(|&v| v), b.iter().any(|&v| v));
    let overlap = a.iter().zip(b.iter()).any(|(&x, &y)| x && y);
    match (definition, a_any, b_any) {
        (_, false, false) => return 0.0,
        (Hd95Definition::MaxOfDirected, true, false)
        | (Hd95Definition::MaxOfDirected, false, true) => return HD95_EMPTY_PENALTY,
        (Hd95Definition::BratsPooled, _, _) if !overlap => return BRATS_HD95_PENALTY,
        _ => {}
    }
    let (sa, sb) = surface_distances(a, b, spacing);
    match definition {
        Hd95Definition::BratsPooled => {
            let mut pooled = sa;
            pooled.extend(sb);
            percentile(&mut pooled, 95.0)
        }
        Hd95Definition::MaxOfDirected => {
            let (mut sa, mut sb) = (sa, sb);
            percentile(&mut sa, 95.0).max(percentile(&mut sb, 95.0))
        }
    }
}

/// Both directed surface-distance sets (mm): from every surface voxel of `a` to the surface of
/// `b`, and back. Works on the bounding box of both masks plus one voxel, which gives the same
/// distances as the whole grid (every surface voxel lies inside it) at a fraction of the cost.
pub fn surface_distances(
    a: &ArrayView3<bool>,
    b: &ArrayView3<bool>,
    spacing: [f64; 3],
) -> (Vec<f64>, Vec<f64>) {
    let (ca, cb) = crop_pair(a, b);
    let (sa, sb) = (surface(&ca.view()), surface(&cb.view()));
    let da = distance_to(&sb, spacing);
    let db = distance_to(&sa, spacing);
    let collect = |surf: &Array3<bool>, dist: &Array3<f64>| {
        Zip::from(surf)
            .and(dist)
            .fold(Vec::new(), |mut acc, &s, &v| {
                if s {
                    acc.push(v);
                }
                acc
            })
    };
    (collect(&sa, &da), collect(&sb, &db))
}

/// Both masks cut to the bounding box of their union, padded by one voxel on every side (outside
/// the grid the padding is `false`, as scipy's erosion treats the border).
fn crop_pair(a: &ArrayView3<bool>, b: &ArrayView3<bool>) -> (Array3<bool>, Array3<bool>) {
    let dim = a.dim();
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    Zip::indexed(a).and(b).for_each(|(x, y, z), &p, &q| {
        if p || q {
            for (k, v) in [x, y, z].into_iter().enumerate() {
                lo[k] = lo[k].min(v);
                hi[k] = hi[k].max(v);
            }
        }
    });
    if lo[0] == usize::MAX {
        return (a.to_owned(), b.to_owned());
    }
    let shape = (hi[0] - lo[0] + 3, hi[1] - lo[1] + 3, hi[2] - lo[2] + 3);
    let pick = |m: &ArrayView3<bool>| {
        Array3::from_shape_fn(shape, |(i, j, k)| {
            let (x, y, z) = (
                (lo[0] + i).wrapping_sub(1),
                (lo[1] + j).wrapping_sub(1),
                (lo[2] + k).wrapping_sub(1),
            );
            x < dim.0 && y < dim.1 && z < dim.2 && m[[x, y, z]]
        })
    };
    (pick(a), pick(b))
}

/// Voxels of the mask with at least one 6-neighbour outside it (or on the border).
fn surface(mask: &ArrayView3<bool>) -> Array3<bool> {
    let (nx, ny, nz) = mask.dim();
    Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| {
        if !mask[[x, y, z]] {
            return false;
        }
        let outside = |dx: isize, dy: isize, dz: isize| {
            let (i, j, k) = (x as isize + dx, y as isize + dy, z as isize + dz);
            i < 0
                || j < 0
                || k < 0
                || i >= nx as isize
                || j >= ny as isize
                || k >= nz as isize
                || !mask[[i as usize, j as usize, k as usize]]
        };
        outside(-1, 0, 0)
            || outside(1, 0, 0)
            || outside(0, -1, 0)
            || outside(0, 1, 0)
            || outside(0, 0, -1)
            || outside(0, 0, 1)
    })
}

/// Exact Euclidean distance (mm) from every voxel to the nearest `true` voxel of `targets`:
/// separable squared-distance transform (Felzenszwalb & Huttenlocher, 2012), one axis at a time.
fn distance_to(targets: &Array3<bool>, spacing: [f64; 3]) -> Array3<f64> {
    let big = 1e20;
    let mut d = targets.mapv(|t| if t { 0.0 } else { big });
    for (axis, &step) in spacing.iter().enumerate() {
        for mut lane in d.lanes_mut(ndarray::Axis(axis)) {
            let f: Vec<f64> = lane.iter().copied().collect();
            let out = squared_edt_1d(&f, step * step);
            for (dst, v) in lane.iter_mut().zip(out) {
                *dst = v;
            }
        }
    }
    d.mapv_inplace(f64::sqrt);
    d
}

/// Lower envelope of parabolas: out[q] = min_p (f[p] + w (q - p)^2).
fn squared_edt_1d(f: &[f64], w: f64) -> Vec<f64> {
    let n = f.len();
    let mut v = vec![0usize; n];
    let mut z = vec![0f64; n + 1];
    let mut k = 0usize;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let inter = |q: usize, p: usize| {
        ((f[q] + w * (q * q) as f64) - (f[p] + w * (p * p) as f64))
            / (2.0 * w * (q as f64 - p as f64))
    };
    for q in 1..n {
        let mut s = inter(q, v[k]);
        while s <= z[k] {
            k -= 1;
            s = inter(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    let mut out = vec![0f64; n];
    k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let dq = q as f64 - v[k] as f64;
        *o = w * dq * dq + f[v[k]];
    }
    out
}

/// Linear-interpolated percentile (numpy's default).
fn percentile(values: &mut [f64], pct: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let pos = (values.len() - 1) as f64 * pct / 100.0;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// Mean of region scores over cases (NaN-free inputs).
pub fn mean_scores(scores: &[RegionScores]) -> RegionScores {
    if scores.is_empty() {
        return RegionScores::default();
    }
    let n = scores.len() as f64;
    RegionScores::new(
        scores.iter().map(|s| s.wt).sum::<f64>() / n,
        scores.iter().map(|s| s.tc).sum::<f64>() / n,
        scores.iter().map(|s| s.et).sum::<f64>() / n,
    )
}

/// One case's evaluation: region Dice and HD95, per-modality Dice, lesion-wise scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseScores {
    pub case: String,
    pub dice: RegionScores,
    pub hd95: RegionScores,
    pub modality_dice: BTreeMap<String, RegionScores>,
    /// The authors' protocol, for comparison only: Dice of one axial slice containing tumour,
    /// picked at random (seeded by the case id). None when the case has no tumour.
    pub authors_random_slice_dice: Option<RegionScores>,
    /// Lesion-wise Dice / HD95 per region (see `metrics::lesion`).
    #[serde(default)]
    pub lesion: LesionReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_follows_the_brats_convention_for_empty_regions() {
        assert_eq!(dice_from_counts(0, 0, 0), 1.0);
        assert_eq!(dice_from_counts(0, 5, 0), 0.0);
        assert_eq!(dice_from_counts(0, 0, 5), 0.0);
        assert!((dice_from_counts(3, 4, 6) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn regions_nest_as_in_brats() {
        let truth = [0u8, 1, 2, 3, 3, 0];
        let pred = [0u8, 1, 2, 2, 3, 3];
        let s = dice_scores(&pred, &truth);
        // WT: pred {1..5}, truth {1..4}: 2*4/(5+4)
        assert!((s.wt - 8.0 / 9.0).abs() < 1e-12);
        // TC: pred {1,4,5}, truth {1,3,4}: 2*2/6
        assert!((s.tc - 4.0 / 6.0).abs() < 1e-12);
        // ET: pred {4,5}, truth {3,4}: 2*1/4
        assert!((s.et - 0.5).abs() < 1e-12);
    }

    #[test]
    fn hd95_of_shifted_cubes_is_the_shift() {
        let mut a = Array3::from_elem((20, 20, 20), false);
        let mut b = a.clone();
        for x in 5..10 {
            for y in 5..10 {
                for z in 5..10 {
                    a[[x, y, z]] = true;
                    b[[x + 3, y, z]] = true;
                }
            }
        }
        let legacy = Hd95Definition::MaxOfDirected;
        let h = hd95_with(&a.view(), &b.view(), [1.0, 1.0, 1.0], legacy);
        assert!((h - 3.0).abs() < 1e-9, "{h}");
        let h2 = hd95_with(&a.view(), &b.view(), [2.0, 1.0, 1.0], legacy);
        assert!((h2 - 6.0).abs() < 1e-9, "anisotropic spacing: {h2}");
        assert_eq!(hd95(&a.view(), &a.view(), [1.0; 3]), 0.0);
        let empty = Array3::from_elem((20, 20, 20), false);
        assert_eq!(
            hd95_with(&a.view(), &empty.view(), [1.0; 3], legacy),
            HD95_EMPTY_PENALTY
        );
        assert_eq!(hd95(&a.view(), &empty.view(), [1.0; 3]), BRATS_HD95_PENALTY);
        assert_eq!(hd95(&empty.view(), &empty.view(), [1.0; 3]), 0.0);
        // Pooled: the faces that moved (x) are 3 away, the side faces mostly closer.
        let pooled = hd95(&a.view(), &b.view(), [1.0; 3]);
        assert!(pooled <= h + 1e-9, "pooled {pooled} vs max-of-directed {h}");
    }

    #[test]
    fn pooled_hd95_can_be_far_below_the_max_of_directed_one() {
        // B = A plus a small distant blob. A's surface lies on B's (distance 0 both ways); the
        // blob's 12 voxels are 7 % of B's surface (so B -> A's own 95th percentile is far) but
        // under 5 % of both sets pooled (so the official HD95 is 0).
        let mut a = Array3::from_elem((30, 30, 30), false);
        for x in 5..11 {
            for y in 5..11 {
                for z in 5..11 {
                    a[[x, y, z]] = true;
                }
            }
        }
        let mut b = a.clone();
        for x in 20..22 {
            for y in 20..22 {
                for z in 20..23 {
                    b[[x, y, z]] = true;
                }
            }
        }
        let pooled = hd95(&a.view(), &b.view(), [1.0; 3]);
        let legacy = hd95_with(
            &a.view(),
            &b.view(),
            [1.0; 3],
            Hd95Definition::MaxOfDirected,
        );
        assert_eq!(pooled, 0.0);
        assert!(legacy > 15.0, "max of directed {legacy}");
    }

    #[test]
    fn cropping_to_the_masks_changes_no_distance() {
        // A mask touching the grid border: the border is a surface there, as in scipy.
        let mut a = Array3::from_elem((12, 10, 8), false);
        let mut b = a.clone();
        for x in 0..5 {
            for y in 0..4 {
                for z in 2..6 {
                    a[[x, y, z]] = true;
                    b[[x + 2, y + 1, z]] = true;
                }
            }
        }
        let (ca, cb) = crop_pair(&a.view(), &b.view());
        let full = {
            let (sa, sb) = (surface(&a.view()), surface(&b.view()));
            (
                sa.iter().filter(|&&v| v).count(),
                sb.iter().filter(|&&v| v).count(),
            )
        };
        let cropped = {
            let (sa, sb) = (surface(&ca.view()), surface(&cb.view()));
            (
                sa.iter().filter(|&&v| v).count(),
                sb.iter().filter(|&&v| v).count(),
            )
        };
        assert_eq!(full, cropped);
    }

    #[test]
    fn edt_matches_brute_force() {
        let f = [1e20, 0.0, 1e20, 1e20, 1e20, 0.0, 1e20];
        let out = squared_edt_1d(&f, 1.0);
        assert_eq!(out, vec![1.0, 0.0, 1.0, 4.0, 1.0, 0.0, 1.0]);
    }
}
