//! Step-time and memory benchmark: SGD, Adam and the natural gradient (every solver, empirical
//! and sampled Fisher), the per-example factor pass and a plain forward+backward, on MLPs
//! 784-128-10, 784-512-512-10 and 784-1024-1024-10 at batch 128, 256 and 512, on every CPU
//! backend compiled in (and wgpu with `--wgpu`; `--quick`: MLP-128 at batch 128 only;
//! `--methods a,b`: those methods and SGD only; `--models a,b`: those models only). Ratios
//! are to SGD measured in the same run.
//! Writes `target/bench/results.csv`. The `-cb32` methods estimate the Fisher on a curvature
//! batch of 32 examples (`NaturalGradientConfig::curvature_batch`). The `kfac-empirical-fK`
//! methods update KFAC's factors every `K` steps (`KfacConfig::factor_update_steps`)
//! and run 50 measured steps per child (100 for `-f20` and `-f50`, whose inverses come every
//! 100 steps) after their factor warm-up, so that
//! their mean step (also printed, next to the median) amortises the factor updates and
//! inverses. A `-rR` suffix gives KFAC low-rank inverses of rank `R` for its factors wider than
//! `4R` (`KfacInverse::LowRank`).
//!
//! ```text
//! cargo run --release --features flex --example bench
//! ```
//!
//! Each (backend, model, batch, method) runs in a child process of this program, so that its
//! peak memory (the growth of the resident set over the process's baseline, from
//! `/proc/self/status`) is its own. Every method runs in three rounds of fresh children, one
//! method after the other, and its median step time is taken over the steps of all rounds: a
//! slow spell of a shared machine then falls on all methods alike.
//!
//! The children run with glibc's `mmap` threshold fixed at 256 MiB ([`ALLOCATOR`], unless
//! `GLIBC_TUNABLES` is already set). By default glibc serves a block of at least the threshold
//! with a fresh `mmap` (page faults on first touch, `munmap` on free), and raises the threshold
//! only to the size of the largest such block freed so far, so a method's step cost depended
//! on whether it, or anything before it in the process, happened to free a large block: at
//! batch 128, where the `[128, 784]` tensors sit at the threshold, SGD measured slower than
//! KFAC's reusing step (whose dense input factor, freed at each update, raised it). A long
//! training process raises it early either way.
//!
//! With `NATGRAD_BENCH_IN_POOL=1` (inherited by the children, so `lab/scripts/paired_rounds.py`
//! takes it too) each child runs its measured steps inside `rayon::scope`, on one of the CPU
//! backends' pool threads, for every method alike. By default the steps run on the process's
//! main thread, which is not one of the pool's: after each parallel product the pool's workers
//! spin for a while before they sleep, beside the main thread's serial work, and on a two-core
//! machine that is three threads on two cores (`lab/kfac.md`, "The rows' product at batch
//! 128"). The default is what a training loop on its own thread gets; the in-pool protocol
//! is what it gets inside `rayon::ThreadPool::install` or `rayon::scope`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_natgrad::{Capture, NaturalGradient};

#[path = "shared/bench_methods.rs"]
mod bench_methods;
#[path = "shared/mlp.rs"]
mod mlp;
use bench_methods::{natgrad, METHODS};
use mlp::Mlp;

fn sizes(model: &str) -> Vec<usize> {
    match model {
        "mlp-128" => vec![784, 128, 10],
        "mlp-512" => vec![784, 512, 512, 10],
        "mlp-1024" => vec![784, 1024, 1024, 10],
        other => panic!("unknown model {other}"),
    }
}

fn device(backend: &str) -> Device {
    match backend {
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        other => panic!("backend {other} is not compiled in"),
    }
    .autodiff()
}

fn rss_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// One training step (or pass) of `method`; returns the model. Ends with a host read so that
/// asynchronous backends have finished the work.
fn step(
    method: &str,
    model: Mlp,
    optim: &mut ModuleOptimizer,
    ng: Option<&NaturalGradient>,
    x: &Tensor<2>,
    y: &Tensor<1, Int>,
) -> Mlp {
    let ce = |logits: Tensor<2>| {
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, y.clone())
    };
    let model = match (method, ng) {
        (_, Some(ng)) => {
            let (mut cap, xs) = ng.capture(x.clone());
            let logits = model.forward_with(xs, &mut cap);
            let out = ng.classification(&model, cap, logits, y.clone());
            ng.step(optim, 0.1, model, out.grads)
        }
        ("factors", None) => {
            let mut cap = Capture::new();
            let loss = ce(model.forward_with(x.clone(), &mut cap));
            let grads = loss.backward();
            let factors = cap.into_factors(&grads).expect("factors");
            let _ = GradientsParams::from_grads(grads, &model);
            // Wait for the factor pass: the last layer's bias gradient is a sum of its rows.
            let last = model.layers.last().expect("a layer");
            let id = last.bias.as_ref().map_or(last.weight.id, |b| b.id);
            let _ = factors
                .grad(id)
                .expect("captured")
                .sum()
                .into_scalar::<f32>();
            model
        }
        ("forward-backward", None) => {
            let loss = ce(model.forward_with(x.clone(), &mut Capture::disabled()));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let g: Tensor<2> = grads.get(model.layers[0].weight.id).expect("grad");
            let _ = g.sum().into_scalar::<f32>();
            model
        }
        _ => {
            let loss = ce(model.forward_with(x.clone(), &mut Capture::disabled()));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optim.step(0.01, model, grads)
        }
    };
    let _ = model.layers[0].weight.val().sum().into_scalar::<f32>();
    model
}

/// Child: measure one configuration, print `peak_mb` and then each step's time in ms.
fn child(backend: &str, model_name: &str, batch: usize, method: &str, steps: usize) {
    let base = rss_kb("VmRSS:");
    let device = device(backend);
    let mut model = Mlp::new(&sizes(model_name), &device);
    let x = Tensor::<2>::random([batch, 784], Distribution::Uniform(0.0, 1.0), &device);
    let y = Tensor::<2>::random([batch, 1], Distribution::Uniform(0.0, 10.0), &device)
        .int()
        .reshape([batch])
        .clamp(0, 9);
    let ng = natgrad(method);
    let mut optim = match (&ng, method) {
        (Some(ng), _) => ng.module_optimizer(),
        (None, "adam") => AdamConfig::new().init(),
        _ => SgdConfig::new().init(),
    };
    // Warm-up steps; a factor period's also past its warm-up (every step updates the factors
    // until the averages hold 1 / (1 − 0.95) = 20 batches), so that the measured steps are its
    // steady state.
    let warm_up = if method.starts_with("kfac-empirical-f") {
        23
    } else {
        3
    };
    for _ in 0..warm_up {
        model = step(method, model, &mut optim, ng.as_ref(), &x, &y);
    }
    let measure = move || {
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t = Instant::now();
            model = step(method, model, &mut optim, ng.as_ref(), &x, &y);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times
    };
    let times = if in_pool() {
        // On one of the pool's threads: the calling thread then waits instead of running beside
        // the pool's workers (see the module docs).
        rayon::scope(|_| measure())
    } else {
        measure()
    };
    let peak = (rss_kb("VmHWM:") - base) / 1024.0;
    let times: Vec<String> = times.iter().map(|t| t.to_string()).collect();
    println!("{peak} {}", times.join(" "));
}

/// Whether the children run their measured steps on one of the thread pool's threads
/// (`NATGRAD_BENCH_IN_POOL=1`; see the module docs).
fn in_pool() -> bool {
    std::env::var("NATGRAD_BENCH_IN_POOL").is_ok_and(|v| v == "1")
}

/// The allocator setting of every child (see the module docs).
const ALLOCATOR: &str =
    "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=268435456";

/// Rounds per configuration (see `main`).
const ROUNDS: usize = 3;

/// The median of `v` (NaN if empty).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const USAGE: &str = "usage: bench [--quick] [--wgpu] [--methods a,b,...] [--models a,b,...]
  --quick        MLP-128 at batch 128 only
  --models a,b   only these models (mlp-128, mlp-512, mlp-1024)
  --wgpu         add the wgpu backend (needs the `wgpu` feature)
  --methods a,b  only these methods (and SGD, the reference)";

/// Exits with the usage on `--help`, and with an error on anything it does not know.
fn check_args(args: &[String]) {
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--wgpu" if !cfg!(feature = "wgpu") => {
                eprintln!("error: --wgpu needs the `wgpu` feature (`--features flex,wgpu`)");
                std::process::exit(2);
            }
            "--quick" | "--wgpu" => {}
            "--methods" | "--models" if i + 1 < args.len() => i += 1,
            "-h" | "--help" => {
                println!("{USAGE}\nmethods: {}", METHODS.join(", "));
                std::process::exit(0);
            }
            other => {
                eprintln!("error: unexpected argument `{other}`\n{USAGE}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
}

// One push per compiled backend.
#[allow(clippy::vec_init_then_push)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        if args.len() != 7 || !METHODS.contains(&args[5].as_str()) {
            eprintln!(
                "error: --child BACKEND MODEL BATCH METHOD STEPS; methods: {}",
                METHODS.join(", ")
            );
            std::process::exit(2);
        }
        let steps: usize = args[6].parse().expect("steps");
        // A factor period's mean step needs whole periods of factor updates and inverses.
        let steps = if args[5].starts_with("kfac-empirical-f20")
            || args[5].starts_with("kfac-empirical-f50")
        {
            steps.max(100)
        } else if args[5].starts_with("kfac-empirical-f") {
            steps.max(50)
        } else {
            steps
        };
        child(
            &args[2],
            &args[3],
            args[4].parse().expect("batch"),
            &args[5],
            steps,
        );
        return;
    }
    check_args(&args[1..]);
    let mut backends: Vec<&str> = Vec::new();
    #[cfg(feature = "ndarray")]
    backends.push("ndarray");
    #[cfg(feature = "flex")]
    backends.push("flex");
    #[cfg(feature = "wgpu")]
    if args.iter().any(|a| a == "--wgpu") {
        backends.push("wgpu");
    }
    let quick = args.iter().any(|a| a == "--quick");
    let wanted_models: Option<Vec<&str>> = args
        .iter()
        .position(|a| a == "--models")
        .map(|i| args.get(i + 1).expect("--models a,b").split(',').collect());
    let models: Vec<&str> = if quick {
        vec!["mlp-128"]
    } else {
        ["mlp-128", "mlp-512", "mlp-1024"]
            .into_iter()
            .filter(|m| wanted_models.as_ref().is_none_or(|w| w.contains(m)))
            .collect()
    };
    if let Some(w) = &wanted_models {
        for m in w {
            assert!(
                models.contains(m),
                "unknown model {m}; known: mlp-128, mlp-512, mlp-1024"
            );
        }
    }
    let batches: &[usize] = if quick { &[128] } else { &[128, 256, 512] };
    let methods: Vec<&str> = match args.iter().position(|a| a == "--methods") {
        Some(i) => {
            let wanted: Vec<&str> = args.get(i + 1).expect("--methods a,b").split(',').collect();
            for w in &wanted {
                assert!(
                    METHODS.contains(w),
                    "unknown method {w}; known: {METHODS:?}"
                );
            }
            METHODS
                .iter()
                .copied()
                .filter(|m| *m == "sgd" || wanted.contains(m))
                .collect()
        }
        None => METHODS.to_vec(),
    };
    let exe = std::env::current_exe().expect("current exe");
    let mut csv = String::from(
        "backend,model,batch,method,median_ms,ratio_vs_sgd,peak_mb,mean_ms,mean_ratio_vs_sgd\n",
    );
    println!(
        "| backend | model | batch | method | median ms | × SGD | mean ms | × SGD | peak MB | × SGD |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for backend in &backends {
        for model in &models {
            for &batch in batches {
                // Measured steps per child (after 3 warm-up steps), ROUNDS children per method.
                let steps = if *model != "mlp-128" && batch == 512 {
                    4
                } else {
                    10
                };
                // Rounds: every method runs once per round, in a fresh child, and its step
                // times are pooled over the rounds, so that a slow spell of this shared machine
                // lands on all methods alike instead of on one.
                let mut times: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
                let mut peaks: Vec<f64> = vec![f64::NAN; methods.len()];
                for _ in 0..ROUNDS {
                    for (i, method) in methods.iter().enumerate() {
                        let mut command = Command::new(&exe);
                        if std::env::var_os("GLIBC_TUNABLES").is_none() {
                            command.env("GLIBC_TUNABLES", ALLOCATOR);
                        }
                        let out = command
                            .args([
                                "--child",
                                backend,
                                model,
                                &batch.to_string(),
                                method,
                                &steps.to_string(),
                            ])
                            .output()
                            .expect("run child");
                        if !out.status.success() {
                            eprintln!(
                                "{backend} {model} {batch} {method}: failed:\n{}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                            continue;
                        }
                        let text = String::from_utf8_lossy(&out.stdout);
                        let mut values = text
                            .split_whitespace()
                            .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
                        let peak = values.next().unwrap_or(f64::NAN);
                        peaks[i] = if peaks[i].is_nan() {
                            peak
                        } else {
                            peaks[i].max(peak)
                        };
                        times[i].extend(values);
                    }
                }
                let means: Vec<f64> = times
                    .iter()
                    .map(|t| t.iter().sum::<f64>() / t.len() as f64)
                    .collect();
                let medians: Vec<f64> = times.into_iter().map(median).collect();
                let (sgd_ms, sgd_mean, sgd_mb) = (medians[0], means[0], peaks[0]);
                for (i, method) in methods.iter().enumerate() {
                    let (ms, mean, mb) = (medians[i], means[i], peaks[i]);
                    println!(
                        "| {backend} | {model} | {batch} | {method} | {ms:.2} | {:.2} | {mean:.2} | {:.2} | {mb:.1} | {:.2} |",
                        ms / sgd_ms,
                        mean / sgd_mean,
                        mb / sgd_mb
                    );
                    let _ = writeln!(
                        csv,
                        "{backend},{model},{batch},{method},{ms:.3},{:.3},{mb:.1},{mean:.3},{:.3}",
                        ms / sgd_ms,
                        mean / sgd_mean
                    );
                }
            }
        }
    }
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let path = dir.join("results.csv");
    std::fs::write(&path, csv).expect("write results.csv");
    println!("\nwrote {}", path.display());
}
