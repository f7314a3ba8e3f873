//! The trainer's build script: run-time library paths (build/rpath.rs) and the C++ shim to
//! libtorch's autocast state and fused optimiser kernels (build/libtorch_shims.rs, csrc/).
#[path = "build/libtorch_shims.rs"]
mod libtorch_shims;
#[path = "build/rpath.rs"]
mod rpath;

fn main() {
    rpath::emit();
    libtorch_shims::compile();
}
