//! `cargo xtask codegen [--check] [--fixtures]`: the committed files that are derived from other
//! files in the repository, regenerated (or, with `--check`, compared without writing).
//!
//! | derived file | derived from |
//! |---|---|
//! | `crates/mf-models/src/presets.rs` (the `include_str!` table of every preset) | the files under `crates/mf-models/presets/<family>/` |
//! | the preset table in `README.md` (between `<!-- codegen:presets -->` markers) | the same preset files (`model_type`, `task`, `description`, `hub_repo`; LoRA's `base_model`) |
//! | the `id2label` line of `presets/bert/tokcls_bert_base_chinese_cluener.toml` | `tools/labels/cluener.txt` (the 10 CLUENER 2020 entity types) |
//! | `tests/fixtures/` | `tools/reference/*.py` run with `.venv/bin/python` (BERT's QA cases with `.venv-tf4`'s transformers 4.x) |
//!
//! ImageNet-1k's class list is not generated: no vision model exists yet, so nothing would read
//! it; it gets a source file here when the first image classifier does.
//!
//! `codegen` rewrites the cheap files, `codegen --fixtures` the fixtures too. `codegen --check`
//! writes nothing: it compares the cheap files, then (when `.venv` can run the generators, about
//! 40 s on 2 cores) regenerates the fixtures into a temporary directory and compares them:
//! byte-equal, except `.json` (same structure, integers exact, floats within tolerance) and
//! `.safetensors` (same metadata, names, dtypes and shapes; `F32`/`F64` values within
//! tolerance, the rest byte-equal). The tolerance is `|a - b| <= ATOL + RTOL * max(|a|, |b|)`
//! with both 1e-4, not 1e-6 relative: regenerated on another CPU (same torch 2.13.0,
//! transformers 5.24.0) the committed fixtures differ by up to 9.5e-6 absolute (PanGu-α logits
//! near 18, and greedy margins that are differences of such logits) and 2.3% relative (a logit
//! of 5e-5), as matmul kernels sum in another order. Integers (ids, generated tokens) are exact,
//! and a real change to a generator moves values far beyond 1e-4.
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Where the preset files live, relative to the repository root.
const PRESETS_DIR: &str = "crates/mf-models/presets";
/// The generated Rust table of presets.
const PRESETS_RS: &str = "crates/mf-models/src/presets.rs";
/// The file holding the generated preset table between [`README_BEGIN`] and [`README_END`].
const README: &str = "README.md";
/// Opens the generated preset table in the README.
const README_BEGIN: &str = "<!-- codegen:presets -->";
/// Closes the generated preset table in the README.
const README_END: &str = "<!-- /codegen:presets -->";
/// The CLUENER 2020 entity types, the source of the CLUENER preset's labels.
const CLUENER_LABELS: &str = "tools/labels/cluener.txt";
/// The preset whose `id2label` line is derived from [`CLUENER_LABELS`].
const CLUENER_PRESET: &str = "crates/mf-models/presets/bert/tokcls_bert_base_chinese_cluener.toml";
/// The committed reference fixtures.
const FIXTURES_DIR: &str = "tests/fixtures";
/// Relative tolerance for regenerated floats (see the module doc for the measured spread).
const RTOL: f64 = 1e-4;
/// Absolute tolerance for regenerated floats, for values near zero and differences of logits.
const ATOL: f64 = 1e-4;

/// One fixture generator and how to point it at another output directory.
struct Script {
    file: &'static str,
    /// `--out` and the path under the fixtures directory, or `None` for `--out-root`.
    out: Option<&'static str>,
}

/// Every generator in `tools/reference/`, in an order where each finds what it reads.
const SCRIPTS: &[Script] = &[
    Script {
        file: "make_gpt2_fixtures.py",
        out: Some("gpt2_tiny"),
    },
    Script {
        file: "make_tokenizer_fixtures.py",
        out: Some("tokenizer_gpt2.json"),
    },
    Script {
        file: "make_llama_fixtures.py",
        out: None,
    },
    Script {
        file: "make_bloom_fixtures.py",
        out: None,
    },
    Script {
        file: "make_glm_fixtures.py",
        out: None,
    },
    Script {
        file: "make_pangualpha_fixtures.py",
        out: None,
    },
    Script {
        file: "make_bert_fixtures.py",
        out: None,
    },
];

/// The fixture the BERT QA part (transformers 4.x from `.venv-tf4`) completes.
const QA_FIXTURE: &str = "bert_tiny_qa/expected.json";

/// A derived file's expected content.
#[derive(Debug)]
struct Derived {
    /// Path relative to the repository root.
    path: String,
    /// What it is derived from, for messages.
    source: String,
    text: String,
}

/// One preset file as the tables need it.
#[derive(Debug, Clone, PartialEq)]
struct PresetInfo {
    /// The directory under `presets/` (`gpt2`, `bert`, `lora`, ...).
    family: String,
    name: String,
    /// `None` for LoRA presets, which name a `base_model` instead.
    model_type: Option<String>,
    task: Option<String>,
    description: String,
    hub_repo: Option<String>,
    base_model: Option<String>,
}

/// `cargo xtask codegen [--check] [--fixtures]`.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let check = args.iter().any(|a| a == "--check");
    let fixtures = args.iter().any(|a| a == "--fixtures");
    if let Some(bad) = args
        .iter()
        .find(|a| !matches!(a.as_str(), "--check" | "--fixtures"))
    {
        bail!("codegen: unknown argument {bad}; usage: cargo xtask codegen [--check] [--fixtures]");
    }
    let derived = derive_all(root)?;
    if check {
        check_derived(root, &derived)?;
        eprintln!("codegen: the preset tables and label lists are up to date");
        return match reference_venv(root) {
            Ok(()) => check_fixtures(root),
            Err(why) if fixtures => bail!("cannot check the reference fixtures: {why}"),
            Err(why) => {
                eprintln!("codegen: reference fixtures NOT checked: {why}");
                Ok(())
            }
        };
    }
    for d in &derived {
        let path = root.join(&d.path);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(d.text.as_str()) {
            eprintln!("codegen: {} is up to date", d.path);
        } else {
            std::fs::write(&path, &d.text).with_context(|| format!("writing {}", d.path))?;
            eprintln!("codegen: wrote {} (from {})", d.path, d.source);
        }
    }
    if fixtures {
        regenerate_fixtures(root)?;
    }
    Ok(())
}

/// What `cargo xtask test` checks after set-up, when the reference venv exists: every derived
/// file, the fixtures included.
pub fn check_all(root: &Path) -> Result<()> {
    main(root, &["--check".into()])
}

/// Fails naming every stale derived file and the fix.
fn check_derived(root: &Path, derived: &[Derived]) -> Result<()> {
    let stale = stale_files(root, derived);
    if !stale.is_empty() {
        bail!(
            "stale derived files:\n{}\nrun `cargo xtask codegen` and commit the result",
            stale.join("\n")
        );
    }
    Ok(())
}

/// One line per derived file whose committed content differs from what codegen makes.
fn stale_files(root: &Path, derived: &[Derived]) -> Vec<String> {
    derived
        .iter()
        .filter_map(|d| match std::fs::read_to_string(root.join(&d.path)) {
            Ok(text) if text == d.text => None,
            Ok(_) => Some(format!("  {} (derived from {})", d.path, d.source)),
            Err(e) => Some(format!("  {} missing or unreadable: {e}", d.path)),
        })
        .collect()
}

/// Every cheap derived file with its expected content.
fn derive_all(root: &Path) -> Result<Vec<Derived>> {
    let presets = read_presets(&root.join(PRESETS_DIR))?;
    let readme = std::fs::read_to_string(root.join(README)).context("reading README.md")?;
    let labels_text = std::fs::read_to_string(root.join(CLUENER_LABELS))
        .with_context(|| format!("reading {CLUENER_LABELS}"))?;
    let cluener = std::fs::read_to_string(root.join(CLUENER_PRESET))
        .with_context(|| format!("reading {CLUENER_PRESET}"))?;
    let id2label = id2label_line(&bio_labels(&parse_labels(&labels_text, CLUENER_LABELS)?));
    Ok(vec![
        Derived {
            path: PRESETS_RS.into(),
            source: format!("{PRESETS_DIR}/"),
            text: render_presets_rs(&presets)?,
        },
        Derived {
            path: README.into(),
            source: format!("{PRESETS_DIR}/"),
            text: splice(
                &readme,
                README_BEGIN,
                README_END,
                &render_readme_table(&presets),
            )
            .context("README.md")?,
        },
        Derived {
            path: CLUENER_PRESET.into(),
            source: CLUENER_LABELS.into(),
            text: replace_line(&cluener, "id2label = ", &id2label).context(CLUENER_PRESET)?,
        },
    ])
}

/// Preset names in a natural order: digit runs compare by value, a size in billions (`7.1b`)
/// above one in millions (`560m`), so `llama2_7b` precedes `llama2_13b`, `bloom_560m` precedes
/// `bloom_7.1b`, and a name precedes its own suffixed variants (`gpt2` before `gpt2_xl`).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    /// A run of text, or a number (sizes in millions of parameters when suffixed `b`/`m`).
    enum Chunk {
        Text(String),
        Num(f64),
    }
    fn chunks(s: &str) -> Vec<Chunk> {
        let cs: Vec<char> = s.chars().collect();
        let digit = |i: usize| cs.get(i).is_some_and(char::is_ascii_digit);
        let (mut out, mut i) = (Vec::new(), 0);
        while i < cs.len() {
            let start = i;
            if digit(i) {
                while digit(i) {
                    i += 1;
                }
                if cs.get(i) == Some(&'.') && digit(i + 1) {
                    i += 1;
                    while digit(i) {
                        i += 1;
                    }
                }
                let text: String = cs[start..i].iter().collect();
                // Only ASCII digits with at most one inner '.': always a valid float.
                let mut v: f64 = text.parse().unwrap_or(f64::MAX);
                if cs.get(i) == Some(&'b') {
                    v *= 1e3;
                }
                out.push(Chunk::Num(v));
            } else {
                while i < cs.len() && !digit(i) {
                    i += 1;
                }
                out.push(Chunk::Text(cs[start..i].iter().collect()));
            }
        }
        out
    }
    let (ka, kb) = (chunks(a), chunks(b));
    for (x, y) in ka.iter().zip(&kb) {
        let o = match (x, y) {
            (Chunk::Num(p), Chunk::Num(q)) => p.total_cmp(q),
            (Chunk::Text(p), Chunk::Text(q)) => p.cmp(q),
            (Chunk::Text(_), Chunk::Num(_)) => Ordering::Less,
            (Chunk::Num(_), Chunk::Text(_)) => Ordering::Greater,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ka.len().cmp(&kb.len()).then_with(|| a.cmp(b))
}

/// Reads every `<family>/<name>.toml` under `dir`: families by directory name, presets in
/// [`natural_cmp`] order.
fn read_presets(dir: &Path) -> Result<Vec<PresetInfo>> {
    let mut families: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    families.retain(|p| p.is_dir());
    families.sort();
    let mut out = Vec::new();
    for fam_dir in families {
        let family = file_name(&fam_dir)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&fam_dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
        let mut presets = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .context("preset file name is not UTF-8")?
                .to_string();
            presets.push(parse_preset(&family, &name, &text)?);
        }
        presets.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        out.extend(presets);
    }
    if out.is_empty() {
        bail!("no preset files under {}", dir.display());
    }
    Ok(out)
}

fn file_name(p: &Path) -> Result<String> {
    Ok(p.file_name()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{} has no UTF-8 name", p.display()))?
        .to_string())
}

/// The fields of one preset file the tables show.
fn parse_preset(family: &str, name: &str, text: &str) -> Result<PresetInfo> {
    let origin = format!("{PRESETS_DIR}/{family}/{name}.toml");
    let table: toml::Table = toml::from_str(text).with_context(|| format!("parsing {origin}"))?;
    let field = |k: &str| -> Result<Option<String>> {
        match table.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!(
                "{origin}: `{k}` must be a string, found {}",
                other.type_str()
            ),
        }
    };
    let info = PresetInfo {
        family: family.into(),
        name: name.into(),
        model_type: field("model_type")?,
        task: field("task")?,
        description: field("description")?
            .with_context(|| format!("{origin} has no `description`"))?,
        hub_repo: field("hub_repo")?,
        base_model: field("base_model")?,
    };
    if info.model_type.is_none() && info.base_model.is_none() {
        bail!("{origin} has neither `model_type` nor `base_model`");
    }
    Ok(info)
}

/// The Rust name of a family's table (`gpt2` -> `GPT2`).
fn const_name(family: &str) -> Result<String> {
    if family.is_empty()
        || family.starts_with(|c: char| c.is_ascii_digit())
        || !family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("preset directory {family:?} cannot name a Rust constant");
    }
    Ok(family.to_ascii_uppercase())
}

/// `crates/mf-models/src/presets.rs`: one `(name, include_str!(..))` table per family.
fn render_presets_rs(presets: &[PresetInfo]) -> Result<String> {
    let mut s = String::from(
        "// @generated by `cargo xtask codegen` from crates/mf-models/presets/: do not edit\n\
         //! Every preset file under `crates/mf-models/presets/<family>/`, compiled in: one\n\
         //! (name, TOML text) table per family directory.\n",
    );
    let mut families: Vec<&str> = presets.iter().map(|p| p.family.as_str()).collect();
    families.dedup();
    for family in families {
        s.push_str(&format!(
            "\n/// The presets in `presets/{family}/`.\npub(crate) const {}: &[(&str, &str)] = &[\n",
            const_name(family)?
        ));
        for p in presets.iter().filter(|p| p.family == family) {
            s.push_str(&format!(
                "    (\"{0}\", include_str!(\"../presets/{family}/{0}.toml\")),\n",
                p.name
            ));
        }
        s.push_str("];\n");
    }
    Ok(s)
}

/// Markdown table cells may not hold a bare `|`.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The README's preset table: name, family, task, description, hub repository.
fn render_readme_table(presets: &[PresetInfo]) -> String {
    let mut s = String::from(
        "| preset | family | task | description | hub repository |\n|---|---|---|---|---|\n",
    );
    for p in presets {
        let base = p
            .base_model
            .as_ref()
            .and_then(|b| presets.iter().find(|q| &q.name == b));
        let family = match (&p.model_type, &p.base_model) {
            (Some(mt), _) => mt.clone(),
            (None, Some(b)) => format!("LoRA on `{b}`"),
            (None, None) => String::new(),
        };
        // A causal LM's preset leaves `task` out; a LoRA preset serves its base's task.
        let task = p
            .task
            .clone()
            .or_else(|| base.and_then(|b| b.task.clone()))
            .unwrap_or_else(|| "text_generation".into());
        let hub = match &p.hub_repo {
            Some(r) => format!("[`{r}`](https://huggingface.co/{r})"),
            None if p.base_model.is_some() => "adapters only".into(),
            None => "none".into(),
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            p.name,
            cell(&family),
            task,
            cell(&p.description),
            hub
        ));
    }
    s
}

/// Replaces what lies between the `begin` and `end` marker lines of `text` with `body`.
fn splice(text: &str, begin: &str, end: &str, body: &str) -> Result<String> {
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("missing the {begin} ... {end} markers");
    };
    if text.matches(begin).count() != 1 || text.matches(end).count() != 1 || e < b {
        bail!("needs exactly one {begin} followed by one {end}");
    }
    let head = &text[..b + begin.len()];
    Ok(format!("{head}\n{body}{}", &text[e..]))
}

/// Label names from a list file: one per line, `#` comments and blank lines skipped.
fn parse_labels(text: &str, origin: &str) -> Result<Vec<String>> {
    let mut labels: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("{origin}: label {line:?} has characters outside [A-Za-z0-9_-]");
        }
        if labels.iter().any(|l| l == line) {
            bail!("{origin}: label {line:?} is listed twice");
        }
        labels.push(line.to_string());
    }
    if labels.is_empty() {
        bail!("{origin} lists no labels");
    }
    Ok(labels)
}

/// BIO tags for entity types: `O`, then `B-x`, `I-x` for each type in order.
fn bio_labels(types: &[String]) -> Vec<String> {
    std::iter::once("O".to_string())
        .chain(
            types
                .iter()
                .flat_map(|t| [format!("B-{t}"), format!("I-{t}")]),
        )
        .collect()
}

/// The preset's `id2label = { "0" = "O", ... }` line.
fn id2label_line(labels: &[String]) -> String {
    let entries: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| format!("\"{i}\" = \"{l}\""))
        .collect();
    format!("id2label = {{ {} }}", entries.join(", "))
}

/// Replaces the one line of `text` starting with `prefix` by `line`.
fn replace_line(text: &str, prefix: &str, line: &str) -> Result<String> {
    let hits = text.lines().filter(|l| l.starts_with(prefix)).count();
    if hits != 1 {
        bail!("expected one line starting with {prefix:?}, found {hits}");
    }
    let mut out = String::with_capacity(text.len());
    for l in text.split_inclusive('\n') {
        if l.starts_with(prefix) {
            out.push_str(line);
            if l.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(l);
        }
    }
    Ok(out)
}

fn venv_python(root: &Path) -> PathBuf {
    root.join(".venv/bin/python")
}

/// Whether the reference venv can run the generators, or why not.
fn reference_venv(root: &Path) -> std::result::Result<(), String> {
    let py = venv_python(root);
    if !py.exists() {
        return Err(format!(
            "{} does not exist (cargo xtask setup --reference makes it)",
            py.display()
        ));
    }
    let ok = Command::new(&py)
        .args(["-c", "import transformers, safetensors, tiktoken"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} cannot import transformers, safetensors and tiktoken (cargo xtask setup --reference installs them)",
            py.display()
        ))
    }
}

/// Whether `.venv-tf4` holds the transformers 4.x the BERT QA part needs.
fn has_tf4(root: &Path) -> bool {
    root.join(".venv-tf4/transformers").is_dir()
}

/// Runs every generator, writing into `out_root` (`None`: the committed `tests/fixtures`).
fn run_scripts(root: &Path, out_root: Option<&Path>, skip_qa: bool) -> Result<()> {
    let start = Instant::now();
    for s in SCRIPTS {
        let mut cmd = Command::new(venv_python(root));
        cmd.current_dir(root)
            .arg(root.join("tools/reference").join(s.file));
        if let Some(out) = out_root {
            match s.out {
                Some(rel) => cmd.arg("--out").arg(out.join(rel)),
                None => cmd.arg("--out-root").arg(out),
            };
        }
        if s.file == "make_bert_fixtures.py" && skip_qa {
            cmd.arg("--skip-qa");
        }
        let t = Instant::now();
        let output = cmd
            .output()
            .with_context(|| format!("starting {}", s.file))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                s.file,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        eprintln!("codegen: {} ({:.1} s)", s.file, t.elapsed().as_secs_f64());
    }
    eprintln!(
        "codegen: fixtures regenerated in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `codegen --fixtures`: rewrites `tests/fixtures/` in place.
fn regenerate_fixtures(root: &Path) -> Result<()> {
    if let Err(why) = reference_venv(root) {
        bail!("cannot regenerate the fixtures: {why}");
    }
    let skip_qa = !has_tf4(root);
    if skip_qa {
        eprintln!("codegen: .venv-tf4 missing, so the BERT QA pipeline cases in {FIXTURES_DIR}/{QA_FIXTURE} are left as make_bert_fixtures.py --skip-qa writes them (see tools/reference/README.md)");
    }
    run_scripts(root, None, skip_qa)
}

/// Regenerates the fixtures into a temporary directory and compares them with the committed.
fn check_fixtures(root: &Path) -> Result<()> {
    let skip_qa = !has_tf4(root);
    let tmp = std::env::temp_dir().join(format!("mf-codegen-fixtures-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let result = run_scripts(root, Some(&tmp), skip_qa)
        .and_then(|()| compare_trees(&tmp, &root.join(FIXTURES_DIR), skip_qa));
    let _ = std::fs::remove_dir_all(&tmp);
    let problems = result?;
    if skip_qa {
        eprintln!("codegen: {FIXTURES_DIR}/{QA_FIXTURE} NOT checked: .venv-tf4 (transformers 4.x) is missing; see tools/reference/README.md");
    }
    if !problems.is_empty() {
        bail!(
            "stale reference fixtures (regenerated by tools/reference/ into a temporary directory):\n{}\nrun `cargo xtask codegen --fixtures` and commit the result",
            problems.join("\n")
        );
    }
    eprintln!("codegen: reference fixtures match tools/reference/");
    Ok(())
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    Ok(out)
}

/// Compares regenerated fixtures with the committed ones: one line per problem. A committed
/// file inside a regenerated directory that no script wrote any more is a problem too.
fn compare_trees(fresh: &Path, committed: &Path, skip_qa: bool) -> Result<Vec<String>> {
    let made = files_under(fresh)?;
    let mut problems = Vec::new();
    for rel in &made {
        let shown = format!("{FIXTURES_DIR}/{}", rel.display());
        if skip_qa && rel == Path::new(QA_FIXTURE) {
            continue;
        }
        let Ok(old) = std::fs::read(committed.join(rel)) else {
            problems.push(format!(
                "  {shown}: made by tools/reference/ but not committed"
            ));
            continue;
        };
        let new = std::fs::read(fresh.join(rel))?;
        if let Err(why) = compare_file(rel, &new, &old) {
            problems.push(format!("  {shown}: {why}"));
        }
    }
    let dirs: BTreeSet<&Path> = made
        .iter()
        .filter_map(|r| r.components().next().map(|c| Path::new(c.as_os_str())))
        .filter(|top| fresh.join(top).is_dir())
        .collect();
    for top in dirs {
        if !committed.join(top).is_dir() {
            continue;
        }
        for rel in files_under(&committed.join(top))? {
            let rel = top.join(rel);
            if !made.contains(&rel) {
                problems.push(format!(
                    "  {FIXTURES_DIR}/{}: committed but no script makes it any more",
                    rel.display()
                ));
            }
        }
    }
    Ok(problems)
}

/// Compares one regenerated file with the committed one by its kind.
fn compare_file(rel: &Path, new: &[u8], old: &[u8]) -> std::result::Result<(), String> {
    if new == old {
        return Ok(());
    }
    match rel.extension().and_then(|x| x.to_str()) {
        Some("json") => {
            let parse = |b: &[u8], which: &str| {
                serde_json::from_slice::<serde_json::Value>(b)
                    .map_err(|e| format!("{which} copy is not JSON: {e}"))
            };
            compare_json(&parse(new, "regenerated")?, &parse(old, "committed")?, "$")
        }
        Some("safetensors") => compare_safetensors(new, old),
        _ => Err("differs (compared byte for byte)".into()),
    }
}

/// Whether two floats agree within [`ATOL`] + [`RTOL`] relative.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= ATOL + RTOL * a.abs().max(b.abs())
}

/// Structural JSON equality with floats within tolerance; the error names the JSON path.
fn compare_json(
    new: &serde_json::Value,
    old: &serde_json::Value,
    path: &str,
) -> std::result::Result<(), String> {
    use serde_json::Value;
    match (new, old) {
        (Value::Number(a), Value::Number(b)) => {
            let exact_ints = (a.is_i64() || a.is_u64()) && (b.is_i64() || b.is_u64());
            let same = if exact_ints {
                a == b
            } else {
                match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => close(x, y),
                    _ => false,
                }
            };
            if same {
                Ok(())
            } else {
                Err(format!("{path}: {a} (regenerated) vs {b} (committed)"))
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "{path}: {} items (regenerated) vs {} (committed)",
                    a.len(),
                    b.len()
                ));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .try_for_each(|(i, (x, y))| compare_json(x, y, &format!("{path}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys_a: BTreeSet<&String> = a.keys().collect();
            let keys_b: BTreeSet<&String> = b.keys().collect();
            if keys_a != keys_b {
                let only_new: Vec<_> = keys_a.difference(&keys_b).collect();
                let only_old: Vec<_> = keys_b.difference(&keys_a).collect();
                return Err(format!(
                    "{path}: keys only regenerated {only_new:?}, only committed {only_old:?}"
                ));
            }
            a.iter()
                .try_for_each(|(k, x)| compare_json(x, &b[k], &format!("{path}.{k}")))
        }
        _ if new == old => Ok(()),
        _ => Err(format!("{path}: {new} (regenerated) vs {old} (committed)")),
    }
}

/// Little-endian floats of a tensor's bytes, for the dtypes compared with a tolerance.
fn floats(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f64>> {
    match dtype {
        safetensors::Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        safetensors::Dtype::F64 => Some(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        // Integers must be exact. The fixtures hold only F32 and I64; a 16-bit float fixture
        // would need a tolerance of its own (its last bit is coarser than RTOL).
        _ => None,
    }
}

/// A safetensors file's metadata and tensors.
fn open_safetensors<'a>(
    b: &'a [u8],
    which: &str,
) -> std::result::Result<(BTreeMap<String, String>, safetensors::SafeTensors<'a>), String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(b)
        .map_err(|e| format!("{which} copy is not safetensors: {e}"))?;
    let meta: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let st = safetensors::SafeTensors::deserialize(b)
        .map_err(|e| format!("{which} copy is not safetensors: {e}"))?;
    Ok((meta, st))
}

/// Same metadata, tensor names, dtypes and shapes; values within tolerance (F32, F64) or
/// byte-equal (every other dtype). The error names the tensor.
fn compare_safetensors(new: &[u8], old: &[u8]) -> std::result::Result<(), String> {
    let (meta_new, a) = open_safetensors(new, "regenerated")?;
    let (meta_old, b) = open_safetensors(old, "committed")?;
    if meta_new != meta_old {
        return Err(format!(
            "metadata {meta_new:?} (regenerated) vs {meta_old:?} (committed)"
        ));
    }
    let names_a: BTreeSet<&str> = a.names().into_iter().collect();
    let names_b: BTreeSet<&str> = b.names().into_iter().collect();
    if names_a != names_b {
        let only_new: Vec<_> = names_a.difference(&names_b).collect();
        let only_old: Vec<_> = names_b.difference(&names_a).collect();
        return Err(format!(
            "tensors only regenerated {only_new:?}, only committed {only_old:?}"
        ));
    }
    for name in names_a {
        let (x, y) = (
            a.tensor(name).map_err(|e| e.to_string())?,
            b.tensor(name).map_err(|e| e.to_string())?,
        );
        if x.dtype() != y.dtype() || x.shape() != y.shape() {
            return Err(format!(
                "tensor `{name}`: {:?} {:?} (regenerated) vs {:?} {:?} (committed)",
                x.dtype(),
                x.shape(),
                y.dtype(),
                y.shape()
            ));
        }
        match (floats(x.dtype(), x.data()), floats(y.dtype(), y.data())) {
            (Some(u), Some(v)) => {
                if let Some((i, (p, q))) = u
                    .iter()
                    .zip(&v)
                    .enumerate()
                    .find(|(_, (p, q))| !close(**p, **q))
                {
                    return Err(format!(
                        "tensor `{name}`: element {i} is {p} (regenerated) vs {q} (committed), beyond {ATOL} + {RTOL} relative"
                    ));
                }
            }
            _ if x.data() == y.data() => {}
            _ => return Err(format!("tensor `{name}` ({:?}): values differ", x.dtype())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheap check: every derived file except the fixtures.
    fn check(root: &Path) -> Result<()> {
        check_derived(root, &derive_all(root)?)
    }

    fn preset(family: &str, name: &str, text: &str) -> PresetInfo {
        parse_preset(family, name, text).unwrap()
    }

    fn sample() -> Vec<PresetInfo> {
        vec![
            preset(
                "bert",
                "qa_bert",
                "model_type = \"bert\"\ndescription = \"QA | SQuAD\"\ntask = \"question_answering\"\n[config]\n",
            ),
            preset(
                "gpt2",
                "gpt2",
                "model_type = \"gpt2\"\nhub_repo = \"openai-community/gpt2\"\ndescription = \"GPT-2 small\"\n[config]\n",
            ),
            preset(
                "gpt2",
                "gpt2_13b",
                "model_type = \"gpt2\"\ndescription = \"GPT-2 13B\"\n[config]\n",
            ),
            preset(
                "lora",
                "gpt2_lora",
                "base_model = \"gpt2\"\ndescription = \"GPT-2 + LoRA\"\n[lora]\nr = 8\n",
            ),
        ]
    }

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut names = vec![
            "bloom_7.1b",
            "pangualpha_13b",
            "bloom_560m",
            "pangualpha_2_6b",
            "llama_65b",
            "llama2_70b",
            "gpt2_xl",
            "llama2_7b",
            "gpt2",
            "llama_7b",
            "llama2_13b",
            "gpt2_13b",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "bloom_560m",
                "bloom_7.1b",
                "gpt2",
                "gpt2_13b",
                "gpt2_xl",
                "llama2_7b",
                "llama2_13b",
                "llama2_70b",
                "llama_7b",
                "llama_65b",
                "pangualpha_2_6b",
                "pangualpha_13b"
            ]
        );
    }

    #[test]
    fn rust_table_has_one_const_per_family_with_include_paths() {
        let rs = render_presets_rs(&sample()).unwrap();
        assert!(rs.starts_with(
            "// @generated by `cargo xtask codegen` from crates/mf-models/presets/: do not edit\n"
        ));
        assert!(rs.contains("pub(crate) const GPT2: &[(&str, &str)] = &[\n    (\"gpt2\", include_str!(\"../presets/gpt2/gpt2.toml\")),\n    (\"gpt2_13b\", include_str!(\"../presets/gpt2/gpt2_13b.toml\")),\n];\n"));
        assert!(rs.contains(
            "pub(crate) const LORA: &[(&str, &str)] = &[\n    (\"gpt2_lora\", include_str!(\"../presets/lora/gpt2_lora.toml\")),\n];"
        ));
        assert_eq!(rs.matches("pub(crate) const").count(), 3);
        assert!(const_name("bad-name").is_err());
    }

    #[test]
    fn readme_table_rows_carry_every_column() {
        let t = render_readme_table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 4);
        assert_eq!(
            lines[0],
            "| preset | family | task | description | hub repository |"
        );
        assert_eq!(
            lines[2],
            "| `qa_bert` | bert | question_answering | QA \\| SQuAD | none |"
        );
        assert_eq!(lines[3], "| `gpt2` | gpt2 | text_generation | GPT-2 small | [`openai-community/gpt2`](https://huggingface.co/openai-community/gpt2) |");
        assert_eq!(
            lines[5],
            "| `gpt2_lora` | LoRA on `gpt2` | text_generation | GPT-2 + LoRA | adapters only |"
        );
    }

    #[test]
    fn splice_replaces_only_between_markers() {
        let text = "a\n<!-- codegen:presets -->\nold\n<!-- /codegen:presets -->\nb\n";
        let out = splice(text, README_BEGIN, README_END, "new\n").unwrap();
        assert_eq!(
            out,
            "a\n<!-- codegen:presets -->\nnew\n<!-- /codegen:presets -->\nb\n"
        );
        assert!(splice("no markers", README_BEGIN, README_END, "x").is_err());
    }

    #[test]
    fn cluener_labels_derive_the_21_bio_tags() {
        let root = crate::root();
        let text = std::fs::read_to_string(root.join(CLUENER_LABELS)).unwrap();
        let types = parse_labels(&text, CLUENER_LABELS).unwrap();
        assert_eq!(
            types,
            [
                "address",
                "book",
                "company",
                "game",
                "government",
                "movie",
                "name",
                "organization",
                "position",
                "scene"
            ]
        );
        let bio = bio_labels(&types);
        assert_eq!(bio.len(), 21);
        assert_eq!(&bio[..3], ["O", "B-address", "I-address"]);
        assert_eq!(bio[20], "I-scene");
        let line = id2label_line(&bio);
        assert!(line.starts_with("id2label = { \"0\" = \"O\", \"1\" = \"B-address\", "));
        assert!(line.ends_with("\"19\" = \"B-scene\", \"20\" = \"I-scene\" }"));
        let preset = "x = 1\nid2label = { \"0\" = \"O\" }\ny = 2\n";
        assert_eq!(
            replace_line(preset, "id2label = ", &line).unwrap(),
            format!("x = 1\n{line}\ny = 2\n")
        );
        assert!(replace_line("x = 1\n", "id2label = ", &line).is_err());
        assert!(parse_labels("a\nb\na\n", "t").is_err());
    }

    #[test]
    fn json_floats_compare_within_tolerance_and_name_the_path() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"ids": [1, 2], "logits": [0.5, -3.25]}"#).unwrap();
        let near: serde_json::Value =
            serde_json::from_str(r#"{"ids": [1, 2], "logits": [0.50001, -3.2502]}"#).unwrap();
        let far: serde_json::Value =
            serde_json::from_str(r#"{"ids": [1, 2], "logits": [0.5, -3.26]}"#).unwrap();
        let int: serde_json::Value =
            serde_json::from_str(r#"{"ids": [1, 3], "logits": [0.5, -3.25]}"#).unwrap();
        assert_eq!(compare_json(&near, &a, "$"), Ok(()));
        let err = compare_json(&far, &a, "$").unwrap_err();
        assert!(err.starts_with("$.logits[1]: -3.26"), "{err}");
        let err = compare_json(&int, &a, "$").unwrap_err();
        assert!(err.starts_with("$.ids[1]: 3"), "{err}");
        let err =
            compare_file(Path::new("x/expected.json"), b"{\"a\": 1}", b"{\"b\": 1}").unwrap_err();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
        assert!(compare_file(Path::new("vocab.txt"), b"a\n", b"b\n").is_err());
    }

    fn tensors(values: &[f32], ids: &[i64]) -> Vec<u8> {
        use safetensors::tensor::TensorView;
        let f: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let i: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = [
            (
                "logits",
                TensorView::new(safetensors::Dtype::F32, vec![values.len()], &f).unwrap(),
            ),
            (
                "input_ids",
                TensorView::new(safetensors::Dtype::I64, vec![ids.len()], &i).unwrap(),
            ),
        ];
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn safetensors_compare_within_tolerance_and_name_the_tensor() {
        // Differences as large as those measured between CPUs: 1e-5 absolute, 2% of a tiny value.
        let near = tensors(&[1.000_01, -2.000_1, 3.0e-6], &[5, 7]);
        let base = tensors(&[1.0, -2.0, 3.06e-6], &[5, 7]);
        assert_ne!(base, near);
        assert_eq!(compare_safetensors(&near, &base), Ok(()));
        let far = tensors(&[1.0, -2.01, 3.06e-6], &[5, 7]);
        let err = compare_safetensors(&far, &base).unwrap_err();
        assert!(
            err.starts_with("tensor `logits`: element 1 is -2.0099"),
            "{err}"
        );
        let ids = tensors(&[1.0, -2.0, 3.06e-6], &[5, 8]);
        let err = compare_safetensors(&ids, &base).unwrap_err();
        assert!(err.contains("`input_ids`"), "{err}");
        let shape = tensors(&[1.0, -2.0], &[5, 7]);
        let err = compare_safetensors(&shape, &base).unwrap_err();
        assert!(err.contains("`logits`") && err.contains("[2]"), "{err}");
    }

    /// A minimal repository tree with every input codegen reads.
    fn mini_tree(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("mf-codegen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "crates/mf-models/presets/gpt2/gpt2.toml",
            "model_type = \"gpt2\"\ndescription = \"GPT-2\"\n[config]\n",
        );
        write(
            CLUENER_PRESET,
            "model_type = \"bert\"\ndescription = \"CLUENER\"\ntask = \"token_classification\"\n[config]\nid2label = { \"0\" = \"O\" }\n",
        );
        write(CLUENER_LABELS, "# source\naddress\nbook\n");
        write(
            README,
            "# x\n<!-- codegen:presets -->\n<!-- /codegen:presets -->\n",
        );
        std::fs::create_dir_all(root.join("crates/mf-models/src")).unwrap();
        root
    }

    #[test]
    fn stale_files_are_detected_and_named() {
        let root = mini_tree("stale");
        let derived = derive_all(&root).unwrap();
        assert_eq!(stale_files(&root, &derived).len(), 3, "nothing written yet");
        main(&root, &[]).unwrap();
        assert!(check(&root).is_ok());
        let cluener = std::fs::read_to_string(root.join(CLUENER_PRESET)).unwrap();
        assert!(cluener.contains("\"4\" = \"I-book\" }"), "{cluener}");
        let readme = std::fs::read_to_string(root.join(README)).unwrap();
        assert!(readme.contains("| `gpt2` | gpt2 | text_generation | GPT-2 | none |"));

        // A hand edit of a generated file.
        let rs = root.join(PRESETS_RS);
        let text = std::fs::read_to_string(&rs).unwrap();
        std::fs::write(&rs, text.replace("gpt2.toml", "gpt2_old.toml")).unwrap();
        let err = check(&root).unwrap_err().to_string();
        assert!(err.contains(PRESETS_RS), "{err}");
        assert!(err.contains("run `cargo xtask codegen`"), "{err}");
        assert!(!err.contains(README), "{err}");

        // A preset added without regenerating: the Rust table and the README both go stale.
        main(&root, &[]).unwrap();
        std::fs::write(
            root.join("crates/mf-models/presets/gpt2/gpt2_xl.toml"),
            "model_type = \"gpt2\"\ndescription = \"GPT-2 XL\"\n[config]\n",
        )
        .unwrap();
        let err = check(&root).unwrap_err().to_string();
        assert!(err.contains(PRESETS_RS) && err.contains(README), "{err}");
        assert!(main(&root, &["--check".into()]).is_err());
        main(&root, &[]).unwrap();
        assert!(check(&root).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn fixture_trees_compare_by_kind_and_report_leftovers() {
        let base = std::env::temp_dir().join(format!("mf-codegen-trees-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (fresh, committed) = (base.join("fresh"), base.join("committed"));
        for d in [&fresh, &committed] {
            std::fs::create_dir_all(d.join("tiny")).unwrap();
            std::fs::write(d.join("tiny/expected.json"), "{\"x\": 0.25}").unwrap();
        }
        std::fs::write(fresh.join("tiny/config.json"), "{\"n\": 2}").unwrap();
        std::fs::write(committed.join("tiny/config.json"), "{\"n\": 2}\n").unwrap();
        std::fs::write(committed.join("tiny/old.bin"), "x").unwrap();
        let problems = compare_trees(&fresh, &committed, false).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("tiny/old.bin"), "{problems:?}");
        std::fs::write(fresh.join("tiny/expected.json"), "{\"x\": 0.5}").unwrap();
        let problems = compare_trees(&fresh, &committed, false).unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("tiny/expected.json: $.x")),
            "{problems:?}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
