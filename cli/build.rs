//! The tests' oracle (nibabel, pydicom, the MONAI Label client) lives in the project's Python
//! environment (`scripts/setup-python.sh`). This package links no libtorch, so it cannot learn that
//! environment from torch-sys as the trainer does (`build/rpath.rs`); it computes the same cache
//! path instead, so `cargo test` finds it without `CGGM_PYTHON`.
fn main() {
    for var in [
        "CGGM_CACHE_DIR",
        "XDG_CACHE_HOME",
        "HOME",
        "CGGM_TORCH_VERSION",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let cache = std::env::var_os("CGGM_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| std::path::Path::new(&d).join("cggm-studio"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/cggm-studio"))
        });
    let version = std::env::var("CGGM_TORCH_VERSION").unwrap_or_else(|_| "2.13.0".into());
    if let Some(python) = cache
        .map(|c| c.join(format!("venv-torch-{version}/bin/python")))
        .filter(|p| p.exists())
    {
        println!("cargo:rustc-env=CGGM_BUILD_PYTHON={}", python.display());
    }
}
