//! The Segmentation IOD (PS3.3 A.51) as a dicom-rs data set: the modules, their attributes and
//! the functional groups of every frame. README: DICOM SEG lists what is written.

use super::codes::{Code, Segment, CATEGORY, SEGMENTS};
use super::frames::{BitPacker, SliceMap};
use super::reference::{ReferenceSeries, SourceInstance};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;

/// What the frames are made from: the prediction's labels (NIfTI order) on the reference grid.
pub struct Content<'a> {
    pub reference: &'a ReferenceSeries,
    /// One map per reference instance, in the instances' order.
    pub maps: &'a [SliceMap],
    pub labels: &'a [u8],
    pub algorithm: &'a str,
}

/// The new object's identity, made by the caller (fresh UIDs, the time of writing).
pub struct Identity {
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub dimension_organization_uid: String,
    /// `YYYYMMDD` and `HHMMSS` (UTC).
    pub date: String,
    pub time: String,
}

/// (segment, index of the reference instance) for each frame: segment by segment, slices in
/// order along the normal; slices without a voxel of the segment are left out, but every
/// segment keeps at least its first slice so that it is present (empty) in the object.
pub fn frame_list(content: &Content) -> Vec<(&'static Segment, usize)> {
    let mut frames = Vec::new();
    for segment in &SEGMENTS {
        let before = frames.len();
        for (slice, map) in content.maps.iter().enumerate() {
            if map
                .voxels()
                .any(|v| segment.labels.contains(&content.labels[v]))
            {
                frames.push((segment, slice));
            }
        }
        if frames.len() == before {
            frames.push((segment, 0));
        }
    }
    frames
}

/// The frames' pixel data, one bit a pixel.
pub fn pixel_data(content: &Content, frames: &[(&Segment, usize)]) -> Vec<u8> {
    let mut packer = BitPacker::default();
    for (segment, slice) in frames {
        for v in content.maps[*slice].voxels() {
            packer.push(segment.labels.contains(&content.labels[v]));
        }
    }
    packer.finish()
}

/// The whole object: each module's attributes (the data set keeps them in tag order, so the
/// order they are put in does not matter).
pub fn build(content: &Content, id: &Identity) -> InMemDicomObject {
    let reference = content.reference;
    let frames = frame_list(content);
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |e: InMemElement| {
        obj.put(e);
    };
    sop_common(&mut put, id);
    patient_and_study(&mut put, reference);
    series_and_frame_of_reference(&mut put, reference, id);
    equipment(&mut put);
    segmentation_image(&mut put, content, id);
    image_pixel(&mut put, &reference.instances[0]);
    functional_groups(&mut put, reference, &frames);
    dimensions(&mut put, id);
    instance_references(&mut put, reference);
    put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(pixel_data(content, &frames)),
    ));
    obj
}

/// SOP Common; UTF-8 for whatever the copied names hold.
fn sop_common(put: &mut impl FnMut(InMemElement), id: &Identity) {
    put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    put(text(
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::SEGMENTATION_STORAGE,
    ));
    put(text(tags::SOP_INSTANCE_UID, VR::UI, &id.sop_instance_uid));
    put(text(tags::INSTANCE_CREATION_DATE, VR::DA, &id.date));
    put(text(tags::INSTANCE_CREATION_TIME, VR::TM, &id.time));
}

/// Patient and General Study: copied from the reference series (empty when it has none).
fn patient_and_study(put: &mut impl FnMut(InMemElement), reference: &ReferenceSeries) {
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        put(copied(reference, tag, vr));
    }
    if let Some(description) = reference.header.get(tags::STUDY_DESCRIPTION) {
        put(description.clone());
    }
    put(text(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &reference.study_instance_uid,
    ));
}

/// General Series, Segmentation Series and Frame of Reference.
fn series_and_frame_of_reference(
    put: &mut impl FnMut(InMemElement),
    reference: &ReferenceSeries,
    id: &Identity,
) {
    put(text(tags::MODALITY, VR::CS, "SEG"));
    put(text(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &id.series_instance_uid,
    ));
    let series_number = reference.series_number.unwrap_or(0).saturating_add(1000);
    put(text(
        tags::SERIES_NUMBER,
        VR::IS,
        &series_number.to_string(),
    ));
    put(text(tags::SERIES_DATE, VR::DA, &id.date));
    put(text(tags::SERIES_TIME, VR::TM, &id.time));
    put(text(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "CGGM Studio tumour segmentation",
    ));
    put(text(
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &reference.frame_of_reference_uid,
    ));
    put(copied(
        reference,
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
    ));
}

/// General and Enhanced General Equipment.
fn equipment(put: &mut impl FnMut(InMemElement)) {
    put(text(tags::MANUFACTURER, VR::LO, "CGGM Studio"));
    put(text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "CGGM Studio"));
    put(text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "cggm-studio"));
    put(text(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    ));
}

/// General Image, Segmentation Image (Content Identification, the segments) and the
/// Multi-frame Functional Groups' own attributes.
fn segmentation_image(put: &mut impl FnMut(InMemElement), content: &Content, id: &Identity) {
    put(text(tags::INSTANCE_NUMBER, VR::IS, "1"));
    put(text(tags::CONTENT_DATE, VR::DA, &id.date));
    put(text(tags::CONTENT_TIME, VR::TM, &id.time));
    put(strs(tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]));
    put(text(tags::CONTENT_LABEL, VR::CS, "TUMOUR"));
    put(text(
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Brain tumour sub-regions (BraTS NCR, ED, ET)",
    ));
    put(DataElement::new(
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        PrimitiveValue::Empty,
    ));
    put(text(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"));
    put(text(tags::SEGMENTS_OVERLAP, VR::CS, "NO"));
    put(sequence(
        tags::SEGMENT_SEQUENCE,
        SEGMENTS
            .iter()
            .map(|s| segment_item(s, content.algorithm))
            .collect(),
    ));
}

/// Image Pixel: one bit a pixel, on the grid of the reference's instances.
fn image_pixel(put: &mut impl FnMut(InMemElement), first: &SourceInstance) {
    put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    ));
    put(text(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    ));
    for (tag, value) in [
        (tags::ROWS, first.rows),
        (tags::COLUMNS, first.columns),
        (tags::BITS_ALLOCATED, 1),
        (tags::BITS_STORED, 1),
        (tags::HIGH_BIT, 0),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
    }
    put(text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
}

/// Multi-frame Functional Groups: the frame count, the shared and the per-frame groups.
fn functional_groups(
    put: &mut impl FnMut(InMemElement),
    reference: &ReferenceSeries,
    frames: &[(&'static Segment, usize)],
) {
    put(text(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    ));
    put(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(reference)],
    ));
    put(sequence(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        frames
            .iter()
            .map(|(segment, slice)| frame_groups(segment, *slice, &reference.instances[*slice]))
            .collect(),
    ));
}

/// Multi-frame Dimension: frames are indexed by segment, then by position.
fn dimensions(put: &mut impl FnMut(InMemElement), id: &Identity) {
    put(sequence(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![object([text(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            &id.dimension_organization_uid,
        )])],
    ));
    let dimension = |pointer: Tag, group: Tag, label: &str| {
        object([
            text(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                &id.dimension_organization_uid,
            ),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::from(pointer),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::from(group),
            ),
            text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    put(sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            dimension(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "ImagePositionPatient",
            ),
        ],
    ));
}

/// Common Instance Reference: every instance of the reference series.
fn instance_references(put: &mut impl FnMut(InMemElement), reference: &ReferenceSeries) {
    put(sequence(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![object([
            text(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                &reference.series_instance_uid,
            ),
            sequence(
                tags::REFERENCED_INSTANCE_SEQUENCE,
                reference.instances.iter().map(instance_reference).collect(),
            ),
        ])],
    ));
}

fn segment_item(segment: &Segment, algorithm: &str) -> InMemDicomObject {
    object([
        DataElement::new(
            tags::SEGMENT_NUMBER,
            VR::US,
            PrimitiveValue::from(segment.number),
        ),
        text(tags::SEGMENT_LABEL, VR::LO, segment.label),
        text(tags::SEGMENT_DESCRIPTION, VR::ST, segment.description),
        text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        text(
            tags::SEGMENT_ALGORITHM_NAME,
            VR::LO,
            &long_string(algorithm),
        ),
        sequence(
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code_item(CATEGORY)],
        ),
        sequence(
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![code_item(segment.kind)],
        ),
        DataElement::new(
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            VR::US,
            PrimitiveValue::U16(segment.cielab.iter().copied().collect()),
        ),
    ])
}

fn shared_groups(reference: &ReferenceSeries) -> InMemDicomObject {
    let first = &reference.instances[0];
    let spacing = slice_spacing(&reference.instances);
    let thickness = reference.slice_thickness.unwrap_or(spacing);
    object([
        sequence(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![object([
                decimals(tags::PIXEL_SPACING, &first.pixel_spacing),
                decimals(tags::SLICE_THICKNESS, &[thickness]),
                decimals(tags::SPACING_BETWEEN_SLICES, &[spacing]),
            ])],
        ),
        sequence(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![object([decimals(
                tags::IMAGE_ORIENTATION_PATIENT,
                &first.orientation,
            )])],
        ),
    ])
}

/// The distance between neighbouring slices along the normal (the median, so that one odd gap
/// does not set it); the pixel spacing's for a single slice.
fn slice_spacing(instances: &[SourceInstance]) -> f64 {
    let mut gaps: Vec<f64> = instances
        .windows(2)
        .map(|w| (w[1].depth() - w[0].depth()).abs())
        .collect();
    if gaps.is_empty() {
        return instances[0].pixel_spacing[0];
    }
    gaps.sort_by(f64::total_cmp);
    gaps[gaps.len() / 2]
}

fn frame_groups(segment: &Segment, slice: usize, source: &SourceInstance) -> InMemDicomObject {
    object([
        sequence(
            tags::DERIVATION_IMAGE_SEQUENCE,
            vec![object([
                sequence(
                    tags::DERIVATION_CODE_SEQUENCE,
                    vec![code_item(Code {
                        value: "113076",
                        scheme: "DCM",
                        meaning: "Segmentation",
                    })],
                ),
                sequence(
                    tags::SOURCE_IMAGE_SEQUENCE,
                    vec![{
                        let mut item = instance_reference(source);
                        item.put(sequence(
                            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                            vec![code_item(Code {
                                value: "121322",
                                scheme: "DCM",
                                meaning: "Source image for image processing operation",
                            })],
                        ));
                        item.put(text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"));
                        item
                    }],
                ),
            ])],
        ),
        sequence(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![object([DataElement::new(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::U32(
                    [segment.number as u32, slice as u32 + 1]
                        .into_iter()
                        .collect(),
                ),
            )])],
        ),
        sequence(
            tags::PLANE_POSITION_SEQUENCE,
            vec![object([decimals(
                tags::IMAGE_POSITION_PATIENT,
                &source.position,
            )])],
        ),
        sequence(
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![object([DataElement::new(
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                PrimitiveValue::from(segment.number),
            )])],
        ),
    ])
}

fn instance_reference(instance: &SourceInstance) -> InMemDicomObject {
    object([
        text(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            &instance.sop_class_uid,
        ),
        text(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &instance.sop_instance_uid,
        ),
    ])
}

fn code_item(code: Code) -> InMemDicomObject {
    object([
        text(tags::CODE_VALUE, VR::SH, code.value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, code.scheme),
        text(tags::CODE_MEANING, VR::LO, code.meaning),
    ])
}

/// The reference's value of `tag`, or an empty element (the Type 2 attributes it lacks).
fn copied(reference: &ReferenceSeries, tag: Tag, vr: VR) -> InMemElement {
    reference
        .header
        .get(tag)
        .cloned()
        .unwrap_or_else(|| DataElement::new(tag, vr, PrimitiveValue::Empty))
}

fn object<const N: usize>(elements: [InMemElement; N]) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn text(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn strs(tag: Tag, vr: VR, values: &[&str]) -> InMemElement {
    DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().map(|v| v.to_string()).collect()),
    )
}

/// Decimal strings (DS): at most 16 characters each.
fn decimals(tag: Tag, values: &[f64]) -> InMemElement {
    DataElement::new(
        tag,
        VR::DS,
        PrimitiveValue::Strs(values.iter().map(|v| decimal_string(*v)).collect()),
    )
}

pub(crate) fn decimal_string(value: f64) -> String {
    for precision in (0..=10).rev() {
        let mut text = format!("{value:.precision$}");
        if text.contains('.') {
            text = text.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if text == "-0" {
            text = "0".into();
        }
        if text.len() <= 16 {
            return text;
        }
    }
    format!("{value:.6e}")
}

/// A Long String (LO) holds at most 64 characters.
fn long_string(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(decimal_string(1.0), "1");
        assert_eq!(decimal_string(-0.5), "-0.5");
        assert_eq!(decimal_string(-0.0), "0");
        assert_eq!(decimal_string(0.1 + 0.2), "0.3");
        assert_eq!(decimal_string(-123456.123456789), "-123456.12345679");
        assert!(decimal_string(1e20).len() <= 16);
    }
}
