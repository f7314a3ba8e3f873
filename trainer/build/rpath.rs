//! Makes every binary, test and bench of the package find libtorch at run time without
//! `LD_LIBRARY_PATH`. torch-sys (`links = "tch"`) publishes the library folder it
//! linked against as `DEP_TCH_LIBTORCH_LIB` to packages that depend on it directly.
pub fn emit() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // The Python whose torch wheel we link (`<venv>/lib/pythonX.Y/site-packages/torch/lib`): the
    // tests' oracle (nibabel, torch) lives in the same venv, so `cargo test` finds it without
    // CGGM_PYTHON.
    let python = std::path::Path::new(&lib)
        .ancestors()
        .nth(5)
        .map(|venv| venv.join("bin").join("python"));
    if let Some(python) = python.filter(|p| p.exists()) {
        println!("cargo:rustc-env=CGGM_BUILD_PYTHON={}", python.display());
    }
    // With the default `--as-needed`, the linker drops libtorch_cuda (nothing references it by
    // symbol) and CUDA silently becomes unavailable; keep it when the wheel ships it.
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
