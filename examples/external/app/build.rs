// The one line a program using mindformers-rs needs: link the binary against libtorch with an
// rpath (so it starts without LD_LIBRARY_PATH) and keep libtorch_cuda (so CUDA stays).
fn main() {
    mindformers_build::link_libtorch();
}
