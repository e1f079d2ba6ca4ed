//! The checks that the crates work from outside this workspace: two standalone projects under
//! `examples/external/` built and run as a user would, `cargo package` for every crate, and the
//! feature combinations a user can pick.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, root, run};

/// The crates a user can depend on, in dependency order.
const CRATES: &[&str] = &[
    "mindformers-build",
    "mf-core",
    "mf-tokenizers",
    "mf-models",
    "mf-data",
    "mf-parallel",
    "mf-pipeline",
    "mf-trainer",
    "mindformers",
];

/// The feature sets CI keeps compiling, beyond the all-on build of the test suite: each crate
/// with its optional pieces off, and the NCCL backend on.
const FEATURE_CHECKS: &[(&str, &[&str])] = &[
    ("mf-core", &["--no-default-features"]),
    ("mf-core", &["--features", "nccl"]),
    ("mf-tokenizers", &["--no-default-features"]),
    ("mf-data", &["--no-default-features"]),
    ("mf-trainer", &["--no-default-features"]),
    ("mindformers", &["--no-default-features"]),
    ("mindformers", &["--features", "nccl"]),
];

/// A cargo command run in `dir` as a user's shell would run it: no `LIBTORCH` or
/// `LD_LIBRARY_PATH` inherited from `cargo xtask` (cargo sets `LIBTORCH` for it from the
/// workspace config), building into the workspace's target directory: the dependencies built
/// for the test suite are reused (in its own, a clean clone compiled libtorch's bindings and
/// ~250 crates a second time, over ten minutes on 2 cores).
fn user_cargo(dir: &Path) -> Command {
    let mut c = cargo();
    c.current_dir(dir)
        .env_remove("LIBTORCH")
        .env_remove("LD_LIBRARY_PATH")
        .env("CARGO_TARGET_DIR", root().join("target"));
    c
}

/// Where the external checks keep their files (the tiny model with its word tokenizer).
fn external_target() -> PathBuf {
    root().join("target/external")
}

fn output(cmd: &mut Command) -> Result<String> {
    eprintln!("+ {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {cmd:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `examples/external/tokenizer-only`: depends on mf-tokenizers alone, so libtorch must not be
/// in its build graph at all, and it must print what the seed document shows.
fn tokenizer_only() -> Result<()> {
    let dir = root().join("examples/external/tokenizer-only");
    let tree = output(user_cargo(&dir).args(["tree", "-e", "normal,build", "--prefix", "none"]))?;
    let torch: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("torch-sys") || l.starts_with("tch "))
        .collect();
    ensure!(
        torch.is_empty(),
        "mf-tokenizers pulls in libtorch ({}): a crate that only tokenizes must build without it",
        torch.join(", ")
    );
    let printed = output(user_cargo(&dir).args(["run", "--quiet"]))?;
    let seed = "{'input_ids': [31373, 0], 'token_type_ids': [0, 0], 'attention_mask': [1, 1]}";
    ensure!(
        printed.trim() == seed,
        "tokenizer-only printed {printed:?}, the seed document shows {seed:?}"
    );
    eprintln!("tokenizer-only: no libtorch in its graph; printed {seed}");
    Ok(())
}

/// A word-level tokenizer for the tiny GPT-2 fixture's 1000 ids: token `t{i}` is id `i`, so a
/// prompt of ids is a text and generated ids read back as words.
pub(crate) fn tiny_word_tokenizer(vocab: usize) -> serde_json::Value {
    let words: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|i| (format!("t{i}"), i.into())).collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": "t0" }
    })
}

/// `examples/external/app`: depends on `mindformers`, links libtorch through its build.rs and
/// `.cargo/config.toml` only, and runs a text_generation pipeline whose greedy output must be
/// transformers' (the gpt2_tiny fixture's `greedy` case).
fn app() -> Result<()> {
    let fixture = root().join("tests/fixtures/gpt2_tiny");
    let model = external_target().join("gpt2_tiny_words");
    std::fs::create_dir_all(&model)?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).with_context(|| format!("copying {f}"))?;
    }
    std::fs::write(
        model.join("tokenizer.json"),
        serde_json::to_string(&tiny_word_tokenizer(1000))?,
    )?;
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json"))?)?;
    let case = &expected["cases"]["greedy"];
    let words = |key: &str| -> Result<String> {
        let ids = case[key].as_array().context("expected.json: greedy case")?;
        Ok(ids
            .iter()
            .map(|i| format!("t{}", i.as_u64().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" "))
    };
    let (prompt, want) = (words("prompt")?, words("output_ids")?);
    let new_tokens = case["max_new_tokens"].to_string();

    let dir = root().join("examples/external/app");
    run(user_cargo(&dir).args(["build", "--quiet"]))?;
    let bin = root().join("target/debug/mf-example-app");
    let needed = output(Command::new("readelf").arg("-d").arg(&bin))?;
    ensure!(
        needed.contains("RUNPATH") || needed.contains("RPATH"),
        "{} has no rpath: mindformers-build did not reach the binary",
        bin.display()
    );
    let libtorch = std::fs::canonicalize(root().join(".libtorch/lib"))?;
    if libtorch.join("libtorch_cuda.so").exists() {
        ensure!(
            needed.contains("libtorch_cuda.so"),
            "{} does not need libtorch_cuda.so although libtorch has CUDA: the linker dropped it",
            bin.display()
        );
    }
    let printed = output(
        Command::new(&bin)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LIBTORCH")
            .arg(&model)
            .arg(&prompt)
            .arg(&new_tokens),
    )?;
    ensure!(
        printed.trim() == want,
        "the external app generated {:?}; transformers' greedy output is {want:?}",
        printed.trim()
    );
    eprintln!("external app: rpath set, greedy text_generation equals transformers' ({new_tokens} tokens)");
    Ok(())
}

/// Builds and runs both external example projects.
pub fn external_examples() -> Result<()> {
    tokenizer_only()?;
    app()
}

/// `cargo package` for every crate: each carries what it embeds and its own build script.
/// The workspace's integration tests and examples live outside the facade crate on purpose
/// (they are the workspace's, not the package's), so cargo's notes about leaving them out are
/// counted, not printed.
pub fn package() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["package", "--allow-dirty", "--no-verify"]);
    for c in CRATES {
        cmd.args(["-p", c]);
    }
    eprintln!("+ {cmd:?}");
    let out = cmd.output().context("starting cargo package")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (left_out, rest): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| {
        l.starts_with("warning: ignoring example") || l.starts_with("warning: ignoring test")
    });
    for line in rest
        .iter()
        .filter(|l| !l.trim_start().starts_with("Updating"))
    {
        eprintln!("{line}");
    }
    ensure!(
        out.status.success(),
        "cargo package failed ({})",
        out.status
    );
    eprintln!(
        "packaged {} crates ({} workspace-level tests and examples left out of the facade's package)",
        CRATES.len(),
        left_out.len()
    );
    for c in CRATES {
        embedded_files_are_packaged(c)?;
    }
    Ok(())
}

/// Every `include_str!`/`include_bytes!` of a crate must name a file inside that crate's
/// package (a `../` path out of it builds here and fails for every user of the package).
fn embedded_files_are_packaged(krate: &str) -> Result<()> {
    let dir = root().join("crates").join(krate);
    let listed = output(cargo().args(["package", "--allow-dirty", "--list", "-p", krate]))?;
    let listed: std::collections::HashSet<&str> = listed.lines().collect();
    let crate_dir = dir.canonicalize()?;
    let mut sources = Vec::new();
    rust_files(&dir.join("src"), &mut sources)?;
    for file in sources {
        let text = std::fs::read_to_string(&file)?;
        for path in include_paths(&text) {
            let target = file.parent().unwrap_or(&dir).join(path);
            let target = target
                .canonicalize()
                .with_context(|| format!("{}: includes missing {path}", file.display()))?;
            let inside = target
                .strip_prefix(&crate_dir)
                .ok()
                .and_then(|p| p.to_str())
                .filter(|p| listed.contains(p));
            ensure!(
                inside.is_some(),
                "{} embeds {path}, which is not in the {krate} package: move the file into \
                 crates/{krate}/ (a crate ships what it embeds)",
                file.display()
            );
        }
    }
    Ok(())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The literal paths of `include_str!("...")` / `include_bytes!("...")` in Rust source.
fn include_paths(text: &str) -> Vec<&str> {
    let mut paths = Vec::new();
    for mac in ["include_str!(\"", "include_bytes!(\""] {
        let mut rest = text;
        while let Some(i) = rest.find(mac) {
            rest = &rest[i + mac.len()..];
            if let Some(end) = rest.find('"') {
                paths.push(&rest[..end]);
                rest = &rest[end..];
            }
        }
    }
    paths
}

/// The crates (with their flags) whose job needs no tensors: libtorch must not be in their
/// build graph.
const WITHOUT_LIBTORCH: &[(&str, &[&str])] = &[
    ("mf-tokenizers", &[]),
    ("mf-data", &["--no-default-features"]),
];

/// `cargo check` of every feature set in [`FEATURE_CHECKS`], and no `torch-sys` under the
/// crates of [`WITHOUT_LIBTORCH`].
pub fn features() -> Result<()> {
    for (krate, flags) in WITHOUT_LIBTORCH {
        let tree = output(
            cargo()
                .args([
                    "tree",
                    "-e",
                    "normal,build",
                    "--prefix",
                    "none",
                    "-p",
                    krate,
                ])
                .args(*flags),
        )?;
        ensure!(
            !tree.lines().any(|l| l.starts_with("torch-sys ")),
            "`cargo tree -p {krate} {}` shows torch-sys: its job needs no tensors, so libtorch \
             must stay behind its `tch` feature",
            flags.join(" ")
        );
    }
    for (krate, flags) in FEATURE_CHECKS {
        run(cargo().args(["check", "--quiet", "-p", krate]).args(*flags))?;
    }
    Ok(())
}

/// `cargo xtask crates [features|package|external]`: those checks (all three by default),
/// without the test suite.
pub fn crates(part: Option<&str>) -> Result<()> {
    match part {
        None => {
            features()?;
            package()?;
            external_examples()
        }
        Some("features") => features(),
        Some("package") => package(),
        Some("external") => external_examples(),
        Some(other) => bail!("cargo xtask crates {other}: expected features, package or external"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_paths_a_crate_embeds() {
        let src = r#"const A: &str = include_str!("../assets/a.json");
            static B: &[u8] = include_bytes!("../../../fonts/b.ttf");
            let c = "include_str! in a string is not a call";"#;
        assert_eq!(
            include_paths(src),
            ["../assets/a.json", "../../../fonts/b.ttf"]
        );
    }

    #[test]
    fn the_tiny_word_tokenizer_maps_words_to_ids() {
        let t = tiny_word_tokenizer(3);
        assert_eq!(t["model"]["vocab"]["t2"], 2);
        assert_eq!(t["model"]["vocab"].as_object().unwrap().len(), 3);
    }
}
