//! A prediction as a DICOM Segmentation object (PS3.3 A.51, SOP Class 1.2.840.10008.5.1.4.1.1.66.4):
//! three binary segments (NCR, ED, ET) coded in SNOMED CT, each frame derived from one slice of
//! the reference series it was predicted on, in that series' frame of reference and study.
//! Written with dicom-rs as Explicit VR Little Endian with a File Meta group. README: DICOM SEG
//! has the attribute list, the codes and the geometry.
//!
//! The reference series is the DICOM the study was imported from, kept by the import in
//! `<study dir>/dicom/<modality>/`: FLAIR's, else the first modality present
//! ([`reference_series_of`]).

mod codes;
mod frames;
mod reference;
mod writer;

pub use codes::{Code, Segment, CATEGORY, SEGMENTS};

use dicom_dictionary_std::uids;
use dicom_object::meta::FileMetaTableBuilder;
use std::path::{Path, PathBuf};

/// What a SEG is written from.
pub struct SegmentationSource<'a> {
    /// NIfTI labels 0/1/2/4 (BraTS; 3 is taken for ET too, as BraTS 2023 numbers it) on the
    /// study's grid, as `cggm infer` writes them.
    pub prediction: &'a Path,
    /// A folder of the reference modality's DICOM files (one series, single-frame slices).
    pub reference_series: &'a Path,
    /// Segment Algorithm Name, e.g. "CGGM Studio cggm run 12" (at most 64 characters are kept).
    pub algorithm: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum DicomSegError {
    #[error("prediction {}: {detail}", path.display())]
    Prediction { path: PathBuf, detail: String },
    #[error("reference series {}: {detail}", path.display())]
    Reference { path: PathBuf, detail: String },
    #[error(
        "prediction grid does not match the reference series: {0}; a SEG is written for a \
         prediction of the study imported from these DICOM files (same grid, no resampling)"
    )]
    GridMismatch(String),
    #[error("the DICOM Segmentation could not be encoded ({0})")]
    Encode(String),
}

/// Where the DICOM import keeps a study's series: `<study dir>/dicom/<modality>/`.
pub const DICOM_FOLDER: &str = "dicom";

/// The series a study's SEG refers to: FLAIR's (the modality that shows the whole tumour), else
/// the first of t1ce, t1, t2 that the import kept; `None` for a study uploaded as NIfTI.
pub fn reference_series_of(study_dir: &Path) -> Option<PathBuf> {
    crate::inspect::MODALITIES
        .iter()
        .map(|m| study_dir.join(DICOM_FOLDER).join(m))
        .find(|folder| folder.is_dir())
}

/// The SEG of `src` as the bytes of a DICOM Part 10 file.
pub fn write_segmentation(src: &SegmentationSource) -> Result<Vec<u8>, DicomSegError> {
    let (grid, labels) = read_prediction(src.prediction)?;
    let reference = reference::read_series(src.reference_series)?;
    let maps = frames::map_slices(&reference.instances, &grid)?;
    let content = writer::Content {
        reference: &reference,
        maps: &maps,
        labels: &labels,
        algorithm: src.algorithm,
    };
    let (date, time) = utc_now();
    let identity = writer::Identity {
        sop_instance_uid: new_uid(),
        series_instance_uid: new_uid(),
        dimension_organization_uid: new_uid(),
        date,
        time,
    };
    let file = writer::build(&content, &identity)
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .map_err(|e| DicomSegError::Encode(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| DicomSegError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Names the software that wrote a file (PS3.7 D.3.3.2); fixed for CGGM Studio, under the
/// UUID-derived root 2.25 that needs no registration.
const IMPLEMENTATION_CLASS_UID: &str = "2.25.239439267886306257702742322630482425934";
const IMPLEMENTATION_VERSION_NAME: &str = "CGGM_STUDIO";

/// A fresh UID: 2.25 and a random UUID as a decimal number (PS3.5 B.2).
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// The prediction's grid and its labels in NIfTI order (x fastest), each checked to be a BraTS
/// label.
fn read_prediction(path: &Path) -> Result<(frames::Grid, Vec<u8>), DicomSegError> {
    let bad = |detail: String| DicomSegError::Prediction {
        path: path.to_path_buf(),
        detail,
    };
    let (header, data) = cggm_core::data::read_volume(path).map_err(|e| bad(e.to_string()))?;
    let shape = data.shape();
    if shape.len() < 3 || shape[3..].iter().any(|n| *n != 1) {
        return Err(bad(format!(
            "has dimensions {shape:?}; a label volume is 3-D (X, Y, Z)"
        )));
    }
    let mut labels = Vec::with_capacity(data.len());
    let mut seen = [false; 5];
    // The transposed view walks the NIfTI (Fortran) order: x fastest.
    for value in data.t().iter() {
        let label = *value as u8;
        if *value != label as f32 || label > 4 {
            return Err(bad(format!(
                "holds the value {value}, which is no BraTS label (0 background, 1 NCR, 2 ED, \
                 4 ET, or 3 ET as BraTS 2023 numbers it); write the SEG from the labels that \
                 cggm infer made"
            )));
        }
        seen[label as usize] = true;
        labels.push(label);
    }
    if seen[3] && seen[4] {
        return Err(bad(
            "holds both label 3 and label 4; ET is one of them (4 in BraTS 2021, 3 in BraTS \
             2023), so the volume mixes two numberings"
                .into(),
        ));
    }
    let grid = frames::Grid {
        dims: [shape[0], shape[1], shape[2]],
        affine: cggm_core::data::header_affine(&header),
    };
    Ok((grid, labels))
}

/// Today's date (`YYYYMMDD`) and time (`HHMMSS`), UTC.
fn utc_now() -> (String, String) {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, second) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!(
            "{:02}{:02}{:02}",
            second / 3600,
            (second / 60) % 60,
            second % 60
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_fresh_numbers_under_2_25_within_64_characters() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        for uid in [&a, &b, &IMPLEMENTATION_CLASS_UID.to_string()] {
            assert!(uid.starts_with("2.25."), "{uid}");
            assert!(uid.len() <= 64, "{uid}");
            assert!(uid[5..].chars().all(|c| c.is_ascii_digit()), "{uid}");
            assert!(!uid[5..].starts_with('0') || uid.len() == 6, "{uid}");
        }
    }

    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

    /// An axial series of `z` slices, 4 columns (x) × 3 rows (y) of 1 × 2 mm, 3 mm apart, rows
    /// running anterior (the first row is the highest NIfTI j), written in reverse order.
    fn write_series(dir: &Path, z: usize) -> Vec<String> {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        let mut uids = Vec::new();
        for k in (0..z).rev() {
            let uid = format!("2.25.{}", 1000 + k);
            let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
            let ds = |tag, v: &[f64]| {
                DataElement::new(
                    tag,
                    VR::DS,
                    PrimitiveValue::Strs(v.iter().map(|x| x.to_string()).collect()),
                )
            };
            let obj = dicom_object::InMemDicomObject::from_element_iter([
                text(tags::SOP_CLASS_UID, VR::UI, MR),
                text(tags::SOP_INSTANCE_UID, VR::UI, &uid),
                text(tags::STUDY_INSTANCE_UID, VR::UI, "2.25.1"),
                text(tags::SERIES_INSTANCE_UID, VR::UI, "2.25.2"),
                text(tags::FRAME_OF_REFERENCE_UID, VR::UI, "2.25.3"),
                text(tags::PATIENT_NAME, VR::PN, "Doe^Jöhn"),
                text(tags::PATIENT_ID, VR::LO, "P-1"),
                text(tags::MODALITY, VR::CS, "MR"),
                ds(
                    tags::IMAGE_POSITION_PATIENT,
                    &[-10.0, -16.0, -5.0 + 3.0 * k as f64],
                ),
                ds(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    &[1.0, 0.0, 0.0, 0.0, -1.0, 0.0],
                ),
                ds(tags::PIXEL_SPACING, &[2.0, 1.0]),
                DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(3u16)),
                DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(4u16)),
                DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OW,
                    PrimitiveValue::from(vec![0u8; 24]),
                ),
            ]);
            obj.with_meta(
                FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN),
            )
            .unwrap()
            .write_to_file(dir.join(format!("IM{k}")))
            .unwrap();
            uids.push(uid);
        }
        uids.reverse();
        uids
    }

    /// The 4 × 3 × `z` grid of that series as dcm2niix writes it (RAS: x and y negated).
    fn write_prediction(path: &Path, labels: &ndarray::Array3<u8>) {
        let header = nifti::NiftiHeader {
            sform_code: 1,
            srow_x: [-1.0, 0.0, 0.0, 10.0],
            srow_y: [0.0, -2.0, 0.0, 20.0],
            srow_z: [0.0, 0.0, 3.0, -5.0],
            pixdim: [1.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0],
            ..Default::default()
        };
        cggm_core::data::write_volume_u8(path, &labels.view(), &header).unwrap();
    }

    fn segmentation(dir: &Path, labels: &ndarray::Array3<u8>) -> Result<Vec<u8>, DicomSegError> {
        let series = dir.join("flair");
        if !series.exists() {
            std::fs::create_dir_all(&series).unwrap();
            write_series(&series, labels.dim().2);
        }
        let prediction = dir.join("seg.nii.gz");
        write_prediction(&prediction, labels);
        write_segmentation(&SegmentationSource {
            prediction: &prediction,
            reference_series: &series,
            algorithm: "CGGM Studio cggm run 7",
        })
    }

    #[test]
    fn each_frame_holds_its_segment_on_its_source_slice_pixel_for_voxel() {
        use dicom_dictionary_std::tags;
        let dir = tempfile::tempdir().unwrap();
        // NCR in slice 0 only, ED in slices 0 and 1, ET (4) nowhere: 1 + 2 + 1 empty frame.
        let mut labels = ndarray::Array3::<u8>::zeros((4, 3, 3));
        labels[[0, 0, 0]] = 1;
        labels[[3, 2, 0]] = 1;
        labels[[1, 2, 0]] = 2;
        labels[[2, 1, 1]] = 2;
        let bytes = segmentation(dir.path(), &labels).unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        let seg = dicom_object::OpenFileOptions::new()
            .from_reader(&bytes[128..])
            .unwrap();
        assert_eq!(
            seg.meta().transfer_syntax(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        let text = |tag| {
            seg.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(text(tags::SOP_CLASS_UID), uids::SEGMENTATION_STORAGE);
        assert_eq!(text(tags::MODALITY), "SEG");
        assert_eq!(text(tags::STUDY_INSTANCE_UID), "2.25.1");
        assert_eq!(text(tags::FRAME_OF_REFERENCE_UID), "2.25.3");
        assert_eq!(text(tags::PATIENT_NAME), "Doe^Jöhn");
        assert_eq!(text(tags::NUMBER_OF_FRAMES), "4");
        let segments = seg
            .element(tags::SEGMENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(segments.len(), 3);
        let frames = seg
            .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let inner = |item: &dicom_object::InMemDicomObject, sequence, tag| {
            let nested = &item.element(sequence).unwrap().items().unwrap()[0];
            nested
                .element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        };
        let source = |item: &dicom_object::InMemDicomObject| {
            let derivation = &item
                .element(tags::DERIVATION_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            inner(
                derivation,
                tags::SOURCE_IMAGE_SEQUENCE,
                tags::REFERENCED_SOP_INSTANCE_UID,
            )
        };
        let described: Vec<(String, String)> = frames
            .iter()
            .map(|f| {
                (
                    inner(
                        f,
                        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                        tags::REFERENCED_SEGMENT_NUMBER,
                    ),
                    source(f),
                )
            })
            .collect();
        // Slices go along the normal, which points down (row × column = -z): k = 2, 1, 0. The
        // empty ET keeps the first of them.
        let uid = |k: usize| format!("2.25.{}", 1000 + k);
        assert_eq!(
            described,
            [
                ("1".into(), uid(0)),
                ("2".into(), uid(1)),
                ("2".into(), uid(0)),
                ("3".into(), uid(2))
            ]
        );
        // Frame pixel (r, c) of slice k is voxel (c, 2 - r, k): the rows run towards anterior.
        let pixels = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        let bit = |frame: usize, r: usize, c: usize| {
            let i = frame * 12 + r * 4 + c;
            pixels[i / 8] >> (i % 8) & 1 == 1
        };
        let wanted = [(1u8, 0usize), (2, 1), (2, 0), (4, 2)];
        for (frame, (label, k)) in wanted.iter().enumerate() {
            for r in 0..3 {
                for c in 0..4 {
                    assert_eq!(
                        bit(frame, r, c),
                        labels[[c, 2 - r, *k]] == *label,
                        "frame {frame} ({r}, {c})"
                    );
                }
            }
        }
        assert_eq!(pixels.len(), 6, "48 bits, even length");
    }

    #[test]
    fn labels_that_are_not_brats_and_grids_that_differ_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut labels = ndarray::Array3::<u8>::zeros((4, 3, 3));
        labels[[0, 0, 0]] = 5;
        let message = segmentation(dir.path(), &labels).unwrap_err().to_string();
        assert!(
            message.contains("holds the value 5, which is no BraTS label"),
            "{message}"
        );
        labels[[0, 0, 0]] = 3;
        labels[[1, 0, 0]] = 4;
        let message = segmentation(dir.path(), &labels).unwrap_err().to_string();
        assert!(message.contains("both label 3 and label 4"), "{message}");
        // Label 3 alone is ET.
        labels[[1, 0, 0]] = 0;
        assert!(segmentation(dir.path(), &labels).is_ok());
        // One plane more than the series has slices.
        let message = segmentation(dir.path(), &ndarray::Array3::zeros((4, 3, 4)))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("prediction grid does not match the reference series: the series has 3 slices, the prediction 4 planes"),
            "{message}"
        );
    }

    #[test]
    fn the_date_is_a_plausible_utc_day() {
        let (date, time) = utc_now();
        assert_eq!(date.len(), 8);
        assert!(date.as_str() >= "20250101", "{date}");
        assert_eq!(time.len(), 6);
        assert!(time.as_str() < "240000", "{time}");
    }
}
