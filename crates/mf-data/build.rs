// Links this crate's own tests and examples against libtorch when the `tch` feature is on.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        mindformers_build::link_libtorch();
    }
}
