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

/// Model FLOPs utilisation of a training step rate: 6·N FLOPs per token (forward + backward).
pub fn mfu(parameters: usize, tokens_per_s: f64, peak_flops: f64) -> f64 {
    6.0 * parameters as f64 * tokens_per_s / peak_flops.max(1.0)
}
