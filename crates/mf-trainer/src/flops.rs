//! The MFU denominator: the device's measured matmul rate, per dtype, measured once a process.
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

/// FLOP/s of the best of a few square matmuls on `device` in `kind` (measured on first use).
pub fn matmul_peak_flops(device: Device, kind: Kind) -> f64 {
    static CACHE: Mutex<Vec<((Device, Kind), f64)>> = Mutex::new(Vec::new());
    if let Ok(c) = CACHE.lock() {
        if let Some((_, v)) = c.iter().find(|(k, _)| *k == (device, kind)) {
            return *v;
        }
    }
    let v = measure(device, kind);
    if let Ok(mut c) = CACHE.lock() {
        c.push(((device, kind), v));
    }
    v
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn measure(device: Device, kind: Kind) -> f64 {
    let _g = tch::no_grad_guard();
    let time = |n: i64, reps: usize| {
        let a = Tensor::randn([n, n], (kind, device));
        let b = Tensor::randn([n, n], (kind, device));
        let _ = a.mm(&b);
        sync(device);
        (0..reps)
            .map(|_| {
                let t0 = std::time::Instant::now();
                let _ = a.mm(&b);
                sync(device);
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    // Grow the size until a product takes long enough to time, so slow kernels (f16 on CPU)
    // cost well under a second while fast ones reach the 2048² that shows their peak.
    let mut n = 256i64;
    while n < 2048 && time(n, 1) < 0.02 {
        n *= 2;
    }
    let best = time(n, 3);
    2.0 * (n as f64).powi(3) / best.max(1e-9)
}

/// The rate at which this device streams memory it only reads, in bytes/s: the best of five
/// sums of a 1 GiB f32 tensor (far beyond any cache) at the current thread count. Decode
/// reads every weight once per step, so this over the bytes a step reads bounds its speed.
pub fn read_bandwidth(device: Device) -> f64 {
    ReadProbe::new(device).rate(5)
}

/// The buffer of [`read_bandwidth`], kept so that the read rate can be taken again and again
/// next to the work it bounds (a VM's rate moves within seconds).
pub struct ReadProbe {
    t: Tensor,
    device: Device,
}

impl ReadProbe {
    /// Allocates and touches the 1 GiB buffer.
    pub fn new(device: Device) -> Self {
        let _g = tch::no_grad_guard();
        // On the CPU on huge pages, as the weights it stands for (`Params::to`): the limit is
        // what the machine streams at best, not a page-size handicap.
        let n = 1i64 << 28;
        let t = if device == Device::Cpu {
            let mut t = mf_core::memory::empty_aligned(&[n], Kind::Float)
                .unwrap_or_else(|_| Tensor::empty([n], (Kind::Float, device)));
            let _ = t.fill_(1.0);
            mf_core::memory::advise_huge_pages(&t);
            t
        } else {
            Tensor::ones([n], (Kind::Float, device))
        };
        let _ = t.sum(Kind::Float);
        sync(device);
        ReadProbe { t, device }
    }

    /// Bytes/s: the best of `passes` sums of the buffer.
    pub fn rate(&self, passes: usize) -> f64 {
        let _g = tch::no_grad_guard();
        let best = (0..passes.max(1))
            .map(|_| {
                let t0 = std::time::Instant::now();
                let s = self.t.sum(Kind::Float);
                sync(self.device);
                let _ = s.double_value(&[]);
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        (self.t.numel() * 4) as f64 / best.max(1e-9)
    }
}

/// Parameters that cost 6 FLOPs per token in a training step (a multiply-add forward, two
/// backward): all but lookup-only embedding tables. Position and token-type tables are always
/// lookups; the word table is one too unless an output layer multiplies by it
/// (`word_table_is_output`: a tied LM or masked-LM decoder).
pub fn matmul_parameters(params: &[(String, Tensor)], word_table_is_output: bool) -> usize {
    const LOOKUPS: [&str; 4] = [
        "wpe.weight",
        "position_embeddings.weight",
        "token_type_embeddings.weight",
        "top_query_embedding.weight",
    ];
    const WORD_TABLES: [&str; 3] = [
        "wte.weight",
        "embed_tokens.weight",
        "word_embeddings.weight",
    ];
    params
        .iter()
        .filter(|(n, _)| {
            !LOOKUPS.iter().any(|s| n.ends_with(s))
                && (word_table_is_output || !WORD_TABLES.iter().any(|s| n.ends_with(s)))
        })
        .map(|(_, t)| t.numel())
        .sum()
}

/// Model FLOPs utilisation of a training step rate: 6·N FLOPs per token (forward + backward),
/// N from [`matmul_parameters`].
pub fn mfu(parameters: usize, tokens_per_s: f64, peak_flops: f64) -> f64 {
    6.0 * parameters as f64 * tokens_per_s / peak_flops.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_tables_do_not_count_as_matmul_work() {
        let t = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let params = vec![
            (
                "bert.embeddings.word_embeddings.weight".to_string(),
                t(1000),
            ),
            (
                "bert.embeddings.position_embeddings.weight".to_string(),
                t(100),
            ),
            (
                "bert.embeddings.token_type_embeddings.weight".to_string(),
                t(10),
            ),
            (
                "bert.encoder.layer.0.attention.self.query.weight".to_string(),
                t(64),
            ),
            ("classifier.weight".to_string(), t(2)),
        ];
        // A classifier looks its word table up; a tied masked-LM decoder multiplies by it.
        assert_eq!(matmul_parameters(&params, false), 66);
        assert_eq!(matmul_parameters(&params, true), 1066);
    }
}
