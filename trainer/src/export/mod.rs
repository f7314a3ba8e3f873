//! `cggm export`: a trained run's model as a file other runtimes load. The one format is ONNX
//! (opset 17), written by our own protobuf encoder (`onnx_proto`, no exporter in libtorch):
//!
//! - segmentation runs: the folded inference network `cggm infer` runs (batch norm folded into the
//!   convolutions), fp32, on axial slices: input `image` [batch, M, height, width], outputs
//!   `logits` [batch, classes, height, width] and `labels` [batch, height, width] (uint8);
//! - feature runs (classification, regression): the feature model in eval mode: per modality
//!   `<name>` [batch, steps, dim] and `<name>_lengths` [batch], outputs `logits` [batch, outputs]
//!   and, for classification, `labels` [batch].
//!
//! The preprocessing, modality order, label values and configuration are written into the
//! model's `metadata_props` (keys `cggm.*`, see README "ONNX export"); `scripts/onnx_infer.py`
//! runs a segmentation export on a NIfTI study the way `cggm infer` does.

pub mod features;
pub mod onnx;
pub mod onnx_proto;
pub mod segmentation;

use self::onnx::GraphBuilder;
use crate::checkpoint::{self, checkpoint_dir, CheckpointState};
use crate::config::TrainConfig;
use crate::data::features::DatasetSpec;
use crate::data::{OutputLabels, LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA, NUM_CLASSES};
use crate::model::folded::FoldedSegmenter;
use crate::model::Model;
use crate::task::TaskKind;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A file format `cggm export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Onnx,
}

impl std::str::FromStr for ExportFormat {
    type Err = cggm_core::unknown_name::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "onnx" => Ok(ExportFormat::Onnx),
            other => Err(cggm_core::unknown_name::UnknownName::new(
                "export format",
                other,
                "the format cggm exports is onnx",
            )),
        }
    }
}

/// What `export` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportSummary {
    pub task: TaskKind,
    pub out: PathBuf,
    /// `best` or `last`: the checkpoint exported.
    pub checkpoint: String,
    pub epoch: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub bytes: usize,
}

/// Metadata key prefix of every `metadata_props` entry we write.
pub const METADATA_PREFIX: &str = "cggm.";

/// The checkpoint `load_best_or_last` picks, or a clear error when the run has none yet.
fn checkpoint_name(run_dir: &Path) -> Result<&'static str> {
    if let Some(name) = checkpoint::best_or_last(run_dir) {
        return Ok(name);
    }
    let dir = checkpoint_dir(run_dir);
    bail!(
        "{} has no checkpoint yet (neither {} nor {}): train it (or let its first epoch finish) before exporting",
        run_dir.display(),
        dir.join("best.json").display(),
        dir.join("last.json").display()
    )
}

fn entry(key: &str, value: impl Into<String>) -> (String, String) {
    (format!("{METADATA_PREFIX}{key}"), value.into())
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("metadata serialises")
}

/// Entries every export carries.
fn common_metadata(
    task: TaskKind,
    state: &CheckpointState,
    name: &str,
    run_dir: &Path,
) -> Vec<(String, String)> {
    vec![
        entry("format_version", "1"),
        entry("task", task.to_string()),
        entry("method", state.config.method.to_string()),
        entry("preset", state.config.preset.clone()),
        entry("checkpoint", name),
        entry("epoch", state.epoch.to_string()),
        entry("run", run_dir.display().to_string()),
    ]
}

/// The network's total stride: slices are zero-padded to its multiple (`predict::STRIDE`).
pub const SPATIAL_MULTIPLE: usize = 16;

fn segmentation_metadata(modalities: &[String], classes: i64) -> Vec<(String, String)> {
    let internal = [0, LABEL_NCR, LABEL_OEDEMA, LABEL_ENHANCING];
    let values = |labels: OutputLabels| internal.map(|c| labels.value_of(c));
    vec![
        entry("modalities", modalities.join(",")),
        entry(
            "inputs",
            json(&serde_json::json!({
                segmentation::INPUT: {"dtype": "float32", "shape": ["batch", modalities.len(), "height", "width"]},
            })),
        ),
        entry(
            "outputs",
            json(&serde_json::json!({
                segmentation::LOGITS: {"dtype": "float32", "shape": ["batch", classes, "height", "width"]},
                segmentation::LABELS: {"dtype": "uint8", "shape": ["batch", "height", "width"]},
            })),
        ),
        entry("normalisation", "zscore-nonzero"),
        entry(
            "normalisation_doc",
            "each modality's volume on its own: mean and standard deviation (population) over its \
             nonzero voxels, (v - mean) / std on those voxels in float32 (std <= 1e-8 counts as \
             1; a voxel that becomes exactly 0 is set to the smallest positive float32), zero \
             voxels stay 0",
        ),
        entry(
            "slicing",
            "axial: the volume [X, Y, Z] is cut along Z; image[n, i] is modality i's slice [X, Y] \
             (height = X, width = Y); only slices with a nonzero voxel are predicted, the others \
             are background",
        ),
        entry("spatial_multiple", SPATIAL_MULTIPLE.to_string()),
        entry(
            "padding",
            "height and width zero-padded at their end to multiples of spatial_multiple; the \
             prediction is cropped back",
        ),
        entry(
            "brain_mask",
            "a voxel where every modality is exactly 0 (after loading) is outside the brain and \
             labelled background",
        ),
        entry(
            "classes",
            json(&["background", "ncr", "oedema", "enhancing"]),
        ),
        entry(
            "label_values",
            json(&serde_json::json!({
                "brats2021": values(OutputLabels::Brats2021),
                "brats2023": values(OutputLabels::Brats2023),
                "msd": values(OutputLabels::Msd),
            })),
        ),
    ]
}

fn write_model(
    out: &Path,
    graph: onnx::GraphBuilder,
    doc: &str,
    metadata: &[(String, String)],
) -> Result<usize> {
    let model = graph.finish("cggm", doc, metadata);
    let bytes = onnx::encode(&model);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder {}", parent.display()))?;
    }
    checkpoint::write_bytes_atomic(out, &bytes)?;
    Ok(bytes.len())
}

/// Exports the best checkpoint of `run_dir` (last if it has no best yet) to `out`.
pub fn export(run_dir: &Path, format: ExportFormat, out: &Path) -> Result<ExportSummary> {
    let ExportFormat::Onnx = format;
    let cfg = checkpoint::read_config(run_dir)?;
    let name = checkpoint_name(run_dir)?;
    let task = cfg.task;
    let built = match task {
        TaskKind::Segmentation => segmentation_model(cfg, run_dir, name)?,
        TaskKind::Classification | TaskKind::Regression => feature_model(cfg, run_dir, name)?,
    };
    let (inputs, outputs) = built.graph.io_names();
    let bytes = write_model(out, built.graph, built.doc, &built.metadata)?;
    Ok(ExportSummary {
        task,
        out: out.to_path_buf(),
        checkpoint: name.to_string(),
        epoch: built.state.epoch,
        inputs,
        outputs,
        bytes,
    })
}

/// A run's model as an ONNX graph, with its description, metadata and the checkpoint it is of.
struct Built {
    graph: GraphBuilder,
    doc: &'static str,
    metadata: Vec<(String, String)>,
    state: CheckpointState,
}

/// The segmentation model of a run, batch norm folded, from checkpoint `name`.
fn segmentation_model(cfg: TrainConfig, run_dir: &Path, name: &'static str) -> Result<Built> {
    let (task, classes) = (cfg.task, cfg.model.classes);
    if classes as usize != NUM_CLASSES {
        bail!("a segmentation model with {classes} classes: the export's label values are for {NUM_CLASSES} (background, NCR, oedema, enhancing)");
    }
    let mut model = Model::segmentation(cfg, Device::Cpu);
    let state = checkpoint::load_best_or_last(run_dir, &mut model)?;
    let net = tch::no_grad(|| FoldedSegmenter::new(&model.network, None, Kind::Float));
    let graph = segmentation::graph(&net, &model.modality_names, classes)?;
    let mut metadata = common_metadata(task, &state, name, run_dir);
    metadata.extend(segmentation_metadata(&model.modality_names, classes));
    metadata.push(entry("model_config", json(&model.cfg.model)));
    let doc = "CGGM Studio brain-tumour segmentation (DeepLabv3+, one encoder per MRI \
               modality, batch norm folded), on axial slices";
    Ok(Built {
        graph,
        doc,
        metadata,
        state,
    })
}

/// The feature model (classification or regression) of a run, in eval mode, from checkpoint
/// `name`; its dataset's description must still be where the run read it.
fn feature_model(cfg: TrainConfig, run_dir: &Path, name: &'static str) -> Result<Built> {
    let task = cfg.task;
    let spec = DatasetSpec::read(&cfg.data).with_context(|| {
        format!(
            "a feature run's model is built from its dataset's description: {} must still be there",
            cfg.data.display()
        )
    })?;
    let mut model = Model::features(cfg, &spec, Device::Cpu)?;
    let state = checkpoint::load_best_or_last(run_dir, &mut model)?;
    let classification = task == TaskKind::Classification;
    let graph = features::graph(&model.network, classification)?;
    let mut metadata = common_metadata(task, &state, name, run_dir);
    let dims: Vec<serde_json::Value> = model
        .modality_names
        .iter()
        .zip(&model.network.encoders)
        .map(|(m, e)| serde_json::json!({"name": m, "dim": e.proj.ws.size()[1], "lengths_input": features::lengths_input(m)}))
        .collect();
    metadata.push(entry("modalities", model.modality_names.join(",")));
    metadata.push(entry("modality_inputs", json(&dims)));
    metadata.push(entry(
        "normalisation",
        "none: the features as stored in the dataset's split files",
    ));
    if classification {
        metadata.push(entry("classes", json(&spec.classes)));
    } else if let Some(range) = spec.label_range {
        metadata.push(entry("label_range", json(&range)));
    }
    metadata.push(entry("model_config", json(&model.cfg.features)));
    let doc = "CGGM Studio multimodal feature model (MulT-style Transformers per modality \
               and a Transformer fusion), eval mode";
    Ok(Built {
        graph,
        doc,
        metadata,
        state,
    })
}
