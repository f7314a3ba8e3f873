//! Volumes and datasets: NIfTI input/output, BraTS and MSD layouts, validation, synthetic phantoms,
//! normalisation and 2-D slice sampling for training.
//!
//! Internal conventions, fixed for the whole project:
//! - modalities in the order [`Modality::ALL`] = flair, t1ce, t1, t2 (never file order);
//! - labels 0 background, 1 NCR/NET (necrotic / non-enhancing core), 2 oedema, 3 enhancing tumour
//!   ([`LABEL_NCR`], [`LABEL_OEDEMA`], [`LABEL_ENHANCING`]); written back to disk as BraTS 0/1/2/4;
//! - images `[4, X, Y, Z]` z-scored per modality over the brain (non-zero) voxels, background 0.

mod cache;
mod description;
mod error;
pub mod features;
mod layout;
mod nifti_io;
mod sampler;
mod split;
mod study;
pub mod synth;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use description::{CHANNEL_MAP_FILE, DESCRIPTION_FILE};
pub use error::{CaseProblem, DataError, CONVERT_TO_NIFTI1_HINT};
pub use layout::{case_from_paths, discover, DiscoveryReport, Layout};
pub(crate) use nifti_io::write_atomically;
pub use nifti_io::{
    header_affine, max_voxels, read_header, read_volume, write_label_volume, write_label_volume_as,
    write_volume_i16, write_volume_u8, HeaderInfo, DEFAULT_MAX_VOXELS,
};
pub use sampler::{Augmentation, SampleDraw, SamplerConfig, SliceBatch, SliceLoader};
pub use split::{
    read_saved_split, resolve_saved_split, split_cases, split_from_file, write_saved_split,
    SavedSplit, SavedSplitError, Split, SPLIT_FILE_NAME,
};
pub use study::{
    brats_to_internal, internal_to_brats, load_study, msd_to_internal, validate_dataset,
    validate_dataset_counting, voxel_spacing_mm, Study,
};

/// Internal class of the necrotic / non-enhancing tumour core.
pub const LABEL_NCR: u8 = 1;
/// Internal class of the peritumoral oedema.
pub const LABEL_OEDEMA: u8 = 2;
/// Internal class of the enhancing tumour (BraTS writes 4, or 3 in newer releases).
pub const LABEL_ENHANCING: u8 = 3;
/// Number of internal classes, background included.
pub const NUM_CLASSES: usize = 4;

/// One MRI contrast. The project's order is [`Modality::ALL`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Flair,
    T1ce,
    T1,
    T2,
}

impl Modality {
    pub const ALL: [Modality; 4] = [Modality::Flair, Modality::T1ce, Modality::T1, Modality::T2];

    pub fn name(self) -> &'static str {
        match self {
            Modality::Flair => "flair",
            Modality::T1ce => "t1ce",
            Modality::T1 => "t1",
            Modality::T2 => "t2",
        }
    }

    /// Position in [`Modality::ALL`] (channel index of the image tensors).
    pub fn index(self) -> usize {
        self as usize
    }

    /// File-name suffixes (after the last `_` or `-`) that denote this modality; BraTS 2021 names
    /// first, then the BraTS 2023 and other common spellings.
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            Modality::Flair => &["flair", "t2f", "t2flair"],
            Modality::T1ce => &["t1ce", "t1gd", "t1c", "t1ce1", "t1post"],
            Modality::T1 => &["t1", "t1n", "t1w"],
            Modality::T2 => &["t2", "t2w"],
        }
    }

    /// Parses a modality name or any of its [`suffixes`](Self::suffixes), case-insensitively.
    pub fn parse(s: &str) -> Option<Modality> {
        let lower = s.trim().to_ascii_lowercase();
        Modality::ALL
            .into_iter()
            .find(|m| m.suffixes().contains(&lower.as_str()))
    }
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one case's files are; produced by [`discover`] or [`case_from_paths`].
#[derive(Clone, Debug)]
pub struct CaseSource {
    pub id: String,
    pub files: CaseFiles,
}

#[derive(Clone, Debug)]
pub enum CaseFiles {
    /// BraTS or nnU-Net v2: one 3-D file per modality, in [`Modality::ALL`] order.
    Separate {
        images: [PathBuf; 4],
        label: Option<PathBuf>,
        label_values: LabelValues,
    },
    /// Medical Segmentation Decathlon Task01: one 4-D image, `channels[i]` the modality of its
    /// channel `i` (the dataset's `modality` map; [`MSD_CHANNELS`] by default); MSD label values.
    Msd4d {
        image: PathBuf,
        label: Option<PathBuf>,
        channels: [Modality; 4],
    },
}

/// The channel order of MSD Task01's 4-D images: FLAIR, T1w, T1gd, T2w.
pub const MSD_CHANNELS: [Modality; 4] =
    [Modality::Flair, Modality::T1, Modality::T1ce, Modality::T2];

/// The label numbering a written segmentation uses (`cggm infer --labels`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputLabels {
    /// 0, 1 NCR, 2 oedema, 4 enhancing (BraTS 2021 and earlier).
    #[default]
    Brats2021,
    /// 0, 1 NCR, 2 oedema, 3 enhancing (BraTS 2023+).
    Brats2023,
    /// 0, 1 oedema, 2 non-enhancing, 3 enhancing (MSD Task01, nnU-Net's BraTS conversion).
    Msd,
}

impl OutputLabels {
    /// The value written for internal class `class` (0..3).
    ///
    /// ```
    /// use cggm_trainer::data::{OutputLabels, LABEL_ENHANCING, LABEL_NCR, LABEL_OEDEMA};
    /// let classes = [0, LABEL_NCR, LABEL_OEDEMA, LABEL_ENHANCING];
    /// assert_eq!(classes.map(|c| OutputLabels::Brats2021.value_of(c)), [0, 1, 2, 4]);
    /// assert_eq!(classes.map(|c| OutputLabels::Brats2023.value_of(c)), [0, 1, 2, 3]);
    /// assert_eq!(classes.map(|c| OutputLabels::Msd.value_of(c)), [0, 2, 1, 3]);
    /// ```
    pub fn value_of(self, class: u8) -> u8 {
        match (self, class) {
            (_, 0) => 0,
            (OutputLabels::Brats2021, c) => internal_to_brats(c),
            // BraTS 2023 numbers the classes as the project does internally.
            (OutputLabels::Brats2023, c) => c,
            (OutputLabels::Msd, c) if c == LABEL_OEDEMA => 1,
            (OutputLabels::Msd, c) if c == LABEL_NCR => 2,
            (OutputLabels::Msd, _) => 3,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            OutputLabels::Brats2021 => "BraTS 2021 labels 0/1 NCR/2 ED/4 ET",
            OutputLabels::Brats2023 => "BraTS 2023 labels 0/1 NCR/2 ED/3 ET",
            OutputLabels::Msd => "MSD labels 0/1 ED/2 NET/3 ET",
        }
    }
}

/// How a label file numbers the tumour classes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelValues {
    /// 1 NCR, 2 oedema, 4 enhancing (BraTS 2021) or 3 (BraTS 2023+).
    Brats,
    /// 1 oedema, 2 non-enhancing, 3 enhancing (MSD Task01, nnU-Net's BraTS conversion).
    Msd,
}

impl LabelValues {
    /// The internal class of a label value, `None` for a value outside the numbering.
    pub fn class_of(self, value: u8) -> Option<u8> {
        match self {
            LabelValues::Brats => brats_to_internal(value),
            LabelValues::Msd => msd_to_internal(value),
        }
    }

    /// The numbering's name and its values, for error messages.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            LabelValues::Brats => ("BraTS", "0, 1 NCR, 2 oedema, 4 (or 3) enhancing"),
            LabelValues::Msd => ("MSD Task01", "0, 1 oedema, 2 non-enhancing, 3 enhancing"),
        }
    }
}

impl CaseSource {
    /// Every file of the case, label last.
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.files {
            CaseFiles::Separate { images, label, .. } => {
                images.iter().cloned().chain(label.clone()).collect()
            }
            CaseFiles::Msd4d { image, label, .. } => std::iter::once(image.clone())
                .chain(label.clone())
                .collect(),
        }
    }

    pub fn label_path(&self) -> Option<&PathBuf> {
        match &self.files {
            CaseFiles::Separate { label, .. } | CaseFiles::Msd4d { label, .. } => label.as_ref(),
        }
    }

    /// How the case's label file numbers the classes.
    pub fn label_values(&self) -> LabelValues {
        match &self.files {
            CaseFiles::Separate { label_values, .. } => *label_values,
            CaseFiles::Msd4d { .. } => LabelValues::Msd,
        }
    }
}
