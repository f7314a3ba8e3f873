//! The trainer's build script: run-time library paths (build/rpath.rs) and the C++ shim to
//! libtorch's autocast state (build/amp_shim.rs, csrc/amp_shim.cpp).
#[path = "build/amp_shim.rs"]
mod amp_shim;
#[path = "build/rpath.rs"]
mod rpath;

fn main() {
    rpath::emit();
    amp_shim::compile();
}
