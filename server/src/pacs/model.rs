//! The DICOM JSON model (PS3.18 F.2) as QIDO-RS and STOW-RS answer it: each attribute under its
//! tag in eight hex digits (`"0020000D"`) with its `vr` and a `Value` list; a person's name is
//! `{"Alphabetic": ...}`. Only what the PACS page and the import need is read, into our own types.

use serde::Serialize;
use serde_json::Value;

pub const STUDY_INSTANCE_UID: &str = "0020000D";
pub const SERIES_INSTANCE_UID: &str = "0020000E";
pub const STUDY_DATE: &str = "00080020";
pub const STUDY_DESCRIPTION: &str = "00081030";
pub const SERIES_DESCRIPTION: &str = "0008103E";
pub const MODALITY: &str = "00080060";
pub const MODALITIES_IN_STUDY: &str = "00080061";
pub const PATIENT_NAME: &str = "00100010";
pub const PATIENT_ID: &str = "00100020";
pub const SERIES_NUMBER: &str = "00200011";
pub const NUMBER_OF_STUDY_SERIES: &str = "00201206";
pub const NUMBER_OF_SERIES_INSTANCES: &str = "00201209";
pub const FAILED_SOP_SEQUENCE: &str = "00081198";
pub const REFERENCED_SOP_SEQUENCE: &str = "00081199";
pub const REFERENCED_SOP_INSTANCE_UID: &str = "00081155";
pub const FAILURE_REASON: &str = "00081197";

/// The values of `tag` in `dataset`, as text (numbers printed, names by their alphabetic form).
pub fn texts(dataset: &Value, tag: &str) -> Vec<String> {
    dataset[tag]["Value"]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.trim().to_string()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Object(o) => o
                        .get("Alphabetic")
                        .and_then(Value::as_str)
                        .map(|s| s.trim().to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first value of `tag`, or "" when absent.
pub fn text(dataset: &Value, tag: &str) -> String {
    texts(dataset, tag).into_iter().next().unwrap_or_default()
}

/// The first value of `tag` as a number (IS values come as numbers or as text).
pub fn number(dataset: &Value, tag: &str) -> Option<i64> {
    text(dataset, tag).parse().ok()
}

/// The items of a sequence attribute (an empty sequence has no `Value`).
pub fn items<'a>(dataset: &'a Value, tag: &str) -> &'a [Value] {
    dataset[tag]["Value"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A study as the PACS page lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StudySummary {
    pub study_uid: String,
    pub patient_name: String,
    pub patient_id: String,
    /// `YYYYMMDD`, as DICOM writes it.
    pub date: String,
    pub description: String,
    pub modalities: Vec<String>,
    pub series_count: Option<i64>,
}

impl StudySummary {
    pub fn from_json(dataset: &Value) -> Option<Self> {
        Some(Self {
            study_uid: Some(text(dataset, STUDY_INSTANCE_UID)).filter(|u| !u.is_empty())?,
            patient_name: text(dataset, PATIENT_NAME),
            patient_id: text(dataset, PATIENT_ID),
            date: text(dataset, STUDY_DATE),
            description: text(dataset, STUDY_DESCRIPTION),
            modalities: texts(dataset, MODALITIES_IN_STUDY),
            series_count: number(dataset, NUMBER_OF_STUDY_SERIES),
        })
    }
}

/// A series of a study, with the modality the import would take it for.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SeriesSummary {
    pub series_uid: String,
    pub description: String,
    /// DICOM's modality (`MR`, `SEG`, ...), not the MR sequence.
    pub modality: String,
    pub number: Option<i64>,
    pub instances: Option<i64>,
    /// flair / t1ce / t1 / t2 guessed from the description, if it names one.
    pub guess: Option<&'static str>,
}

impl SeriesSummary {
    pub fn from_json(dataset: &Value) -> Option<Self> {
        let description = text(dataset, SERIES_DESCRIPTION);
        let modality = text(dataset, MODALITY);
        Some(Self {
            series_uid: Some(text(dataset, SERIES_INSTANCE_UID)).filter(|u| !u.is_empty())?,
            guess: (modality.is_empty() || modality == "MR")
                .then(|| super::mapping::guess_modality(&description))
                .flatten(),
            description,
            modality,
            number: number(dataset, SERIES_NUMBER),
            instances: number(dataset, NUMBER_OF_SERIES_INSTANCES),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_lists_are_read() {
        let study = serde_json::json!({
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00080061": {"vr": "CS", "Value": ["MR", "SEG"]},
            "00201206": {"vr": "IS", "Value": [4]},
            "00081030": {"vr": "LO"}
        });
        let summary = StudySummary::from_json(&study).unwrap();
        assert_eq!(summary.patient_name, "Doe^Jane");
        assert_eq!(summary.modalities, vec!["MR", "SEG"]);
        assert_eq!(summary.series_count, Some(4));
        assert_eq!(summary.description, "");
        assert!(StudySummary::from_json(&serde_json::json!({})).is_none());
        let series = serde_json::json!({
            "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
            "0008103E": {"vr": "LO", "Value": ["AX T1 POST GD"]},
            "00080060": {"vr": "CS", "Value": ["MR"]},
            "00201209": {"vr": "IS", "Value": ["16"]}
        });
        let series = SeriesSummary::from_json(&series).unwrap();
        assert_eq!(series.guess, Some("t1ce"));
        assert_eq!(series.instances, Some(16));
    }
}
