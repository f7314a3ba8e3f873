//! Compiles the C++ shims (csrc/amp_shim.cpp: autocast state; csrc/fused_optim.cpp: fused
//! optimiser kernels) against the headers of the libtorch that torch-sys links, found
//! the way torch-sys's own build script finds them (torch-sys 0.26 `build.rs`, `SystemInfo::new`):
//! `LIBTORCH_USE_PYTORCH` asks the Python on PATH (`python` in a virtualenv, else `python3`) for
//! `torch.utils.cpp_extension.include_paths()` and the C++11 ABI flag; otherwise `LIBTORCH_INCLUDE`
//! or `LIBTORCH` (`<dir>/include`) with `LIBTORCH_CXX11_ABI` (default 1); otherwise the folder
//! beside the library torch-sys linked (`DEP_TCH_LIBTORCH_LIB/../include`, the libtorch it
//! downloaded). C++17, as torch-sys compiles its own wrapper.
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: [&str; 2] = ["csrc/amp_shim.cpp", "csrc/fused_optim.cpp"];

pub fn compile() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let (includes, cxx11_abi) = headers();
    let probe = includes.iter().map(|d| d.join("ATen/autocast_mode.h"));
    if !probe.clone().any(|p| p.is_file()) {
        panic!(
            "the libtorch headers (ATen/autocast_mode.h) are not in {includes:?}: build through \
             scripts/with-torch.sh (a torch wheel ships them), or set LIBTORCH (or \
             LIBTORCH_INCLUDE) to a libtorch folder that has include/"
        );
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        // libtorch's headers warn under C++17 (bit-field initialisers); ours are not theirs.
        .warnings(false)
        .includes(&includes)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .files(SOURCES)
        .compile("cggm_libtorch_shims");
}

/// The include folders and the `_GLIBCXX_USE_CXX11_ABI` value ("0" or "1").
fn headers() -> (Vec<PathBuf>, String) {
    if env("LIBTORCH_USE_PYTORCH").is_some() {
        return from_python();
    }
    let abi = env("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".into());
    let root = env("LIBTORCH_INCLUDE")
        .or_else(|| env("LIBTORCH"))
        .map(PathBuf::from);
    let root = root.or_else(|| {
        env("DEP_TCH_LIBTORCH_LIB").and_then(|lib| Path::new(&lib).parent().map(Path::to_path_buf))
    });
    let root = root.expect("torch-sys found a libtorch, so DEP_TCH_LIBTORCH_LIB is set");
    let includes = vec![
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    (includes, abi)
}

fn from_python() -> (Vec<PathBuf>, String) {
    let python = if env("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let script = "import torch\nfrom torch.utils import cpp_extension\n\
                  print('ABI', int(torch._C._GLIBCXX_USE_CXX11_ABI))\n\
                  for p in cpp_extension.include_paths(): print('INCLUDE', p)\n";
    let out = Command::new(python)
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("LIBTORCH_USE_PYTORCH is set but {python} cannot run: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "LIBTORCH_USE_PYTORCH is set but {python} cannot import torch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut includes = Vec::new();
    let mut abi = "1".to_string();
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("INCLUDE ") {
            includes.push(PathBuf::from(path));
        } else if let Some(value) = line.strip_prefix("ABI ") {
            abi = value.to_string();
        }
    }
    (includes, abi)
}

/// An environment variable, with cargo told to rerun when it changes.
fn env(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok()
}
