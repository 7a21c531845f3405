//! Benchmark of the layer rules and of the guide CNN: for each rule, its factor pass (forward
//! inside a capture, backward, factors) against a plain forward + backward of the same layer;
//! for Burn's guide CNN (batch 64), the natural-gradient steps (the Gram solve, KFAC) against
//! SGD's and Adam's. Ratios
//! are measured in one run, methods interleaved in rounds (medians over all steps), on a CPU
//! backend (eager: every operation has run when it returns). Writes
//! `target/bench/rules.csv`.
//!
//! ```text
//! cargo run --release --features flex --example bench_rules -- --backend flex
//! ```

use std::fmt::Write as _;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{
    BatchNormConfig, EmbeddingConfig, GroupNormConfig, LayerNormConfig, LinearConfig, RmsNormConfig,
};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_natgrad::{nn, Capture, Curvature, NaturalGradientConfig};
use clap::Parser;
use natgrad_mnist::GuideCnn;

#[path = "shared/cli.rs"]
#[allow(dead_code)]
mod cli;
use cli::{device, Backend};

/// Layer rules and the guide CNN: step-time ratios measured in one run.
#[derive(Parser, Debug)]
struct Args {
    /// Backend.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Rounds (each runs every method for `--steps` steps).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed steps per method and round (after 3 untimed ones).
    #[arg(long, default_value_t = 20)]
    steps: usize,
}

/// One layer of each kind, in drop-in form, and its input.
#[derive(Module, Debug)]
enum Layer {
    Linear(nn::Linear),
    Conv2d(nn::Conv2d),
    Embedding(nn::Embedding),
    LayerNorm(nn::LayerNorm),
    BatchNorm(nn::BatchNorm),
    GroupNorm(nn::GroupNorm),
    RmsNorm(nn::RmsNorm),
}

fn layers(device: &Device, n: usize) -> Vec<(&'static str, Layer, Tensor<4>)> {
    let normal = Distribution::Normal(0.0, 1.0);
    // Every input travels as a `[N, a, b, c]` float tensor, reshaped by `forward`.
    vec![
        (
            "linear 784→512",
            Layer::Linear(LinearConfig::new(784, 512).init(device).into()),
            Tensor::random([n, 1, 1, 784], normal, device),
        ),
        (
            "conv2d 8→16 3×3 on 26×26",
            Layer::Conv2d(Conv2dConfig::new([8, 16], [3, 3]).init(device).into()),
            Tensor::random([n, 8, 26, 26], normal, device),
        ),
        (
            "embedding 10000×64, 32 ids",
            Layer::Embedding(EmbeddingConfig::new(10_000, 64).init(device).into()),
            Tensor::random([n, 1, 1, 32], Distribution::Uniform(0.0, 9_999.0), device),
        ),
        (
            "layer_norm 512 on 16×512",
            Layer::LayerNorm(LayerNormConfig::new(512).init(device).into()),
            Tensor::random([n, 1, 16, 512], normal, device),
        ),
        (
            "batch_norm 8 on 26×26 (training mode)",
            Layer::BatchNorm(BatchNormConfig::new(8).init(device).into()),
            Tensor::random([n, 8, 26, 26], normal, device),
        ),
        (
            "group_norm 2 groups of 4 on 26×26",
            Layer::GroupNorm(GroupNormConfig::new(2, 8).init(device).into()),
            Tensor::random([n, 8, 26, 26], normal, device),
        ),
        (
            "rms_norm 512 on 16×512",
            Layer::RmsNorm(RmsNormConfig::new(512).init(device).into()),
            Tensor::random([n, 1, 16, 512], normal, device),
        ),
    ]
}

impl Layer {
    /// `mean(output²)`, a loss that reaches every output.
    fn loss(&self, x: Tensor<4>) -> Tensor<1> {
        let [n, a, b, c] = x.dims();
        match self {
            Layer::Linear(l) => l.forward(x.reshape([n, c])).square().mean(),
            Layer::Conv2d(l) => l.forward(x).square().mean(),
            Layer::Embedding(l) => {
                let ids: Tensor<2, Int> = x.reshape([n, c]).int();
                l.forward(ids).square().mean()
            }
            Layer::LayerNorm(l) => l.forward(x.reshape([n, a * b, c])).square().mean(),
            Layer::BatchNorm(l) => l.forward(x).square().mean(),
            Layer::GroupNorm(l) => l.forward(x).square().mean(),
            Layer::RmsNorm(l) => l.forward(x.reshape([n, a * b, c])).square().mean(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` `3 + steps` times and returns the last `steps` times in ms.
fn time(steps: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..3 + steps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .skip(3)
        .collect()
}

fn main() {
    let args = Args::parse();
    let device = device(args.backend);
    let mut csv = String::from("benchmark,method,median_ms,ratio\n");
    let mut table =
        String::from("| benchmark | method | median (ms) | ratio |\n|---|---|---|---|\n");
    let mut report = |bench: &str, results: Vec<(&str, Vec<f64>)>| {
        let base = median(results[0].1.clone());
        for (method, times) in results {
            let m = median(times);
            let _ = writeln!(csv, "{bench},{method},{m:.3},{:.3}", m / base);
            let _ = writeln!(table, "| {bench} | {method} | {m:.2} | {:.2}× |", m / base);
        }
    };
    for (name, layer, x) in layers(&device, 64) {
        let (mut plain, mut factors) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            plain.extend(time(args.steps, || {
                let grads = layer.loss(x.clone()).backward();
                let _ = GradientsParams::from_grads(grads, &layer);
            }));
            factors.extend(time(args.steps, || {
                let (capture, loss) = Capture::new().scope(|| layer.loss(x.clone()));
                let grads = loss.backward();
                let _ = capture.into_factors(&grads).expect("factors");
            }));
        }
        report(
            name,
            vec![("forward+backward", plain), ("factor pass", factors)],
        );
    }

    // The guide CNN on random images, batch 64.
    let n = 64;
    let x = Tensor::<2>::random([n, 784], Distribution::Uniform(0.0, 1.0), &device);
    let y = Tensor::<1>::random([n], Distribution::Uniform(0.0, 9.99), &device).int();
    let mut runs: Vec<(&str, Vec<f64>)> = vec![
        ("sgd", vec![]),
        ("adam", vec![]),
        ("ngd", vec![]),
        ("kfac", vec![]),
    ];
    for _ in 0..args.rounds {
        for (method, times) in runs.iter_mut() {
            let mut model = GuideCnn::new(512, 0.5, false, 1, &device);
            let ng = match *method {
                // The CNN example's default; inverses every 10 steps: the median step does not
                // invert.
                "kfac" => NaturalGradientConfig::new()
                    .with_curvature(Curvature::kfac())
                    .with_damping(0.5),
                _ => NaturalGradientConfig::new().with_damping(5.0),
            }
            .build();
            let mut optim: ModuleOptimizer = match *method {
                "sgd" => SgdConfig::new().init(),
                "adam" => AdamConfig::new().init(),
                _ => ng.module_optimizer(),
            };
            times.extend(time(args.steps, || {
                let m = model.clone();
                model = if matches!(*method, "ngd" | "kfac") {
                    let out = ng.train_step(&m, x.clone(), y.clone(), |x| m.forward(x));
                    ng.step(&mut optim, 0.1, m.clone(), out.grads)
                } else {
                    let loss = CrossEntropyLossConfig::new()
                        .init(&device)
                        .forward(m.forward(x.clone()), y.clone());
                    let grads = GradientsParams::from_grads(loss.backward(), &m);
                    optim.step(0.01, m.clone(), grads)
                };
            }));
        }
    }
    report("guide CNN step, batch 64", runs);
    println!("{table}");
    let dir = std::path::Path::new("target/bench");
    std::fs::create_dir_all(dir).expect("create target/bench");
    std::fs::write(dir.join("rules.csv"), csv).expect("write rules.csv");
    println!("wrote target/bench/rules.csv");
}
