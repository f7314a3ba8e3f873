//! The three BraTS segments written into a DICOM SEG and their coded meaning (SNOMED CT, scheme
//! `SCT`), as PS3.3 C.8.20.2 asks for each segment: a category and a type.

/// One coded concept: (0008,0100) Code Value, (0008,0102) Coding Scheme Designator, (0008,0104)
/// Code Meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

/// Every tumour sub-region is a morphologically altered structure.
pub const CATEGORY: Code = Code {
    value: "49755003",
    scheme: "SCT",
    meaning: "Morphologically Altered Structure",
};

/// A segment of the SEG: which prediction label it holds and how it is described.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// (0062,0004) Segment Number, 1-based.
    pub number: u16,
    /// The BraTS labels of the prediction that belong to the segment.
    pub labels: &'static [u8],
    pub label: &'static str,
    pub description: &'static str,
    pub kind: Code,
    /// (0062,000D) Recommended Display CIELab Value, PS3.3 C.10.7.1.1 scaling (L* 0..100 and
    /// a*, b* -128..127 onto 0..65535); the viewer's colours (red, green, yellow).
    pub cielab: [u16; 3],
}

/// NCR (label 1), ED (label 2), ET (label 4; label 3 in BraTS 2023, which has no label 4).
pub const SEGMENTS: [Segment; 3] = [
    Segment {
        number: 1,
        labels: &[1],
        label: "Necrotic tumour core",
        description: "NCR: necrotic and non-enhancing tumour core (BraTS label 1)",
        kind: Code {
            value: "6574001",
            scheme: "SCT",
            meaning: "Necrosis",
        },
        cielab: [34891, 53480, 50168],
    },
    Segment {
        number: 2,
        labels: &[2],
        label: "Peritumoral edema",
        description: "ED: peritumoral edema (BraTS label 2)",
        kind: Code {
            value: "79654002",
            scheme: "SCT",
            meaning: "Edema",
        },
        cielab: [57494, 10751, 54278],
    },
    Segment {
        number: 3,
        labels: &[4, 3],
        label: "Enhancing tumour",
        // SNOMED CT has no concept for a contrast-enhancing tumour: the morphology "Neoplasm",
        // made precise by the segment's label and description (README: DICOM SEG).
        description: "ET: contrast-enhancing tumour (BraTS label 4, or 3 in BraTS 2023)",
        kind: Code {
            value: "108369006",
            scheme: "SCT",
            meaning: "Neoplasm",
        },
        cielab: [63662, 27346, 57169],
    },
];
