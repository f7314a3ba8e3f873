//! Volumes and datasets: NIfTI input/output, BraTS and MSD layouts, validation, synthetic phantoms,
//! normalisation and 2-D slice sampling for training.
