//! Feature datasets as tensors: a split read into memory, its batches, and writing a split from
//! tensors (the files' format, checks and the synthetic sets are the core crate's `data::features`).

use cggm_core::data::features::safetensors::SafetensorsFile;
use cggm_core::data::features::*;
use cggm_core::task::TaskKind;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One split in memory, for the modalities asked for.
pub struct FeatureSplit {
    pub n: usize,
    /// Per selected modality: [N, T, D] float.
    pub features: Vec<Tensor>,
    /// Per selected modality: [N] int64 valid steps, when the file has them.
    pub lengths: Vec<Option<Tensor>>,
    /// [N] int64 (classification) or float (regression).
    pub labels: Tensor,
}

impl FeatureSplit {
    /// Checks, then reads `split` of `dir`, only the tensors of `modalities` (dataset indices).
    pub fn load(
        dir: &Path,
        spec: &DatasetSpec,
        split: &str,
        modalities: &[usize],
    ) -> Result<Self, FeatureError> {
        let path = split_path(dir, split);
        let n = check_split(spec, &path)?;
        let file = SafetensorsFile::open(&path)?;
        let mut features = Vec::new();
        let mut lengths = Vec::new();
        for &i in modalities {
            let m = &spec.modalities[i];
            let values = file.read_f32(&m.name)?;
            features.push(Tensor::from_slice(&values).view([
                n as i64,
                m.steps() as i64,
                m.dim as i64,
            ]));
            let len_name = format!("{}.lengths", m.name);
            lengths.push(match file.info(&len_name) {
                Some(_) => {
                    let v: Vec<i64> = file
                        .read_f64(&len_name)?
                        .into_iter()
                        .map(|x| x as i64)
                        .collect();
                    Some(Tensor::from_slice(&v))
                }
                None => None,
            });
        }
        let raw = file.read_f64(LABELS)?;
        let labels = match spec.task {
            TaskKind::Classification => {
                Tensor::from_slice(&raw.iter().map(|v| *v as i64).collect::<Vec<_>>())
            }
            _ => Tensor::from_slice(&raw.iter().map(|v| *v as f32).collect::<Vec<_>>()),
        };
        Ok(Self {
            n,
            features,
            lengths,
            labels,
        })
    }

    /// Samples `idx` on `device`: per-modality features [B, T, D], padding masks [B, T] (true =
    /// padding) and labels [B].
    pub fn batch(&self, idx: &[i64], device: Device) -> FeatureBatch {
        let index = Tensor::from_slice(idx);
        let features = self
            .features
            .iter()
            .map(|f| f.index_select(0, &index).to_device(device))
            .collect();
        let padding = self
            .features
            .iter()
            .zip(&self.lengths)
            .map(|(f, l)| {
                l.as_ref().map(|l| {
                    let t = f.size()[1];
                    let steps = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0);
                    steps
                        .ge_tensor(&l.index_select(0, &index).unsqueeze(1))
                        .to_device(device)
                })
            })
            .collect();
        FeatureBatch {
            features,
            padding,
            labels: self.labels.index_select(0, &index).to_device(device),
        }
    }
}

/// A batch of feature samples: the model's input and the labels.
pub struct FeatureBatch {
    pub features: Vec<Tensor>,
    pub padding: Vec<Option<Tensor>>,
    pub labels: Tensor,
}

/// Writes one split file (used by `cggm synth` and the tests). `features[i]` is [N, T, D] float.
pub fn write_split(
    path: &Path,
    names: &[String],
    features: &[Tensor],
    labels: &Tensor,
) -> Result<(), tch::TchError> {
    let mut named: Vec<(&str, Tensor)> = names
        .iter()
        .map(|s| s.as_str())
        .zip(features.iter().map(|t| t.to_kind(Kind::Float).contiguous()))
        .collect();
    named.push((LABELS, labels.contiguous()));
    Tensor::write_safetensors(&named, path)
}
