//! The `dataset.json` of an MSD Task01 or nnU-Net v2 raw folder: which channel is which modality
//! and which label value is which tumour class. Read by [`super::layout`]; the feature datasets'
//! own `dataset.json` (marked `"format": "cggm-features"`) is [`super::features`]'s.

use std::path::Path;

use serde_json::Value;

use super::{
    LabelValues, Layout, Modality, LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA, MSD_CHANNELS,
};

pub const DESCRIPTION_FILE: &str = "dataset.json";
/// Beside `dataset.json`: maps channel numbers to modalities where the dataset's own names are not
/// recognised, e.g. `{"0": "t1ce", "1": "flair", "2": "t1", "3": "t2"}`.
pub const CHANNEL_MAP_FILE: &str = "cggm-channels.json";
/// A description larger than this is not read (the MSD Task01 one is ~100 KB).
const MAX_DESCRIPTION_BYTES: u64 = 16 * 1024 * 1024;

/// What the description of a folder with `imagesTr/` says it is.
#[derive(Debug)]
pub enum TaskDescription {
    Msd(MsdDescription),
    NnUnet(NnUnetDescription),
    /// No `dataset.json`: MSD with its standard channel order, unless the names say nnU-Net.
    Missing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MsdDescription {
    /// Modality of each channel of the 4-D images.
    pub channels: [Modality; 4],
}

impl Default for MsdDescription {
    fn default() -> Self {
        Self {
            channels: MSD_CHANNELS,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NnUnetDescription {
    /// Modality of channel files `_0000`, `_0001`, ….
    pub channels: [Modality; 4],
    pub label_values: LabelValues,
    /// `.nii.gz` or `.nii`.
    pub file_ending: String,
}

/// Why a description was refused: the layout it claims and what is wrong.
pub type DescriptionError = (Layout, DescriptionProblem);

/// What is wrong with a `dataset.json` (or `cggm-channels.json`): each message names the field
/// and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DescriptionProblem {
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    #[error(
        "it is {0} bytes, more than the {MAX_DESCRIPTION_BYTES} a dataset description may have"
    )]
    TooLarge(u64),
    #[error("not valid JSON ({0})")]
    NotJson(serde_json::Error),
    /// A problem of the channel map beside `dataset.json`.
    #[error("{CHANNEL_MAP_FILE}: {0}")]
    ChannelMap(Box<DescriptionProblem>),
    #[error("\"file_ending\" is {0}; CGGM Studio reads NIfTI: \".nii.gz\" or \".nii\"")]
    FileEnding(Value),
    #[error("\"{field}\" must map channel numbers to names, e.g. {{\"0\": \"FLAIR\", \"1\": \"T1w\", \"2\": \"T1gd\", \"3\": \"T2w\"}}")]
    ChannelsNotAMap { field: String },
    #[error("\"{field}\" has channel {key:?}; CGGM Studio needs exactly four channels numbered 0 to 3 (FLAIR, T1, T1ce, T2)")]
    ChannelNumber { field: String, key: String },
    #[error("\"{field}\" names channel {index} {value}, which is not a recognised MRI contrast (FLAIR, T1, T1ce/T1gd, T2 and their BraTS 2023 names t2f, t1n, t1c, t2w); map the channels yourself in {CHANNEL_MAP_FILE} beside dataset.json, e.g. {{\"0\": \"flair\", \"1\": \"t1\", \"2\": \"t1ce\", \"3\": \"t2\"}}")]
    UnknownContrast {
        field: String,
        index: usize,
        value: Value,
    },
    #[error("\"{field}\" names both channel {other} and channel {index} {}; each contrast must appear once", .modality.name())]
    ContrastTwice {
        field: String,
        other: usize,
        index: usize,
        modality: Modality,
    },
    #[error("\"{field}\" has no channel {missing}; CGGM Studio needs the four contrasts FLAIR, T1, T1ce and T2")]
    MissingChannel { field: String, missing: usize },
    #[error("\"labels\" must map names to values, e.g. {{\"background\": 0, \"edema\": 1, \"non-enhancing tumor\": 2, \"enhancing tumour\": 3}}")]
    LabelsNotAMap,
    #[error("\"labels\" has {0:?}, which is not a BraTS tumour region (background, edema, non-enhancing/necrotic core, enhancing tumour, or nnU-Net's regions whole tumor / tumor core / enhancing tumor)")]
    UnknownLabel(String),
    #[error("\"labels\".{name:?} is {value}; give a label value 0–255 or a list of them")]
    LabelValue { name: String, value: Value },
    #[error("\"labels\" number the tumour classes {0:?} (value, class 1 NCR / 2 oedema / 3 enhancing); CGGM Studio reads the MSD numbering (1 oedema, 2 non-enhancing, 3 enhancing) or the BraTS one (1 NCR, 2 oedema, 3 or 4 enhancing): relabel the files")]
    LabelNumbering(Vec<(usize, u8)>),
}

impl TaskDescription {
    pub fn read(root: &Path) -> Result<Self, DescriptionError> {
        let path = root.join(DESCRIPTION_FILE);
        let Some(json) = read_json(&path).map_err(|e| (Layout::MsdTask01, e))? else {
            return Ok(TaskDescription::Missing);
        };
        let overrides = match read_json(&root.join(CHANNEL_MAP_FILE)) {
            Ok(map) => map,
            Err(e) => {
                return Err((
                    Layout::NnUnetV2,
                    DescriptionProblem::ChannelMap(Box::new(e)),
                ))
            }
        };
        if let Some(names) = json.get("channel_names") {
            let names = overrides.as_ref().unwrap_or(names);
            let channels =
                channels_from(names, "channel_names").map_err(|e| (Layout::NnUnetV2, e))?;
            let label_values = json
                .get("labels")
                .map(nnunet_label_values)
                .transpose()
                .map_err(|e| (Layout::NnUnetV2, e))?
                .unwrap_or(LabelValues::Msd);
            let file_ending = match json.get("file_ending") {
                None => ".nii.gz".to_string(),
                Some(Value::String(e))
                    if matches!(e.to_ascii_lowercase().as_str(), ".nii" | ".nii.gz") =>
                {
                    e.clone()
                }
                Some(other) => {
                    return Err((
                        Layout::NnUnetV2,
                        DescriptionProblem::FileEnding(other.clone()),
                    ))
                }
            };
            return Ok(TaskDescription::NnUnet(NnUnetDescription {
                channels,
                label_values,
                file_ending,
            }));
        }
        match overrides.as_ref().or(json.get("modality")) {
            Some(names) => Ok(TaskDescription::Msd(MsdDescription {
                channels: channels_from(names, "modality").map_err(|e| (Layout::MsdTask01, e))?,
            })),
            None => Ok(TaskDescription::Msd(MsdDescription::default())),
        }
    }
}

/// `Ok(None)` when the file does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, DescriptionProblem> {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DescriptionProblem::Unreadable(e)),
    };
    if metadata.len() > MAX_DESCRIPTION_BYTES {
        return Err(DescriptionProblem::TooLarge(metadata.len()));
    }
    let text = std::fs::read_to_string(path).map_err(DescriptionProblem::Unreadable)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(DescriptionProblem::NotJson)
}

/// Lower case, letters and digits only: "T1-Gd" -> "t1gd", "T2 FLAIR" -> "t2flair".
fn normalised(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A channel name as datasets spell it: the file suffixes of [`Modality::parse`] and the longer
/// forms of MSD and nnU-Net descriptions.
fn modality_of_channel_name(name: &str) -> Option<Modality> {
    let key = normalised(name);
    Modality::parse(&key).or(match key.as_str() {
        "t2weightedflair" | "flairt2" | "t2fl" => Some(Modality::Flair),
        "t1contrast" | "t1contrastenhanced" | "t1wce" | "t1gad" | "t1wgd" | "t1gadolinium"
        | "t1wpost" | "ct1" => Some(Modality::T1ce),
        "t1native" | "t1weighted" | "nativet1" => Some(Modality::T1),
        "t2weighted" => Some(Modality::T2),
        _ => None,
    })
}

/// `{"0": "FLAIR", "1": "T1w", …}` -> the modality of each channel; exactly the four contrasts.
fn channels_from(names: &Value, field: &str) -> Result<[Modality; 4], DescriptionProblem> {
    let field = field.to_string();
    let Value::Object(map) = names else {
        return Err(DescriptionProblem::ChannelsNotAMap { field });
    };
    let mut channels: [Option<Modality>; 4] = [None; 4];
    for (key, value) in map {
        let index: usize = key.trim().parse().ok().filter(|i| *i < 4).ok_or_else(|| {
            DescriptionProblem::ChannelNumber {
                field: field.clone(),
                key: key.clone(),
            }
        })?;
        let name = value.as_str().unwrap_or_default();
        let modality =
            modality_of_channel_name(name).ok_or_else(|| DescriptionProblem::UnknownContrast {
                field: field.clone(),
                index,
                value: value.clone(),
            })?;
        if let Some(other) = channels.iter().position(|c| *c == Some(modality)) {
            return Err(DescriptionProblem::ContrastTwice {
                field,
                other,
                index,
                modality,
            });
        }
        channels[index] = Some(modality);
    }
    if let Some(missing) = (0..4).find(|i| channels[*i].is_none()) {
        return Err(DescriptionProblem::MissingChannel { field, missing });
    }
    Ok(channels.map(|c| c.expect("checked above")))
}

/// What a label's name denotes: a tumour class, or a region of several (nnU-Net's region-based
/// training lists the values of each region).
#[derive(Copy, Clone, Debug, PartialEq)]
enum LabelName {
    Background,
    Class(u8),
    TumourCore,
    WholeTumour,
}

fn label_name(name: &str) -> Option<LabelName> {
    let key = normalised(name);
    let class = match key.as_str() {
        "background" | "bg" | "0" => LabelName::Background,
        "wholetumor" | "wholetumour" | "wt" => LabelName::WholeTumour,
        "tumorcore" | "tumourcore" | "tc" => LabelName::TumourCore,
        "et" | "enhancing" | "enhancingtumor" | "enhancingtumour" => {
            LabelName::Class(LABEL_ENHANCING)
        }
        "ed" | "edema" | "oedema" | "snfh" | "peritumoraledema" | "peritumouraloedema" => {
            LabelName::Class(LABEL_OEDEMA)
        }
        "ncr"
        | "net"
        | "netc"
        | "ncrnet"
        | "necrosis"
        | "necrotic"
        | "nonenhancing"
        | "nonenhancingtumor"
        | "nonenhancingtumour"
        | "necroticcore"
        | "necroticandnonenhancingtumorcore"
        | "nonenhancingtumorcore" => LabelName::Class(LABEL_NCR),
        _ => return None,
    };
    Some(class)
}

/// The label numbering an nnU-Net `labels` map describes, if it is one CGGM Studio reads.
fn nnunet_label_values(labels: &Value) -> Result<LabelValues, DescriptionProblem> {
    let Value::Object(map) = labels else {
        return Err(DescriptionProblem::LabelsNotAMap);
    };
    // For each label value: the tumour class it is, from plain labels or from the regions it is in.
    let mut class_of = [None::<u8>; 256];
    let mut regions = [(false, false, false); 256];
    for (name, value) in map {
        let kind =
            label_name(name).ok_or_else(|| DescriptionProblem::UnknownLabel(name.clone()))?;
        for v in label_entry_values(name, value)? {
            match kind {
                LabelName::Background => {}
                LabelName::Class(c) if !matches!(value, Value::Array(_)) => {
                    class_of[v] = Some(c);
                    // A plain enhancing label beside region lists is the innermost region.
                    regions[v].2 |= c == LABEL_ENHANCING;
                }
                LabelName::Class(_) => regions[v].2 = true,
                LabelName::TumourCore => regions[v].1 = true,
                LabelName::WholeTumour => regions[v].0 = true,
            }
        }
    }
    apply_regions(&mut class_of, &regions);
    numbering_of(&class_of)
}

/// The label values one `labels` entry names: a number or a list of them, each 0..=255.
fn label_entry_values(name: &str, value: &Value) -> Result<Vec<usize>, DescriptionProblem> {
    let values: Vec<u64> = match value {
        Value::Number(n) => n.as_u64().into_iter().collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    };
    if values.is_empty() || values.iter().any(|v| *v > 255) {
        return Err(DescriptionProblem::LabelValue {
            name: name.to_string(),
            value: value.clone(),
        });
    }
    Ok(values.into_iter().map(|v| v as usize).collect())
}

/// A value inside regions (whole tumour, tumour core, enhancing) is the class of the innermost.
fn apply_regions(class_of: &mut [Option<u8>; 256], regions: &[(bool, bool, bool); 256]) {
    for (v, &(wt, tc, et)) in regions.iter().enumerate() {
        let class = if et {
            Some(LABEL_ENHANCING)
        } else if tc {
            Some(LABEL_NCR)
        } else if wt {
            Some(LABEL_OEDEMA)
        } else {
            None
        };
        if class.is_some() {
            class_of[v] = class;
        }
    }
}

/// The numbering (MSD or BraTS) whose every used value is the class found for it.
fn numbering_of(class_of: &[Option<u8>; 256]) -> Result<LabelValues, DescriptionProblem> {
    let used: Vec<(usize, u8)> = class_of
        .iter()
        .enumerate()
        .filter_map(|(v, c)| c.map(|c| (v, c)))
        .collect();
    for candidate in [LabelValues::Msd, LabelValues::Brats] {
        if !used.is_empty()
            && used
                .iter()
                .all(|&(v, c)| candidate.class_of(v as u8) == Some(c))
        {
            return Ok(candidate);
        }
    }
    Err(DescriptionProblem::LabelNumbering(used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_names_in_any_order_and_spelling() {
        let names = json!({"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"});
        assert_eq!(
            channels_from(&names, "channel_names").unwrap(),
            [Modality::T1, Modality::T1ce, Modality::T2, Modality::Flair]
        );
        let msd = json!({"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"});
        assert_eq!(channels_from(&msd, "modality").unwrap(), MSD_CHANNELS);
        let spaced = json!({"0": "T2-FLAIR", "1": "T1-Gd", "2": "T1 native", "3": "T2 weighted"});
        assert_eq!(
            channels_from(&spaced, "channel_names").unwrap(),
            [Modality::Flair, Modality::T1ce, Modality::T1, Modality::T2]
        );
    }

    #[test]
    fn unknown_or_repeated_channels_name_the_fix() {
        let unknown = json!({"0": "DWI", "1": "T1", "2": "T1ce", "3": "T2"});
        let message = channels_from(&unknown, "channel_names")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("DWI") && message.contains(CHANNEL_MAP_FILE),
            "{message}"
        );
        let twice = json!({"0": "T1", "1": "T1w", "2": "T1ce", "3": "T2"});
        assert!(channels_from(&twice, "channel_names")
            .unwrap_err()
            .to_string()
            .contains("once"));
        let three = json!({"0": "T1", "1": "T1ce", "2": "T2"});
        assert!(channels_from(&three, "channel_names")
            .unwrap_err()
            .to_string()
            .contains("no channel 3"));
    }

    #[test]
    fn nnunet_labels_plain_and_region_based() {
        let regions = json!({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]});
        assert_eq!(nnunet_label_values(&regions).unwrap(), LabelValues::Msd);
        let msd =
            json!({"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3});
        assert_eq!(nnunet_label_values(&msd).unwrap(), LabelValues::Msd);
        let brats = json!({"background": 0, "NCR": 1, "ED": 2, "ET": 3});
        assert_eq!(nnunet_label_values(&brats).unwrap(), LabelValues::Brats);
        let odd = json!({"background": 0, "ET": 1, "ED": 2, "NCR": 3});
        assert!(nnunet_label_values(&odd)
            .unwrap_err()
            .to_string()
            .contains("relabel"));
        let unknown = json!({"background": 0, "vessel": 1});
        assert!(nnunet_label_values(&unknown)
            .unwrap_err()
            .to_string()
            .contains("vessel"));
    }
}
