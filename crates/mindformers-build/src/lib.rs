//! Build-script helper for programs that use mindformers-rs (or tch) and link libtorch.
//!
//! A crate's build script can pass linker flags only to that crate's own binaries, tests and
//! examples, never to a dependent's: the rpath and `--no-as-needed` that the workspace's
//! crates need reach no other project's binary. Without the rpath the binary stops at start
//! with "libtorch_cpu.so: cannot open shared object file" unless `LD_LIBRARY_PATH` is set;
//! without `--no-as-needed` the linker drops `libtorch_cuda.so` (nothing references it by
//! symbol) and CUDA silently disappears. One call in the program's `build.rs` adds both:
//!
//! ```no_run
//! // the body of build.rs's `fn main`
//! mindformers_build::link_libtorch();
//! ```
//!
//! The libtorch location is read the way `torch-sys` reads it: `LIBTORCH` (a directory with
//! `lib/` and `include/`, typically set in `.cargo/config.toml`'s `[env]`), else, with
//! `LIBTORCH_USE_PYTORCH=1`, the `torch` package of the active Python.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where libtorch's shared libraries are, and which of them the binary must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Libtorch {
    /// The `lib/` directory holding `libtorch.so` (symlinks resolved).
    pub lib_dir: PathBuf,
    /// Whether this libtorch has CUDA (`libtorch_cuda.so` is present).
    pub cuda: bool,
}

impl Libtorch {
    /// Finds libtorch from `LIBTORCH` or, with `LIBTORCH_USE_PYTORCH`, from Python's `torch`.
    pub fn find() -> Result<Self, String> {
        let root = match std::env::var_os("LIBTORCH") {
            Some(root) => PathBuf::from(root),
            None if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() => python_torch_dir()?,
            None => {
                return Err(
                    "LIBTORCH is not set: point it at a libtorch directory (one with lib/ \
                            and include/), e.g. in .cargo/config.toml: [env] LIBTORCH = { value = \
                            \"path/to/libtorch\", relative = true }, or set LIBTORCH_USE_PYTORCH=1 \
                            to use the torch package of the active Python"
                        .into(),
                )
            }
        };
        Self::at(&root)
    }

    /// The libtorch under `root` (which holds `lib/`).
    pub fn at(root: &Path) -> Result<Self, String> {
        let lib = root.join("lib");
        let lib_dir = std::fs::canonicalize(&lib).map_err(|e| {
            format!(
                "libtorch at {}: cannot open {}: {e}; LIBTORCH must name a directory with lib/ \
                 and include/",
                root.display(),
                lib.display()
            )
        })?;
        if !has_lib(&lib_dir, "torch") {
            return Err(format!(
                "libtorch at {}: {} holds no libtorch.so",
                root.display(),
                lib_dir.display()
            ));
        }
        Ok(Libtorch {
            cuda: has_lib(&lib_dir, "torch_cuda"),
            lib_dir,
        })
    }

    /// The `cargo:` lines that link a binary to this libtorch (rpath, `--no-as-needed`).
    pub fn cargo_lines(&self) -> Vec<String> {
        let lib = self.lib_dir.display();
        let mut lines = vec![
            format!("cargo:rerun-if-changed={lib}"),
            format!("cargo:rustc-link-search=native={lib}"),
            format!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
            "cargo:rustc-link-arg=-Wl,--no-as-needed".to_string(),
            "cargo:rustc-link-arg=-ltorch".to_string(),
        ];
        if self.cuda {
            lines.push("cargo:rustc-link-arg=-ltorch_cuda".to_string());
        }
        lines.push("cargo:rustc-link-arg=-Wl,--as-needed".to_string());
        lines
    }
}

fn has_lib(dir: &Path, name: &str) -> bool {
    dir.join(format!("lib{name}.so")).exists() || dir.join(format!("lib{name}.dylib")).exists()
}

fn python_torch_dir() -> Result<PathBuf, String> {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .map_err(|e| format!("LIBTORCH_USE_PYTORCH: cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "LIBTORCH_USE_PYTORCH: {python} has no torch package: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Links the calling crate's binaries, tests and examples against libtorch; call it from
/// `build.rs`. Stops the build with the reason when libtorch cannot be found.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    match Libtorch::find() {
        Ok(torch) => {
            for line in torch.cargo_lines() {
                println!("{line}");
            }
        }
        Err(why) => {
            // cargo shows a build script's stderr when it fails; the message is the fix.
            eprintln!("error: {why}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_libtorch(libs: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        for l in libs {
            std::fs::write(dir.path().join("lib").join(format!("lib{l}.so")), b"").unwrap();
        }
        dir
    }

    #[test]
    fn a_cpu_libtorch_gets_rpath_and_keeps_libtorch() {
        let dir = fake_libtorch(&["torch", "torch_cpu"]);
        let t = Libtorch::at(dir.path()).unwrap();
        assert!(!t.cuda);
        let lines = t.cargo_lines();
        let lib = t.lib_dir.display().to_string();
        assert!(lines.contains(&format!("cargo:rustc-link-arg=-Wl,-rpath,{lib}")));
        let pos = |l: &str| lines.iter().position(|x| x == l).unwrap();
        // -ltorch must sit between --no-as-needed and --as-needed to survive.
        assert!(
            pos("cargo:rustc-link-arg=-Wl,--no-as-needed") < pos("cargo:rustc-link-arg=-ltorch")
        );
        assert!(pos("cargo:rustc-link-arg=-ltorch") < pos("cargo:rustc-link-arg=-Wl,--as-needed"));
        assert!(!lines.iter().any(|l| l.contains("torch_cuda")));
    }

    #[test]
    fn a_cuda_libtorch_keeps_libtorch_cuda() {
        let dir = fake_libtorch(&["torch", "torch_cuda"]);
        let t = Libtorch::at(dir.path()).unwrap();
        assert!(t.cuda);
        let lines = t.cargo_lines();
        let cuda = lines
            .iter()
            .position(|l| l == "cargo:rustc-link-arg=-ltorch_cuda")
            .unwrap();
        let as_needed = lines
            .iter()
            .position(|l| l == "cargo:rustc-link-arg=-Wl,--as-needed")
            .unwrap();
        assert!(cuda < as_needed);
    }

    #[test]
    fn a_directory_without_libtorch_is_a_clear_error() {
        let dir = fake_libtorch(&[]);
        let e = Libtorch::at(dir.path()).unwrap_err();
        assert!(e.contains("holds no libtorch.so"), "{e}");
        let e = Libtorch::at(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("LIBTORCH must name a directory"), "{e}");
    }
}
