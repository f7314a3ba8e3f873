//! Inference on one study: a BraTS case folder, four modality files, or one MSD 4-D file, of any
//! in-plane size. Writes the segmentation with the input's geometry and BraTS label values, plus a
//! JSON summary (region volumes in ml, timings).

use crate::data::{
    case_from_paths, load_study, write_label_volume_as, OutputLabels, Study, LABEL_ENHANCING,
    LABEL_NCR, LABEL_OEDEMA,
};
use crate::events::{now, Event, EventSink};
use crate::model::Model;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionVolumes {
    /// Whole tumour (NCR + oedema + enhancing).
    pub wt: f64,
    /// Tumour core (NCR + enhancing).
    pub tc: f64,
    pub et: f64,
    pub ncr: f64,
    pub oedema: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InferSummary {
    pub case: String,
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    /// The label numbering of `output`.
    #[serde(default)]
    pub labels: OutputLabels,
    pub shape: [usize; 3],
    pub voxel_volume_ml: f64,
    pub volumes_ml: RegionVolumes,
    pub checkpoint: PathBuf,
    pub method: String,
    pub device: String,
    pub seconds_load: f64,
    pub seconds_predict: f64,
    pub seconds_write: f64,
    pub seconds_total: f64,
}

pub fn region_volumes(labels: &ndarray::Array3<u8>, voxel_ml: f64) -> RegionVolumes {
    let count = |c: u8| labels.iter().filter(|&&v| v == c).count() as f64 * voxel_ml;
    let (ncr, ed, et) = (
        count(LABEL_NCR),
        count(LABEL_OEDEMA),
        count(LABEL_ENHANCING),
    );
    RegionVolumes {
        wt: ncr + ed + et,
        tc: ncr + et,
        et,
        ncr,
        oedema: ed,
    }
}

pub fn infer(
    run_dir: &Path,
    inputs: &[PathBuf],
    out: &Path,
    labels: OutputLabels,
    device: Option<&str>,
    events: &EventSink,
) -> Result<InferSummary> {
    let result = infer_inner(run_dir, inputs, out, labels, device, events);
    if let Err(e) = &result {
        events.emit(&Event::Failed {
            time: now(),
            reason: format!("{e:#}"),
        });
    }
    result
}

fn infer_inner(
    run_dir: &Path,
    inputs: &[PathBuf],
    out: &Path,
    labels: OutputLabels,
    device: Option<&str>,
    events: &EventSink,
) -> Result<InferSummary> {
    let t0 = Instant::now();
    let progress = |stage: &str, fraction: f64| {
        events.emit(&Event::Progress {
            time: now(),
            stage: stage.to_string(),
            fraction,
        });
    };
    progress("loading model", 0.0);
    let model = Model::open_segmentation(run_dir, device)?;
    progress("loading study", 0.05);
    let source = case_from_paths(inputs)?;
    let study = load_study(&source).with_context(|| format!("loading the study {}", source.id))?;
    let seconds_load = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let pred = model
        .predictor()
        .predict(&study, false, |f| progress("predicting", 0.1 + 0.85 * f));
    let seconds_predict = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    write_label_volume_as(out, &pred.fused.view(), &study.header, labels)?;
    let seconds_write = t2.elapsed().as_secs_f64();
    progress("done", 1.0);
    let (nx, ny, nz) = pred.fused.dim();
    Ok(InferSummary {
        case: source.id.clone(),
        inputs: source.paths(),
        output: out.to_path_buf(),
        labels,
        shape: [nx, ny, nz],
        voxel_volume_ml: study.voxel_volume_ml,
        volumes_ml: region_volumes(&pred.fused, study.voxel_volume_ml),
        checkpoint: run_dir.to_path_buf(),
        method: model.cfg.method.to_string(),
        device: crate::device::describe(model.device),
        seconds_load,
        seconds_predict,
        seconds_write,
        seconds_total: t0.elapsed().as_secs_f64(),
    })
}

/// One case of a batch inference (`cggm infer --input DIR`): a row of its `summary.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchCase {
    pub case: String,
    /// The segmentation written, absent when the case could not be segmented.
    pub output: Option<PathBuf>,
    pub volumes_ml: Option<RegionVolumes>,
    /// Dice of the segmentation against the case's own label, where it has one.
    pub dice: Option<crate::events::RegionScores>,
    /// Why the case was not segmented (the loader's message).
    pub error: Option<String>,
    pub seconds: f64,
}

/// File name of a batch inference's table, in its output folder.
pub const BATCH_SUMMARY: &str = "summary.csv";

/// Segments every case of the dataset folder `input` (any layout `cggm validate` reads) into
/// `out_dir/<case>_seg.nii.gz` with one loaded model, and writes `out_dir/summary.csv`: region
/// volumes per case, Dice against the case's label where it has one, and the error of a case that
/// could not be loaded (the others go on). `done(k, n, case)` is told after each case.
pub fn infer_dataset(
    run_dir: &Path,
    input: &Path,
    out_dir: &Path,
    labels: OutputLabels,
    device: Option<&str>,
    done: &mut dyn FnMut(usize, usize, &BatchCase),
) -> Result<Vec<BatchCase>> {
    let report = crate::data::discover(input);
    if report.cases.is_empty() {
        anyhow::bail!(
            "no case to segment in {} (layout: {}){}",
            input.display(),
            report.layout.describe(),
            problems_suffix(&report.problems)
        );
    }
    let model = Model::open_segmentation(run_dir, device)?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating the output folder {}", out_dir.display()))?;
    let total = report.cases.len() + report.problems.len();
    let mut rows: Vec<BatchCase> = report
        .problems
        .iter()
        .map(|p| failed_case(p.case.clone(), p.to_string(), 0.0))
        .collect();
    for row in &rows {
        done(rows.len(), total, row);
    }
    for source in &report.cases {
        let started = Instant::now();
        let row = match load_study(source) {
            Err(e) => failed_case(
                source.id.clone(),
                e.to_string(),
                started.elapsed().as_secs_f64(),
            ),
            Ok(study) => segment_case(&model, &study, &source.id, out_dir, labels, started)?,
        };
        rows.push(row);
        done(rows.len(), total, rows.last().expect("just pushed"));
    }
    rows.sort_by(|a, b| a.case.cmp(&b.case));
    write_batch_summary(&out_dir.join(BATCH_SUMMARY), &rows)?;
    Ok(rows)
}

/// ": reason; reason" of the problems found while discovering cases (empty without any).
fn problems_suffix(problems: &[impl std::fmt::Display]) -> String {
    let reasons: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

/// The row of a case that could not be segmented.
fn failed_case(case: String, error: String, seconds: f64) -> BatchCase {
    BatchCase {
        case,
        output: None,
        volumes_ml: None,
        dice: None,
        error: Some(error),
        seconds,
    }
}

/// Segments one loaded case into `out_dir/<id>_seg.nii.gz`; its row (Dice when it has a label).
fn segment_case(
    model: &Model,
    study: &Study,
    id: &str,
    out_dir: &Path,
    labels: OutputLabels,
    started: Instant,
) -> Result<BatchCase> {
    let pred = model.predictor().predict(study, false, |_| {});
    let out = out_dir.join(format!("{id}_seg.nii.gz"));
    write_label_volume_as(&out, &pred.fused.view(), &study.header, labels)?;
    let dice = study
        .label
        .as_ref()
        .map(|truth| crate::metrics::dice_scores(&to_vec(&pred.fused), &to_vec(truth)));
    Ok(BatchCase {
        case: id.to_string(),
        output: Some(out),
        volumes_ml: Some(region_volumes(&pred.fused, study.voxel_volume_ml)),
        dice,
        error: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Voxels in standard (C) order, whatever the array's memory layout.
fn to_vec(volume: &ndarray::Array3<u8>) -> Vec<u8> {
    volume.iter().copied().collect()
}

fn write_batch_summary(path: &Path, rows: &[BatchCase]) -> Result<()> {
    let mut text = String::from(
        "case,output,wt_ml,tc_ml,et_ml,ncr_ml,oedema_ml,dice_wt,dice_tc,dice_et,seconds,error\n",
    );
    let number = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    for row in rows {
        let v = row.volumes_ml.as_ref();
        let d = row.dice.as_ref();
        let fields = [
            csv_field(&row.case),
            csv_field(
                &row.output
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            number(v.map(|v| v.wt)),
            number(v.map(|v| v.tc)),
            number(v.map(|v| v.et)),
            number(v.map(|v| v.ncr)),
            number(v.map(|v| v.oedema)),
            number(d.map(|d| d.wt)),
            number(d.map(|d| d.tc)),
            number(d.map(|d| d.et)),
            format!("{:.2}", row.seconds),
            csv_field(row.error.as_deref().unwrap_or("")),
        ];
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    crate::checkpoint::write_bytes_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
