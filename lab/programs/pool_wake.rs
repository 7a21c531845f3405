//! How long a large matrix product takes right after another and after a pause of serial work
//! on the calling thread: the thread pool's wake-up cost that a step made of small operations
//! between its large products pays (`lab/kfac.md`, "The rows' product at batch 128").
//!
//! The product is the MLP's `[128, 784]·[784, 128]` (12.8 M multiply-adds, above flex's
//! threshold for a parallel product). Each round runs it once, spins for each pause in turn,
//! and times it again; prints the median and the 10th and 90th percentiles over the rounds.
//!
//! ```text
//! cargo run --release --features flex --example pool_wake
//! RAYON_NUM_THREADS=1 cargo run --release --features flex --example pool_wake
//! ```

use std::time::{Duration, Instant};

use burn::tensor::{Device, Distribution, Tensor};

/// Busy-waits for `us` microseconds on this thread.
fn spin(us: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// The product, finished (one element read back).
fn product(x: &Tensor<2>, w: &Tensor<2>) {
    let _ = x
        .clone()
        .matmul(w.clone())
        .slice([0..1, 0..1])
        .into_scalar::<f32>();
}

fn main() {
    #[cfg(feature = "flex")]
    let device = Device::flex();
    #[cfg(not(feature = "flex"))]
    #[allow(deprecated)]
    let device = Device::ndarray();
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<2>::random([128, 784], normal, &device);
    let w = Tensor::<2>::random([784, 128], normal, &device);
    let pauses = [0u64, 20, 50, 100, 200, 400, 1000];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); pauses.len()];
    for _ in 0..400 {
        for (i, &pause) in pauses.iter().enumerate() {
            product(&x, &w);
            spin(pause);
            let start = Instant::now();
            product(&x, &w);
            times[i].push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    for (pause, mut t) in pauses.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        let at = |q: usize| t[q * (t.len() - 1) / 100];
        println!(
            "pause {pause:5} µs: product median {:6.1} µs  p10 {:6.1}  p90 {:6.1}",
            at(50),
            at(10),
            at(90)
        );
    }
}
