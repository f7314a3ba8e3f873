//! CGGM Studio trainer: NIfTI/BraTS data, multimodal segmentation models, classifier-guided
//! gradient modulation (CGGM, NeurIPS 2024), evaluation and inference.

pub mod cli;
pub mod data;
pub mod events;
