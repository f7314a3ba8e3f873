//! The reference series a SEG points to: every instance's identity and geometry, read from its
//! DICOM header (the pixel data is never read), and the patient and study attributes the SEG
//! copies from it.

use super::DicomSegError;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use std::path::Path;

/// One single-frame image of the reference series.
#[derive(Clone, Debug)]
pub struct SourceInstance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// (0020,0032) Image Position Patient: the centre of the first pixel, LPS, mm.
    pub position: [f64; 3],
    /// (0020,0037) Image Orientation Patient: the row direction (along which the column index
    /// grows), then the column direction.
    pub orientation: [f64; 6],
    /// (0028,0030) Pixel Spacing: between rows, then between columns (mm).
    pub pixel_spacing: [f64; 2],
    pub rows: u16,
    pub columns: u16,
}

impl SourceInstance {
    pub fn row_direction(&self) -> [f64; 3] {
        [
            self.orientation[0],
            self.orientation[1],
            self.orientation[2],
        ]
    }

    pub fn column_direction(&self) -> [f64; 3] {
        [
            self.orientation[3],
            self.orientation[4],
            self.orientation[5],
        ]
    }

    /// The slice normal (row × column direction).
    pub fn normal(&self) -> [f64; 3] {
        cross(self.row_direction(), self.column_direction())
    }

    /// Where the slice lies along its normal (mm).
    pub fn depth(&self) -> f64 {
        dot(self.normal(), self.position)
    }
}

/// The reference series: its instances ordered along the slice normal, and the first instance's
/// header (for the attributes the SEG copies).
pub struct ReferenceSeries {
    pub instances: Vec<SourceInstance>,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub frame_of_reference_uid: String,
    /// (0018,0050) Slice Thickness of the first instance, if it has one.
    pub slice_thickness: Option<f64>,
    pub series_number: Option<i32>,
    pub header: InMemDicomObject,
}

/// Same geometry within this much (direction cosines, mm).
const SAME: f64 = 1e-4;

/// Reads every file under `folder` as one single-frame image series on one grid.
pub fn read_series(folder: &Path) -> Result<ReferenceSeries, DicomSegError> {
    let files = crate::dicom::files_under(folder)
        .map_err(|e| bad(folder, format!("cannot be listed ({e})")))?;
    if files.is_empty() {
        return Err(bad(
            folder,
            "holds no DICOM file; import the study from DICOM so that its series are kept".into(),
        ));
    }
    let mut instances = Vec::with_capacity(files.len());
    let mut first: Option<(InMemDicomObject, [String; 3])> = None;
    for file in &files {
        let name = file
            .strip_prefix(folder)
            .unwrap_or(file)
            .display()
            .to_string();
        let (header, uids, instance) = read_instance(folder, file, &name)?;
        match &first {
            None => first = Some((header, uids)),
            Some((_, known)) => {
                same_series(folder, &name, known, &uids)?;
                same_grid(folder, &name, &instances[0], &instance)?;
            }
        }
        instances.push(instance);
    }
    let (header, [series, study, frame]) = first.expect("at least one file was read");
    order_along_normal(folder, &mut instances)?;
    let slice_thickness = header
        .get(tags::SLICE_THICKNESS)
        .and_then(|e| e.to_float64().ok())
        .filter(|t| t.is_finite() && *t > 0.0);
    let series_number = header
        .get(tags::SERIES_NUMBER)
        .and_then(|e| e.to_int::<i32>().ok());
    Ok(ReferenceSeries {
        instances,
        series_instance_uid: series,
        study_instance_uid: study,
        frame_of_reference_uid: frame,
        slice_thickness,
        series_number,
        header,
    })
}

/// The error for the reference series in `folder`.
fn bad(folder: &Path, detail: String) -> DicomSegError {
    DicomSegError::Reference {
        path: folder.to_path_buf(),
        detail,
    }
}

/// One file's header (up to the pixel data), its series, study and frame-of-reference UIDs, and
/// its identity and geometry; refused when it is multi-frame or lacks any of them.
fn read_instance(
    folder: &Path,
    file: &Path,
    name: &str,
) -> Result<(InMemDicomObject, [String; 3], SourceInstance), DicomSegError> {
    let object = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(file)
        .map_err(|e| bad(folder, format!("{name} is not a readable DICOM file ({e})")))?;
    let header = object.into_inner();
    let text = |tag: Tag, what: &str| -> Result<String, DicomSegError> {
        required_text(&header, tag).ok_or_else(|| {
            bad(
                folder,
                format!("{name} has no {what}; send the series as acquired"),
            )
        })
    };
    let frames = header
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(1);
    if frames != 1 {
        return Err(bad(
            folder,
            format!(
                "{name} is a multi-frame image ({frames} frames); a SEG is written only for a \
                 series of single-frame slices"
            ),
        ));
    }
    let uids = [
        text(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        text(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        text(tags::FRAME_OF_REFERENCE_UID, "Frame of Reference UID")?,
    ];
    let instance = geometry(folder, &header, name, text)?;
    Ok((header, uids, instance))
}

/// The instance's identity (through `text`, which names what is missing) and geometry.
fn geometry(
    folder: &Path,
    header: &InMemDicomObject,
    name: &str,
    text: impl Fn(Tag, &str) -> Result<String, DicomSegError>,
) -> Result<SourceInstance, DicomSegError> {
    let floats = |tag: Tag, n: usize, what: &str| -> Result<Vec<f64>, DicomSegError> {
        header
            .get(tag)
            .and_then(|e| e.to_multi_float64().ok())
            .filter(|v| v.len() == n && v.iter().all(|x| x.is_finite()))
            .ok_or_else(|| {
                bad(
                    folder,
                    format!(
                        "{name} has no usable {what} ({n} numbers); send the series as acquired"
                    ),
                )
            })
    };
    let position = floats(tags::IMAGE_POSITION_PATIENT, 3, "Image Position Patient")?;
    let orientation = floats(
        tags::IMAGE_ORIENTATION_PATIENT,
        6,
        "Image Orientation Patient",
    )?;
    let spacing = floats(tags::PIXEL_SPACING, 2, "Pixel Spacing")?;
    let size = |tag: Tag, what: &str| -> Result<u16, DicomSegError> {
        header
            .get(tag)
            .and_then(|e| e.to_int::<u16>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(folder, format!("{name} has no {what}")))
    };
    let instance = SourceInstance {
        sop_class_uid: text(tags::SOP_CLASS_UID, "SOP Class UID")?,
        sop_instance_uid: text(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        position: [position[0], position[1], position[2]],
        orientation: std::array::from_fn(|i| orientation[i]),
        pixel_spacing: [spacing[0], spacing[1]],
        rows: size(tags::ROWS, "Rows")?,
        columns: size(tags::COLUMNS, "Columns")?,
    };
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(bad(
            folder,
            format!("{name} has a Pixel Spacing that is not positive"),
        ));
    }
    Ok(instance)
}

/// File `name` has the series, study and frame-of-reference UIDs of the first file.
fn same_series(
    folder: &Path,
    name: &str,
    known: &[String; 3],
    uids: &[String; 3],
) -> Result<(), DicomSegError> {
    let labels = [
        "Series Instance UID",
        "Study Instance UID",
        "Frame of Reference UID",
    ];
    for ((a, b), label) in known.iter().zip(uids).zip(labels) {
        if a != b {
            return Err(bad(
                folder,
                format!(
                    "{name} has another {label} than the other files; the folder must \
                     hold one series"
                ),
            ));
        }
    }
    Ok(())
}

/// File `name`'s `instance` lies on the grid of the first one.
fn same_grid(
    folder: &Path,
    name: &str,
    one: &SourceInstance,
    instance: &SourceInstance,
) -> Result<(), DicomSegError> {
    let differs = |a: &[f64], b: &[f64]| a.iter().zip(b).any(|(x, y)| (x - y).abs() > SAME);
    if differs(&one.orientation, &instance.orientation)
        || differs(&one.pixel_spacing, &instance.pixel_spacing)
        || one.rows != instance.rows
        || one.columns != instance.columns
    {
        return Err(bad(
            folder,
            format!(
                "{name} has another orientation, pixel spacing or size than the other \
                 slices; a SEG needs one grid for the whole series"
            ),
        ));
    }
    Ok(())
}

/// Sorts the instances along the slice normal; two at the same depth are refused.
fn order_along_normal(
    folder: &Path,
    instances: &mut [SourceInstance],
) -> Result<(), DicomSegError> {
    instances.sort_by(|a, b| a.depth().total_cmp(&b.depth()));
    if let Some(pair) = instances
        .windows(2)
        .find(|w| (w[1].depth() - w[0].depth()).abs() < SAME)
    {
        return Err(bad(
            folder,
            format!(
                "two slices lie at the same position ({} and {}); the folder must hold one \
                 series without repeats",
                pair[0].sop_instance_uid, pair[1].sop_instance_uid
            ),
        ));
    }
    Ok(())
}

/// A text attribute with its padding removed; `None` when absent or empty.
pub fn required_text(header: &InMemDicomObject, tag: Tag) -> Option<String> {
    let text = header.get(tag)?.to_str().ok()?;
    let text = text.trim_end_matches(['\0', ' ']).trim_start().to_string();
    (!text.is_empty()).then_some(text)
}

pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
