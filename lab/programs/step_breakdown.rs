//! Where the time of one natural-gradient step goes (empirical Fisher, Gram solve): each phase
//! timed on its own, next to an SGD step and a plain forward+backward measured in the same loop.
//!
//! ```text
//! cargo run --release --features flex --example step_breakdown -- --backend flex --hidden 128 --batch 128
//! ```
//!
//! Every phase ends with a host read, so that asynchronous backends have finished its work; the
//! phases of one iteration run back to back and each row is the median over `--steps`
//! iterations. The phases overlap the whole step only approximately (each read adds a sync).

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor};
use burn_natgrad::testing::gram_and_implicit_projection;
use burn_natgrad::testing::gram_direct;
use burn_natgrad::testing::Factors;
use burn_natgrad::{Capture, NaturalGradientConfig};
use clap::Parser;

/// Phase-by-phase timing of one natural-gradient step.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Backend: ndarray or flex (those compiled in).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Width of the hidden layers of the MLP 784-H(-H)-10.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Hidden layers (1: 784-H-10, 2: 784-H-H-10).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Curvature batch of the natural gradient (default: the whole batch).
    #[arg(long)]
    curvature_batch: Option<usize>,
    /// Measured iterations (after 5 warm-up iterations).
    #[arg(long, default_value_t = 40)]
    steps: usize,
}

#[path = "cpu_timing.rs"]
mod cpu_timing;
#[path = "../../examples/shared/mlp.rs"]
mod mlp;
use cpu_timing::{device, ms};
use mlp::Mlp;

/// Waits for `t` (a host read of one value).
fn sync<const D: usize>(t: &Tensor<D>) {
    let _ = t.clone().sum().into_scalar::<f32>();
}

const PHASES: [&str; 10] = [
    "SGD step (forward, backward, update)",
    "plain forward + backward",
    "NGD: capture + forward",
    "NGD: backward + factors (classification)",
    "NGD: Gram K and projection b",
    "NGD: host solve (read K and b, Cholesky, upload)",
    "NGD: back-projection (direction)",
    "NGD: precondition (the three above, and checks)",
    "NGD: optimizer update",
    "NGD step (total)",
];

fn main() {
    let args = Args::parse();
    let device = device(&args.backend);
    let mut sizes = vec![784];
    sizes.extend(std::iter::repeat_n(args.hidden, args.depth));
    sizes.push(10);
    let n = args.batch;
    let mut model = Mlp::new(&sizes, &device);
    let x = Tensor::<2>::random([n, 784], Distribution::Uniform(0.0, 1.0), &device);
    let y: Tensor<1, Int> = Tensor::<2>::random([n, 1], Distribution::Uniform(0.0, 10.0), &device)
        .int()
        .reshape([n])
        .clamp(0, 9);
    let ce = |logits: Tensor<2>| {
        CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, y.clone())
    };
    let (ng, mut optim) = NaturalGradientConfig::new()
        .with_curvature_batch(args.curvature_batch)
        .init();
    let mut sgd = SgdConfig::new().init();
    let mut times = vec![Vec::new(); PHASES.len()];
    for iteration in 0..args.steps + 5 {
        let mut t = [0.0f64; PHASES.len()];
        // SGD, and its forward + backward alone (learning rate 0: the model stays put).
        let s = Instant::now();
        let loss = ce(model.forward_with(x.clone(), &mut Capture::disabled()));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = sgd.step(0.0, model, grads);
        sync(&model.layers[0].weight.val());
        t[0] = ms(s);
        let s = Instant::now();
        let loss = ce(model.forward_with(x.clone(), &mut Capture::disabled()));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let g: Tensor<2> = grads.get(model.layers[0].weight.id).expect("gradient");
        sync(&g);
        t[1] = ms(s);

        // The NGD step's phases, one at a time.
        let s = Instant::now();
        let (mut cap, xs) = ng.capture(x.clone());
        let logits = model.forward_with(xs, &mut cap);
        sync(&logits);
        t[2] = ms(s);
        let s = Instant::now();
        let out = ng.classification(&model, cap, logits, y.clone());
        let factors = Factors::from_grads(&model, &out.grads).expect("factors");
        if let burn_natgrad::testing::BlockFactors::Weight { output_grad, .. } =
            &factors.blocks[0].factors
        {
            sync(output_grad);
        }
        t[3] = ms(s);
        let blocks: Vec<_> = factors.blocks.iter().collect();
        let w = factors.gradient_weight.clone().expect("implicit gradient");
        let s = Instant::now();
        let (k, b) = gram_and_implicit_projection(&blocks);
        let b = b * w.clone().reshape([1, 1]);
        sync(&k);
        sync(&b);
        t[4] = ms(s);
        let s = Instant::now();
        let beta = gram_direct(&k, &b, ng.config().damping);
        sync(&beta);
        t[5] = ms(s);
        let s = Instant::now();
        let data = Tensor::<2>::ones([n, 1], &x.device()) * w.reshape([1, 1]);
        for block in &blocks {
            sync(&block.back_data_and_fisher(&data, &beta.clone().neg()));
        }
        t[6] = ms(s);
        let s = Instant::now();
        let pre = ng
            .precondition(&model, 1e-30, &out.grads)
            .expect("precondition");
        t[7] = ms(s);
        let s = Instant::now();
        // Applied at learning rate 1e-30: the model stays the same from step to step.
        model = ng.apply(&mut optim, model, pre);
        sync(&model.layers[0].weight.val());
        t[8] = ms(s);

        // The whole step, as a training loop runs it.
        let s = Instant::now();
        let (mut cap, xs) = ng.capture(x.clone());
        let logits = model.forward_with(xs, &mut cap);
        let out = ng.classification(&model, cap, logits, y.clone());
        model = ng.step(&mut optim, 0.0, model, out.grads);
        sync(&model.layers[0].weight.val());
        t[9] = ms(s);
        if iteration >= 5 {
            for (acc, v) in times.iter_mut().zip(t) {
                acc.push(v);
            }
        }
    }
    let medians: Vec<f64> = times
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    println!(
        "{} backend, MLP {}, batch {n}, {} steps (medians)\n",
        args.backend,
        sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        args.steps
    );
    println!("| phase | ms | × SGD step |");
    println!("|---|---|---|");
    for (phase, m) in PHASES.iter().zip(&medians) {
        println!("| {phase} | {m:.3} | {:.2} |", m / medians[0]);
    }
}
