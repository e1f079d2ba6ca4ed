//! The model layer's hot pieces. `cargo bench -p mf-models`.
//! - The LM-head loss of a training step, forward + backward: the fused chunked cross-entropy
//!   (`layers::lm_loss`) against full logits + libtorch's cross-entropy + autograd.
//! - One decode step of attention over a KV cache (append one position, fused attention over
//!   the history): GPT-2 small's 12 heads of 64, batch 1 and 8.
//! - The linears of one decode step, far beyond the caches: the ~125M LLaMA of `cargo xtask
//!   bench generate --model llama` (`[out, in]`, 400 MB f32) and GPT-2 small's blocks (`[in,
//!   out]`, 340 MB), batch 1 and 8: the decode kernels in each instruction set the CPU has
//!   against libtorch's GEMM, in bytes of weight read per second, beside a 1 GiB `sum` (the
//!   read-bandwidth probe `mf bench-generate` divides by).
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mf_models::kernels;
use mf_models::layers::{lm_head_cross_entropy, sdpa, AttnMask, KvCache, WeightLayout};
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
        // `sdpa` takes the Rust decode kernel (`kernels::attention`) where the CPU has it;
        // the second line is libtorch's fused attention on the same cache.
        g.bench_function(format!("batch {batch}"), |bch| {
            bch.iter(|| {
                // Overwrite the same next slot each time so the history stays 160 + 1.
                let (k, v) = cache.append(0, &q, &q).expect("append");
                let _ = black_box(sdpa(&q, &k, &v, &AttnMask::None, 0.0));
            })
        });
        g.bench_function(format!("batch {batch}, libtorch"), |bch| {
            bch.iter(|| {
                let (k, v) = cache.append(0, &q, &q).expect("append");
                let _ = black_box(Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    None::<&Tensor>,
                    0.0,
                    false,
                    None,
                    false,
                ));
            })
        });
    }
    g.finish();
}

/// The weights of one decode step: `(name, layout, weights)`, ~400-500 MB of f32 each.
fn decode_weights() -> Vec<(&'static str, WeightLayout, Vec<Tensor>)> {
    let opts = (Kind::Float, Device::Cpu);
    let stack = |layer: &[(i64, i64)], head: Option<[i64; 2]>| -> Vec<Tensor> {
        (0..12)
            .flat_map(|_| layer.iter().map(|&(a, b)| [a, b]))
            .chain(head)
            .map(|dims| Tensor::randn(dims, opts))
            .collect()
    };
    // LLaMA ~125M: nn.Linear [out, in] (q, k, v, o, gate, up, down), untied head.
    let llama = [
        (768, 768),
        (256, 768),
        (256, 768),
        (768, 768),
        (2048, 768),
        (2048, 768),
        (768, 2048),
    ];
    // GPT-2 small: Conv1D [in, out] (c_attn, c_proj, c_fc, mlp c_proj); its tied head is
    // [out, in] and is left out so the group measures one layout.
    let gpt2 = [(768, 2304), (768, 768), (768, 3072), (3072, 768)];
    vec![
        (
            "LLaMA ~125M [out, in]",
            WeightLayout::OutIn,
            stack(&llama, Some([32000, 768])),
        ),
        (
            "GPT-2 small blocks [in, out]",
            WeightLayout::InOut,
            stack(&gpt2, None),
        ),
    ]
}

fn decode_linears(c: &mut Criterion) {
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    for (name, layout, weights) in decode_weights() {
        let bytes: u64 = weights.iter().map(|w| 4 * w.numel() as u64).sum();
        let inner = |w: &Tensor| match layout {
            WeightLayout::OutIn => w.size()[1],
            WeightLayout::InOut => w.size()[0],
        };
        for batch in [1, 8] {
            let xs: Vec<Tensor> = weights
                .iter()
                .map(|w| Tensor::randn([batch, inner(w)], opts))
                .collect();
            let mut g = c.benchmark_group(format!("decode linears, {name}, batch {batch}, f32"));
            g.sample_size(20);
            g.throughput(criterion::Throughput::Bytes(bytes));
            for simd in kernels::Simd::supported() {
                g.bench_function(format!("mf decode kernels, {}", simd.name()), |b| {
                    b.iter(|| {
                        for (x, w) in xs.iter().zip(&weights) {
                            let y = kernels::small_batch_linear_with(simd, x, w, None, layout);
                            let _ = black_box(y.expect("the kernels apply"));
                        }
                    })
                });
            }
            g.bench_function("libtorch", |b| {
                b.iter(|| {
                    for (x, w) in xs.iter().zip(&weights) {
                        let _ = black_box(match layout {
                            WeightLayout::OutIn => x.mm(&w.tr()),
                            WeightLayout::InOut => x.mm(w),
                        });
                    }
                })
            });
            g.finish();
        }
    }
    let big = Tensor::ones([1 << 28], opts);
    let mut g = c.benchmark_group("read bandwidth");
    g.sample_size(20);
    g.throughput(criterion::Throughput::Bytes(4 << 28));
    g.bench_function("1 GiB sum (the probe of mf bench-generate)", |b| {
        b.iter(|| black_box(big.sum(Kind::Float)))
    });
    g.finish();
}

criterion_group!(benches, lm_head_loss, kv_attention, decode_linears);
criterion_main!(benches);
