//! The one error type of the data layer. Every variant names the case and/or the file, says what is
//! wrong and how to fix it, because these messages reach users through `cggm validate`, the web page
//! and failed training jobs.

use std::fmt;
use std::path::{Path, PathBuf};

use super::Modality;

/// `"case X: "` when the case is known, nothing otherwise (file-level errors are raised before the
/// case is known and get it attached by [`DataError::in_case`]).
fn case_prefix(case: &str) -> String {
    if case.is_empty() {
        String::new()
    } else {
        format!("case {case}: ")
    }
}

/// How to turn any NIfTI-2 (or odd NIfTI-1) file into a plain NIfTI-1 `.nii.gz` with nibabel.
pub const CONVERT_TO_NIFTI1_HINT: &str = "convert it to NIfTI-1 with nibabel: python -c \"import sys, \
numpy as np, nibabel as nib; im = nib.load(sys.argv[1]); nib.save(nib.Nifti1Image(np.asanyarray(im.dataobj), \
im.affine), sys.argv[2])\" IN OUT.nii.gz";

#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    #[error("{}cannot read {}: {message}. Check that the file exists and is readable.", case_prefix(case), file.display())]
    Io {
        case: String,
        file: PathBuf,
        message: String,
    },

    #[error("{}{} is not a NIfTI file ({detail}). Provide NIfTI-1 volumes as .nii or .nii.gz.", case_prefix(case), file.display())]
    NotNifti {
        case: String,
        file: PathBuf,
        detail: String,
    },

    #[error("{}{} is a NIfTI-2 file, which is unsupported; {CONVERT_TO_NIFTI1_HINT}", case_prefix(case), file.display())]
    Nifti2Unsupported { case: String, file: PathBuf },

    #[error("{}{} claims dimensions {dims:?}, more than the limit of {limit} voxels; it was refused before decoding. If the volume is genuine, raise the limit with CGGM_MAX_VOXELS (in voxels), else re-export or crop it.", case_prefix(case), file.display())]
    TooLarge {
        case: String,
        file: PathBuf,
        dims: Vec<u64>,
        limit: u64,
    },

    #[error("{}{} is a truncated or corrupt gzip file ({detail}). Re-download or re-extract it; `gzip -t FILE` confirms the damage.", case_prefix(case), file.display())]
    CorruptGzip {
        case: String,
        file: PathBuf,
        detail: String,
    },

    #[error("{}{} is truncated: the header promises {expected} bytes of voxel data but only {got} are present. Re-download or re-export the file.", case_prefix(case), file.display())]
    TruncatedData {
        case: String,
        file: PathBuf,
        expected: u64,
        got: u64,
    },

    #[error("{}{} has an invalid NIfTI header ({detail}). Re-export the volume with a standard tool (nibabel, SimpleITK, FSL).", case_prefix(case), file.display())]
    BadHeader {
        case: String,
        file: PathBuf,
        detail: String,
    },

    #[error("{}{} uses NIfTI datatype {code} ({name}), which is unsupported; supported are uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32 and float64. Convert it, e.g. with nibabel: img.set_data_dtype(np.float32).", case_prefix(case), file.display())]
    UnsupportedDatatype {
        case: String,
        file: PathBuf,
        code: i16,
        name: String,
    },

    #[error("{}{} is not a 3-D volume (dimensions {dims:?}); each modality and the label must be one 3-D volume (MSD images: one 4-D file with 4 channels). Split or re-export it.", case_prefix(case), file.display())]
    NotThreeD {
        case: String,
        file: PathBuf,
        dims: Vec<usize>,
    },

    #[error("case {case}: the {} volume is missing in {}. Add a file named like {case}_{}.nii.gz (recognised suffixes: {}).", modality.name(), dir.display(), modality.name(), modality.suffixes().join(", "))]
    MissingModality {
        case: String,
        modality: Modality,
        dir: PathBuf,
    },

    #[error("case {case}: more than one file looks like the {} volume: {} and {}. Keep exactly one.", modality.name(), first.display(), second.display())]
    DuplicateModality {
        case: String,
        modality: Modality,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("case {case}: no label volume; training and evaluation need the segmentation (a *_seg.nii.gz file, or labelsTr/ for MSD). Add it or use the case for inference only.")]
    MissingLabel { case: String },

    #[error("case {case}: {} has shape {shape:?} but {} has shape {reference_shape:?}. All modalities and the label of a case must share one voxel grid; resample them onto the same grid.", file.display(), reference.display())]
    ShapeMismatch {
        case: String,
        file: PathBuf,
        shape: Vec<usize>,
        reference: PathBuf,
        reference_shape: Vec<usize>,
    },

    #[error("case {case}: the affine of {} differs from that of {} (largest difference {max_difference:.4}). The volumes are not co-registered; register/resample them onto one grid, or fix the header if only the header is wrong.", file.display(), reference.display())]
    AffineMismatch {
        case: String,
        file: PathBuf,
        reference: PathBuf,
        max_difference: f64,
    },

    #[error("{}{} contains label values {values:?} outside the {convention} convention (allowed {allowed}). Check that this is the segmentation and that it uses the {convention} label values.", case_prefix(case), file.display())]
    BadLabelValues {
        case: String,
        file: PathBuf,
        values: Vec<f64>,
        convention: &'static str,
        allowed: &'static str,
    },

    #[error("{}{} contains {count} NaN or infinite intensities (first at voxel {first_voxel:?}). Fix the export (e.g. replace them with 0 in nibabel: np.nan_to_num).", case_prefix(case), file.display())]
    NonFiniteIntensity {
        case: String,
        file: PathBuf,
        count: usize,
        first_voxel: Vec<usize>,
    },

    #[error("{}{} has no non-zero voxels, so it contains no brain. Check the file; skull-stripped volumes must have brain voxels above 0.", case_prefix(case), file.display())]
    EmptyVolume { case: String, file: PathBuf },

    #[error("{} does not match a known case file: {detail}. Give one BraTS case folder, four files ending in _flair/_t1ce/_t1/_t2 (optionally a _seg label), or one 4-D MSD image.", file.display())]
    UnrecognisedInput { file: PathBuf, detail: String },

    #[error("case {case}: {} leads outside the dataset folder through a link, so it was ignored. Copy the file into the dataset folder instead of linking it, or register the folder it really lives in.", file.display())]
    OutsideDataset {
        case: String,
        file: PathBuf,
        /// The dataset folder (canonical), for callers; not in the message, which may reach
        /// clients that have no business knowing where the server keeps its data.
        root: PathBuf,
    },

    #[error("{}: {detail}. Fix the dataset description (README \"Data layouts\" shows the fields read).", file.display())]
    DatasetDescription { file: PathBuf, detail: String },

    #[error("split file {}: {detail}. Expected JSON {{\"train\": [ids], \"val\": [ids], \"test\": [ids]}} naming discovered cases.", file.display())]
    SplitFile { file: PathBuf, detail: String },

    #[error("slice cache {}: {detail}. Delete the file (it is rebuilt) or set another cache directory (CGGM_CACHE_DIR).", file.display())]
    Cache { file: PathBuf, detail: String },

    #[error("invalid data configuration: {detail}")]
    Config { detail: String },
}

impl DataError {
    pub(crate) fn io(file: &Path, err: &std::io::Error) -> Self {
        DataError::Io {
            case: String::new(),
            file: file.to_path_buf(),
            message: err.to_string(),
        }
    }

    /// Attaches the case name to a file-level error (raised before the case was known).
    pub fn in_case(mut self, case_name: &str) -> Self {
        use DataError::*;
        match &mut self {
            Io { case, .. }
            | NotNifti { case, .. }
            | Nifti2Unsupported { case, .. }
            | TooLarge { case, .. }
            | CorruptGzip { case, .. }
            | TruncatedData { case, .. }
            | BadHeader { case, .. }
            | UnsupportedDatatype { case, .. }
            | NotThreeD { case, .. }
            | BadLabelValues { case, .. }
            | NonFiniteIntensity { case, .. }
            | EmptyVolume { case, .. }
                if case.is_empty() =>
            {
                *case = case_name.to_string();
            }
            _ => {}
        }
        self
    }
}

/// One case that discovery or validation skipped, and why.
#[derive(Debug, Clone)]
pub struct CaseProblem {
    pub case: String,
    pub error: DataError,
}

impl fmt::Display for CaseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.error.to_string();
        if message.contains(&format!("case {}", self.case)) {
            write!(f, "{message}")
        } else {
            write!(f, "case {}: {message}", self.case)
        }
    }
}
