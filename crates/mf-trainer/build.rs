// Links this crate's binaries, tests and examples against libtorch (rpath, CUDA kept).
fn main() {
    mindformers_build::link_libtorch();
}
