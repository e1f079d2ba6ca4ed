//! The model layer's hot pieces. `cargo bench -p mf-models`.
//! - The LM-head loss of a training step, forward + backward: the fused chunked cross-entropy
//!   (`layers::lm_loss`) against full logits + libtorch's cross-entropy + autograd.
//! - One decode step of attention over a KV cache (append one position, fused attention over
//!   the history): GPT-2 small's 12 heads of 64, batch 1 and 8.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mf_models::layers::{lm_head_cross_entropy, sdpa, AttnMask, KvCache};
use tch::{Device, Kind, Tensor};

fn lm_head_loss(c: &mut Criterion) {
    tch::manual_seed(0);
    // 512 tokens of a 512-wide model over the GPT-2 vocabulary.
    let (rows, hidden, vocab) = (512, 512, 50257);
    let h = Tensor::randn([rows, hidden], (Kind::Float, Device::Cpu));
    let w =
        (Tensor::randn([vocab, hidden], (Kind::Float, Device::Cpu)) * 0.02).set_requires_grad(true);
    let t = Tensor::randint(vocab, [rows], (Kind::Int64, Device::Cpu));
    let full = |h: &Tensor| {
        h.matmul(&w.tr())
            .cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Mean, -100, 0.0)
    };
    // Both sides must be computing the same thing.
    let a = full(&h).double_value(&[]);
    let b = lm_head_cross_entropy(&h, &w, &t, rows as f64, None)
        .expect("chunked loss")
        .double_value(&[]);
    assert!((a - b).abs() < 1e-5 * a.abs(), "{a} vs {b}");

    let mut g = c.benchmark_group("lm_head_loss 512x512 -> 50257, forward + backward");
    g.sample_size(10);
    g.bench_function("full logits + autograd", |bch| {
        bch.iter(|| {
            let hl = h.detach().set_requires_grad(true);
            full(&hl).backward();
            let _ = black_box(hl.grad());
            let _ = w.grad().zero_();
        })
    });
    g.bench_function("fused chunked", |bch| {
        bch.iter(|| {
            let hl = h.detach().set_requires_grad(true);
            lm_head_cross_entropy(&hl, &w, &t, rows as f64, None)
                .expect("chunked loss")
                .backward();
            let _ = black_box(hl.grad());
            let _ = w.grad().zero_();
        })
    });
    g.finish();
}

fn kv_attention(c: &mut Criterion) {
    let _g = tch::no_grad_guard();
    let (heads, dim, history) = (12, 64, 160);
    let mut g = c.benchmark_group("decode attention, 12 heads x 64, 160 cached positions");
    for batch in [1i64, 8] {
        let opts = (Kind::Float, Device::Cpu);
        let mut cache = KvCache::new(1, 256);
        let k0 = Tensor::randn([batch, heads, history, dim], opts);
        let _ = cache.append(0, &k0, &k0).expect("prefill");
        cache.advance(history as usize);
        let q = Tensor::randn([batch, heads, 1, dim], opts);
        g.bench_function(format!("batch {batch}"), |bch| {
            bch.iter(|| {
                // Overwrite the same next slot each time so the history stays 160 + 1.
                let (k, v) = cache.append(0, &q, &q).expect("append");
                let _ = black_box(sdpa(&q, &k, &v, &AttnMask::None, 0.0));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lm_head_loss, kv_attention);
criterion_main!(benches);
