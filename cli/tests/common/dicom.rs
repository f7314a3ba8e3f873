//! DICOM series for the import tests, written by scripts/make-dicom.py (pydicom) in the project's
//! Python environment, and the multipart bodies that carry them.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MODALITIES: [&str; 4] = ["flair", "t1ce", "t1", "t2"];

/// The interpreter with pydicom (set by `scripts/with-torch.sh`).
pub fn python() -> PathBuf {
    match std::env::var_os("CGGM_PYTHON").or(option_env!("CGGM_BUILD_PYTHON").map(Into::into)) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "CGGM_PYTHON is not set: the DICOM tests write their series with pydicom. Run the \
             tests through `scripts/with-torch.sh cargo test ...` (or `make test`)."
        ),
    }
}

/// Runs scripts/make-dicom.py with `args`; `out` is a folder or a `.zip`.
pub fn make_dicom(out: &Path, args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-dicom.py");
    let output = Command::new(python())
        .arg(script)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("the CGGM_PYTHON interpreter starts");
    assert!(
        output.status.success(),
        "make-dicom.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A zipped phantom series per modality (32x32x16, 1 mm), each modality its own intensities;
/// `tweak` adds arguments for one modality.
pub fn phantom_zips(dir: &Path, tweak: impl Fn(&str) -> Vec<String>) -> Vec<(String, PathBuf)> {
    MODALITIES
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let zip = dir.join(format!("{m}.zip"));
            let mut args: Vec<String> = vec![
                "--modality".into(),
                m.to_string(),
                "--seed".into(),
                i.to_string(),
            ];
            args.extend(tweak(m));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            make_dicom(&zip, &args);
            (m.to_string(), zip)
        })
        .collect()
}

/// A zip of one series per modality written from a case's NIfTI files
/// (`<case>/<case>_<modality>.nii.gz`).
pub fn zips_from_case(case: &Path, dir: &Path) -> Vec<(String, PathBuf)> {
    let id = case.file_name().unwrap().to_string_lossy().to_string();
    MODALITIES
        .iter()
        .map(|m| {
            let nifti = case.join(format!("{id}_{m}.nii.gz"));
            let zip = dir.join(format!("{m}.zip"));
            make_dicom(
                &zip,
                &[
                    "--nifti",
                    nifti.to_str().unwrap(),
                    "--modality",
                    m,
                    "--patient",
                    &id,
                ],
            );
            (m.to_string(), zip)
        })
        .collect()
}

/// The number of files under `dir`, in any sub-folder (an unpacked zip keeps its folders).
pub fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
}
