//! Where the time of KFAC's steps goes with a factor period and low-rank inverses (the
//! settings of README's "KFAC at about SGD's cost"): each step's phases, the steps that reuse
//! the factors apart from those that update them (and invert them), next to an SGD step on a
//! copy of the model measured in the same loop.
//!
//! ```text
//! cargo run --release --features flex --example kfac_breakdown -- --backend flex --batch 512 --curvature-batch 128
//! ```
//!
//! Each step ends with a host read of the model (the precondition makes one of its own); the
//! CPU backends it runs on execute eagerly, so each phase's time is its own work. Rows are
//! medians over the measured steps; the factor updates' share is their time above the
//! reusing steps' median, summed and spread over all measured steps, so that a slow spell of a
//! noisy machine does not count as KFAC's cost. `lab/scripts/paired_rounds.py` measures the mean
//! step against SGD's in separate processes instead.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor};
use burn_natgrad::{Capture, Curvature, KfacConfig, KfacInverse, NaturalGradientConfig};
use clap::Parser;

/// Phase-by-phase timing of KFAC's steps with a factor period.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Backend: ndarray or flex (those compiled in).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Width of the hidden layer of the MLP 784-H-10.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Batch size.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Curvature batch of the factors (default: the whole batch).
    #[arg(long)]
    curvature_batch: Option<usize>,
    /// Eigenpairs of each wide factor's inverse (0: dense inverses).
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Update the factors every this many steps.
    #[arg(long, default_value_t = 50)]
    factor_period: usize,
    /// Invert them every this many updates.
    #[arg(long, default_value_t = 2)]
    inverse_period: usize,
    /// Measured steps, after the factors' warm-up (20 updates) and 3 more.
    #[arg(long, default_value_t = 400)]
    steps: usize,
}

#[path = "cpu_timing.rs"]
mod cpu_timing;
#[path = "../../examples/shared/mlp.rs"]
mod mlp;
use cpu_timing::{device, ms};
use mlp::Mlp;

/// Waits for the model's first weight (a host read of one value).
fn sync(model: &Mlp) {
    let _ = model.layers[0].weight.val().sum().into_scalar::<f32>();
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let args = Args::parse();
    let device = device(&args.backend);
    let n = args.batch;
    let sizes = [784, args.hidden, 10];
    let mut model = Mlp::new(&sizes, &device);
    let mut sgd_model = model.clone();
    let x = Tensor::<2>::random([n, 784], Distribution::Uniform(0.0, 1.0), &device);
    let y: Tensor<1, Int> = Tensor::<2>::random([n, 1], Distribution::Uniform(0.0, 10.0), &device)
        .int()
        .reshape([n])
        .clamp(0, 9);
    let (ng, mut optim) = NaturalGradientConfig::new()
        .with_damping(1.0)
        .with_curvature(Curvature::Kfac(
            KfacConfig::new()
                .with_factor_update_steps(args.factor_period)
                .with_inv_update_steps(args.factor_period * args.inverse_period)
                .with_inverse(match args.rank {
                    0 => KfacInverse::Dense,
                    rank => KfacInverse::LowRank { rank },
                }),
        ))
        .with_curvature_batch(args.curvature_batch)
        .init();
    let mut sgd = SgdConfig::new().init();
    // [forward + backward, precondition, apply, whole step] of reusing and updating steps.
    let (mut reusing, mut updating) = (vec![Vec::new(); 4], vec![Vec::new(); 4]);
    let mut sgd_steps = Vec::new();
    for step in 0..args.steps + 23 {
        let due = ng.factors_due();
        let s = Instant::now();
        let (mut cap, xs) = ng.capture(x.clone());
        let logits = model.forward_with(xs, &mut cap);
        let out = ng.classification(&model, cap, logits, y.clone());
        let forward_backward = ms(s);
        let p = Instant::now();
        let pre = ng
            .precondition(&model, 0.1, &out.grads)
            .expect("precondition");
        let precondition = ms(p);
        let a = Instant::now();
        model = ng.apply(&mut optim, model, pre);
        sync(&model);
        let (apply, whole) = (ms(a), ms(s));

        let s = Instant::now();
        let logits = sgd_model.forward_with(x.clone(), &mut Capture::disabled());
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &sgd_model);
        sgd_model = sgd.step(0.1, sgd_model, grads);
        sync(&sgd_model);
        let sgd_step = ms(s);
        if step >= 23 {
            let rows = if due { &mut updating } else { &mut reusing };
            for (row, t) in rows
                .iter_mut()
                .zip([forward_backward, precondition, apply, whole])
            {
                row.push(t);
            }
            sgd_steps.push(sgd_step);
        }
    }
    let sgd_median = median(&sgd_steps);
    let reuse_median = median(&reusing[3]);
    let excess: f64 = updating[3].iter().map(|t| t - reuse_median).sum();
    let amortised = excess / args.steps as f64;
    println!(
        "{} backend, MLP 784-{}-10, batch {n}, curvature batch {}, rank {}, factors every {} \
         steps, inverses every {} updates; {} measured steps ({} reusing, {} updating)\n",
        args.backend,
        args.hidden,
        args.curvature_batch.map_or("all".into(), |c| c.to_string()),
        args.rank,
        args.factor_period,
        args.inverse_period,
        args.steps,
        reusing[3].len(),
        updating[3].len()
    );
    println!("| step | forward + backward | precondition | apply | whole (ms) | / SGD's |");
    println!("|---|---|---|---|---|---|");
    for (name, rows) in [("reusing", &reusing), ("updating", &updating)] {
        let m: Vec<f64> = rows.iter().map(|r| median(r)).collect();
        println!(
            "| KFAC, {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2}× |",
            m[0],
            m[1],
            m[2],
            m[3],
            m[3] / sgd_median
        );
    }
    println!("| SGD | | | | {sgd_median:.3} | 1.00× |");
    println!(
        "\nfactor updates and inverses, spread over every step: {amortised:.3} ms ({:.2}× SGD's \
         step); reusing median plus that: {:.2}× SGD's median step",
        amortised / sgd_median,
        (reuse_median + amortised) / sgd_median
    );
}
