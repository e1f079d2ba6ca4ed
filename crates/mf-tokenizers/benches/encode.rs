//! Tokenizer encode throughput: mindformers-rs' `Tokenizer` against the `tokenizers` crate used
//! directly on the same `tokenizer.json`, so the cost of the wrapper (special tokens, offsets,
//! word ids kept for pipelines) is what the two lines differ by. `cargo bench -p mf-tokenizers`.
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mf_tokenizers::{EncodeOptions, GPT2Tokenizer, Tokenizer};

/// English prose of known size: the workspace's own README and architecture notes, by line.
fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    ["README.md", "docs/ARCHITECTURE.md"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(root.join(f))
                .unwrap_or_else(|e| panic!("reading {f}: {e}"))
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let lines = corpus();
    let bytes: usize = lines.iter().map(String::len).sum();
    let ours = GPT2Tokenizer::bundled().expect("the bundled GPT-2 tokenizer");
    let dir = tempfile::tempdir().expect("a temp dir");
    ours.save_pretrained(dir.path())
        .expect("saving tokenizer.json");
    let raw = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json"))
        .expect("tokenizers reads what save_pretrained wrote");
    // The same ids on both sides, or the comparison means nothing.
    let ids = |t: &Tokenizer| -> Vec<Vec<u32>> {
        lines
            .iter()
            .map(|l| t.encode_ids(l).expect("encode"))
            .collect()
    };
    let raw_ids: Vec<Vec<u32>> = lines
        .iter()
        .map(|l| {
            raw.encode_fast(l.as_str(), false)
                .expect("encode")
                .get_ids()
                .to_vec()
        })
        .collect();
    assert_eq!(ids(&ours), raw_ids, "the two tokenizers disagree");

    let mut g = c.benchmark_group("gpt2_encode");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("tokenizers encode_fast (per line)", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(raw.encode_fast(l.as_str(), false).expect("encode"));
            }
        })
    });
    g.bench_function("mindformers encode_ids (per line)", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(ours.encode_ids(l).expect("encode"));
            }
        })
    });
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    g.bench_function("tokenizers encode_batch_fast (no offsets)", |b| {
        b.iter(|| black_box(raw.encode_batch_fast(refs.clone(), false).expect("encode")))
    });
    // What our `encode_batch` keeps per token (char offsets for pipelines), so the like-for-like
    // line of the two batch encoders.
    g.bench_function("tokenizers encode_batch_char_offsets", |b| {
        b.iter(|| {
            black_box(
                raw.encode_batch_char_offsets(refs.clone(), false)
                    .expect("encode"),
            )
        })
    });
    g.bench_function("mindformers encode_batch (offsets, word ids)", |b| {
        b.iter(|| {
            black_box(
                ours.encode_batch(&refs, &EncodeOptions::default())
                    .expect("encode"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
