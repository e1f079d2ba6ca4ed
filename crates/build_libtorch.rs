//! Shared build script for every crate that links libtorch (tests and examples included).
//!
//! Why: tch's own `DEP_TCH_*` variables are invisible to crates that only depend on tch, and
//! without `--no-as-needed` the linker drops `libtorch_cuda` (nothing references it by symbol),
//! so CUDA silently disappears. The rpath makes binaries run with no `LD_LIBRARY_PATH`.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run `cargo xtask setup` first");
        return;
    };
    let root = PathBuf::from(root);
    let lib = std::fs::canonicalize(root.join("lib")).unwrap_or_else(|_| root.join("lib"));
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
