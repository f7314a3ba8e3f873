//! `cggm eval`'s region and lesion-wise Dice / HD95 against the official BraTS evaluation package
//! (`brats-evaluation` on PyPI, on panoptica), run through `$CGGM_PYTHON` on generated NIfTI cases
//! with several lesions, empty regions and anisotropic voxels.
//!
//! What is compared with what:
//! - region Dice: the package's `global_bin_dsc`;
//! - region HD95 (mm): the package's own HD95 function (`panoptica.metrics.hausdorff_distance.
//!   _compute_hausdorff_distance95`) with the file's voxel size, and, on isotropic cases, its
//!   `global_bin_hd95` itself (which panoptica 2.x computes without the voxel size: in voxels);
//!   no overlap or one empty mask: the package's infinity, parsed as 373;
//! - lesion-wise Dice and HD95: `brats_evaluation.parse_mets_results` with every lesion counted
//!   (volume threshold 0) over panoptica's per-lesion results, plus the matched / missed / spurious
//!   counts. Panoptica gets the arrays with the header's voxel size here: given the NIfTI files
//!   themselves, panoptica 2.1.7 applies the voxel size to per-lesion HD95 in reversed axis order
//!   (z, y, x on an x, y, z array), which only isotropic cases survive.
//!
//! Where the package answers NaN (a region empty in both, or without a true lesion) our BraTS
//! convention is checked instead.

use cggm_trainer::data::synth::synthetic_header;
use cggm_trainer::data::{read_volume, voxel_spacing_mm, write_volume_u8};
use cggm_trainer::metrics::lesion::lesion_scores;
use cggm_trainer::metrics::{dice_scores, hd95_scores, Region, BRATS_HD95_PENALTY};
use ndarray::Array3;
use std::path::Path;
use std::process::Command;

const SIZE: [usize; 3] = [40, 36, 24];

/// Paints an axis-aligned ellipsoid of `label` over whatever is there (paint outer regions first).
fn blob(a: &mut Array3<u8>, centre: [f64; 3], radii: [f64; 3], label: u8) {
    for ((x, y, z), v) in a.indexed_iter_mut() {
        let d = ((x as f64 - centre[0]) / radii[0]).powi(2)
            + ((y as f64 - centre[1]) / radii[1]).powi(2)
            + ((z as f64 - centre[2]) / radii[2]).powi(2);
        if d <= 1.0 {
            *v = label;
        }
    }
}

struct Case {
    name: &'static str,
    spacing: [f32; 3],
    truth: Array3<u8>,
    pred: Array3<u8>,
}

fn cases() -> Vec<Case> {
    let empty = || Array3::<u8>::zeros((SIZE[0], SIZE[1], SIZE[2]));
    let mut out = Vec::new();

    // Three tumours; the prediction finds two (shifted, resized), misses one, adds a spurious one.
    let (mut t, mut p) = (empty(), empty());
    blob(&mut t, [10.0, 10.0, 8.0], [6.0, 5.0, 4.0], 2);
    blob(&mut t, [10.0, 10.0, 8.0], [3.0, 3.0, 2.0], 3);
    blob(&mut t, [10.0, 10.0, 8.0], [1.5, 1.5, 1.0], 1);
    blob(&mut t, [28.0, 24.0, 14.0], [5.0, 6.0, 4.0], 2);
    blob(&mut t, [28.0, 24.0, 14.0], [2.0, 2.0, 2.0], 3);
    blob(&mut t, [30.0, 8.0, 18.0], [3.0, 3.0, 2.0], 2);
    blob(&mut p, [11.0, 10.0, 9.0], [6.0, 6.0, 4.0], 2);
    blob(&mut p, [11.0, 11.0, 8.0], [3.0, 2.0, 2.0], 3);
    blob(&mut p, [27.0, 25.0, 13.0], [4.0, 5.0, 4.0], 2);
    blob(&mut p, [27.0, 25.0, 13.0], [2.0, 1.0, 1.0], 1);
    blob(&mut p, [8.0, 30.0, 4.0], [2.0, 2.0, 2.0], 3);
    out.push(Case {
        name: "BraTS-00001-000",
        spacing: [1.0, 1.0, 1.0],
        truth: t.clone(),
        pred: p.clone(),
    });
    // The same on anisotropic voxels.
    out.push(Case {
        name: "BraTS-00002-000",
        spacing: [0.9, 1.3, 2.5],
        truth: t,
        pred: p,
    });

    // No enhancing tumour in the truth, some predicted; no core predicted at all.
    let (mut t, mut p) = (empty(), empty());
    blob(&mut t, [20.0, 18.0, 12.0], [8.0, 7.0, 5.0], 2);
    blob(&mut t, [20.0, 18.0, 12.0], [3.0, 3.0, 2.0], 1);
    blob(&mut p, [21.0, 18.0, 12.0], [7.0, 7.0, 5.0], 2);
    blob(&mut p, [5.0, 5.0, 5.0], [1.5, 1.5, 1.5], 3);
    out.push(Case {
        name: "BraTS-00003-000",
        spacing: [1.2, 1.2, 3.0],
        truth: t,
        pred: p,
    });

    // Two separate tumours predicted as one merged blob; ET empty in both.
    let (mut t, mut p) = (empty(), empty());
    blob(&mut t, [12.0, 18.0, 12.0], [4.0, 4.0, 3.0], 2);
    blob(&mut t, [24.0, 18.0, 12.0], [4.0, 4.0, 3.0], 2);
    blob(&mut p, [18.0, 18.0, 12.0], [11.0, 4.0, 3.0], 2);
    out.push(Case {
        name: "BraTS-00004-000",
        spacing: [1.0, 1.0, 1.0],
        truth: t,
        pred: p,
    });
    out
}

fn write(path: &Path, labels: &Array3<u8>, spacing: [f32; 3]) {
    let mut h = synthetic_header(SIZE);
    h.pixdim[1..4].copy_from_slice(&spacing);
    h.srow_x[0] = -spacing[0];
    h.srow_y[1] = -spacing[1];
    h.srow_z[2] = spacing[2];
    write_volume_u8(path, &labels.view(), &h).unwrap();
}

const ORACLE: &str = r#"
import contextlib, csv, io, json, math, sys, warnings
warnings.filterwarnings("ignore")
import nibabel as nib, numpy as np
import brats_evaluation as be
from panoptica import Panoptica_Evaluator
from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95
folder, names = sys.argv[1], sys.argv[2:]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    ev = Panoptica_Evaluator.load_from_config(str(be.config_path("gli")))
regions = {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]}
def global_hd95(v):
    # The package's parser: infinity -> 373; NaN (both empty) stays undefined.
    return None if v is None or math.isnan(v) else (373.0 if math.isinf(v) else float(v))
out = {}
for name in names:
    ref, pred = f"{folder}/{name}_ref.nii.gz", f"{folder}/{name}_pred.nii.gz"
    ref_img, pred_img = nib.load(ref), nib.load(pred)
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    a, b = np.asanyarray(ref_img.dataobj), np.asanyarray(pred_img.dataobj)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        # As the package's CLI runs: from the files.
        r = be.evaluate_single_exam(pred, ref, name, ev)
        # The same arrays with the header's voxel size passed explicitly: from NIfTI files
        # panoptica 2.1.7 applies the voxel size to per-lesion HD95 in reversed axis order.
        r_mm = {k: v.to_dict(True) for k, v in ev.evaluate(b, a, voxelspacing=spacing).items()}
        r_mm["subject_name"] = name
        json.dump({"metrics": [r_mm], "missings": []}, open(f"{folder}/{name}.json", "w"), default=float)
        be.parse_mets_results(f"{folder}/{name}.json", 0.0, 0.1, f"{folder}/{name}.csv")
    row = list(csv.DictReader(open(f"{folder}/{name}.csv")))[0]
    per = {}
    for k, labels in regions.items():
        ra, pb = np.isin(a, labels), np.isin(b, labels)
        hd_mm = None
        if ra.any() and pb.any() and (ra & pb).any():
            hd_mm = float(_compute_hausdorff_distance95(ra, pb, voxelspacing=spacing))
        num = lambda key: None if row.get(key, "") in ("", "nan") or math.isnan(float(row[key])) else float(row[key])
        per[k] = {
            "global_dsc": r[k]["global_bin_dsc"] if not math.isnan(r[k]["global_bin_dsc"]) else None,
            "global_hd95": global_hd95(r[k]["global_bin_hd95"]),
            "hd95_mm": hd_mm,
            "lesion_dsc": num(f"lesionwise_dsc_mean_{k}"),
            "lesion_hd95": num(f"lesionwise_hd95_mean_{k}"),
            "tp": r[k]["tp"], "fp": r[k]["fp"], "fn": r[k]["fn"],
        }
    out[name] = {"spacing": spacing, "regions": per}
print(json.dumps(out))
"#;

fn close(ours: f64, theirs: f64, what: &str) {
    assert!(
        (ours - theirs).abs() <= 1e-6 * theirs.abs().max(1.0),
        "{what}: ours {ours}, the package's {theirs}"
    );
}

#[test]
fn region_and_lesion_wise_scores_agree_with_the_official_brats_package() {
    let python = std::env::var("CGGM_PYTHON")
        .ok()
        .or(option_env!("CGGM_BUILD_PYTHON").map(String::from))
        .expect(
        "CGGM_PYTHON is unset: run the tests through scripts/with-torch.sh, which installs the \
         official brats-evaluation package into the project's Python environment",
    );
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    for c in &cases {
        write(
            &tmp.path().join(format!("{}_ref.nii.gz", c.name)),
            &c.truth,
            c.spacing,
        );
        write(
            &tmp.path().join(format!("{}_pred.nii.gz", c.name)),
            &c.pred,
            c.spacing,
        );
    }
    let output = Command::new(&python)
        .arg("-c")
        .arg(ORACLE)
        .arg(tmp.path())
        .args(cases.iter().map(|c| c.name))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the official package failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let oracle: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut compared = 0;
    for c in &cases {
        // Read back as `cggm eval` does: the project's reader and pixdim rule.
        let (header, truth) =
            read_volume(&tmp.path().join(format!("{}_ref.nii.gz", c.name))).unwrap();
        let (_, pred) = read_volume(&tmp.path().join(format!("{}_pred.nii.gz", c.name))).unwrap();
        let to_u8 = |a: ndarray::ArrayD<f32>| {
            a.into_dimensionality::<ndarray::Ix3>()
                .unwrap()
                .mapv(|v| v as u8)
        };
        let (truth, pred) = (to_u8(truth), to_u8(pred));
        assert_eq!(truth, c.truth);
        let spacing = voxel_spacing_mm(&header);
        let theirs = &oracle[c.name];
        for (k, s) in spacing.iter().enumerate() {
            close(*s, theirs["spacing"][k].as_f64().unwrap(), "voxel size");
        }
        let flat = |a: &Array3<u8>| a.iter().copied().collect::<Vec<u8>>();
        let dice = dice_scores(&flat(&pred), &flat(&truth));
        let hd95 = hd95_scores(&pred.view(), &truth.view(), spacing);
        let lesion = lesion_scores(&pred.view(), &truth.view(), spacing);
        let isotropic = c.spacing == [1.0, 1.0, 1.0];
        for (region, d, h, l) in [
            (Region::Wt, dice.wt, hd95.wt, &lesion.wt),
            (Region::Tc, dice.tc, hd95.tc, &lesion.tc),
            (Region::Et, dice.et, hd95.et, &lesion.et),
        ] {
            let r = &theirs["regions"][region.name()];
            let what = |m: &str| format!("{} {} {m}", c.name, region.name());
            let t_any = truth.iter().any(|&v| region.contains(v));
            let p_any = pred.iter().any(|&v| region.contains(v));
            match r["global_dsc"].as_f64() {
                Some(v) => close(d, v, &what("Dice")),
                None => assert_eq!((t_any, p_any, d), (false, false, 1.0), "{}", what("Dice")),
            }
            match (r["hd95_mm"].as_f64(), t_any || p_any) {
                (Some(v), _) => close(h, v, &what("HD95 (mm)")),
                (None, true) => close(h, BRATS_HD95_PENALTY, &what("HD95 penalty")),
                (None, false) => assert_eq!(h, 0.0),
            }
            if isotropic {
                if let Some(v) = r["global_hd95"].as_f64() {
                    close(h, v, &what("global HD95"));
                }
            }
            assert_eq!(
                (l.tp, l.fp, l.fn_),
                (
                    r["tp"].as_u64().unwrap() as usize,
                    r["fp"].as_u64().unwrap() as usize,
                    r["fn"].as_u64().unwrap() as usize
                ),
                "{}",
                what("lesion counts")
            );
            match (r["lesion_dsc"].as_f64(), r["lesion_hd95"].as_f64()) {
                (Some(ld), Some(lh)) => {
                    close(l.dice, ld, &what("lesion-wise Dice"));
                    close(l.hd95, lh, &what("lesion-wise HD95"));
                    compared += 1;
                }
                // No true lesion: the package says NaN, BraTS 2023 scores 1/0 or 0/373.
                _ => assert!(
                    (l.dice, l.hd95) == (1.0, 0.0) || (l.dice, l.hd95) == (0.0, BRATS_HD95_PENALTY),
                    "{}: {l:?}",
                    what("lesion-wise without a true lesion")
                ),
            }
        }
    }
    assert!(compared >= 6, "only {compared} lesion-wise comparisons");
}
