//! The data path of a training step: reading packed windows from memory-mapped token shards
//! (`mf data prepare` output) and collating them into a `[batch, seq + 1]` tensor.
//! `cargo bench -p mf-data`.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mf_data::Column;
use mf_tokenizers::GPT2Tokenizer;

const SEQ: usize = 1024;
const BATCH: usize = 8;

fn data(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    // ~1.3M tokens of the workspace's own prose, repeated: 1280 windows over 4 shards.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("prose");
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, text.repeat(40)).expect("writing the corpus");
    let tok = GPT2Tokenizer::bundled().expect("the bundled GPT-2 tokenizer");
    let out = dir.path().join("shards");
    let index = mf_data::shards::prepare(&[input], &tok, "gpt2", SEQ, 320, &out, |_, _| {})
        .expect("preparing shards");
    let ds = mf_data::shards::open(&out).expect("opening shards");
    let n = ds.len();
    assert_eq!(n, index.total_tokens / (SEQ + 1));
    assert!(index.shards.len() > 1, "the bench must cross shard files");

    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Bytes((BATCH * (SEQ + 1) * 4) as u64));
    g.bench_function("read 8 windows of 1025 tokens from mmapped shards", |b| {
        let mut i = 0;
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(ds.record(i % n).expect("record"));
                i += 97;
            }
        })
    });
    let rows: Vec<Column> = (0..BATCH)
        .map(|i| ds.record(i).expect("record").remove(0))
        .collect();
    let refs: Vec<&Column> = rows.iter().collect();
    g.bench_function("collate 8 x 1025 ids into a tensor", |b| {
        b.iter(|| black_box(mf_data::batch::stack(&refs, "input_ids", 0).expect("stack")))
    });
    let batched = ds.batch(BATCH, true).expect("batching");
    g.bench_function("BatchedDataset::get (read + collate)", |b| {
        let mut i = 0;
        b.iter(|| {
            black_box(batched.get(0, i % batched.num_batches()).expect("batch"));
            i += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, data);
criterion_main!(benches);
