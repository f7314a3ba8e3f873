//! Inference on one study: a BraTS case folder, four modality files, or one MSD 4-D file, of any
//! in-plane size. Writes the segmentation with the input's geometry and BraTS label values, plus a
//! JSON summary (region volumes in ml, timings).

use crate::data::{
    case_from_paths, load_study, write_label_volume_as, OutputLabels, LABEL_ENHANCING, LABEL_NCR,
    LABEL_OEDEMA,
};
use crate::events::{now, Event, EventSink};
use crate::run::open_run;
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
    let trainer = open_run(run_dir, device)?;
    progress("loading study", 0.05);
    let source = case_from_paths(inputs)?;
    let study = load_study(&source).with_context(|| format!("loading the study {}", source.id))?;
    let seconds_load = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let pred = trainer
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
        method: trainer.cfg.method.to_string(),
        device: crate::device::describe(trainer.device),
        seconds_load,
        seconds_predict,
        seconds_write,
        seconds_total: t0.elapsed().as_secs_f64(),
    })
}
