//! The blog post's MNIST experiment (MLP 784-128-10, batch 128, 2 epochs) with burn-natgrad's
//! natural gradient against tuned SGD and Adam, through Burn's Learner.
//!
//! ```text
//! cargo run --release --example mnist
//! cargo run --release --example mnist -- --data-dir DIR
//! cargo run --release --example mnist -- --help
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use burn::optim::momentum::MomentumConfig;
use burn_natgrad::{AdaptiveDampingConfig, CgConfig, NaturalGradientConfig};
use clap::{Parser, ValueEnum};
use natgrad_mnist::{
    evals_csv, plot, results_csv, results_table, run, seeds_csv, seeds_table, OptimizerSpec,
    RunOptions,
};

#[path = "shared/cli.rs"]
mod cli;
use cli::{
    checked_data, chosen_specs, device, Checks, Common, Curvature, CurvatureArgs, Fisher,
    FisherArgs, Opt,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Solver {
    /// Exact Woodbury/Gram solve (N×N Cholesky).
    Gram,
    /// Conjugate gradient on the N×N Gram system.
    #[value(alias = "cg")]
    CgSample,
    /// Conjugate gradient in parameter space (matrix-free Fisher products).
    CgParam,
}

/// Natural gradient vs SGD vs Adam on MNIST (MLP 784-H-10), through Burn's Learner.
#[derive(Parser, Debug)]
#[command(version, about, allow_negative_numbers = true)]
struct Args {
    /// Optimizers to run, one after another on the same data order and seed (repeatable).
    #[arg(long = "optimizer", value_enum, default_values_t = [Opt::All])]
    optimizers: Vec<Opt>,
    #[command(flatten)]
    fisher: FisherArgs,
    /// Estimate the natural gradient's Fisher on the first N examples of each batch (a
    /// curvature batch; the gradient still uses the whole batch) [default: the whole batch].
    #[arg(long)]
    curvature_batch: Option<usize>,
    /// Solver of the natural gradient (`--curvature full`) [default: gram].
    #[arg(long, value_enum)]
    solver: Option<Solver>,
    #[command(flatten)]
    curvature: CurvatureArgs,
    /// Adapt the natural gradient's damping every N steps (Levenberg–Marquardt, from --damping,
    /// within [1e-6, 1e6]); 0: fixed damping.
    #[arg(long, default_value_t = 0)]
    adaptive_damping: usize,
    /// Tikhonov damping λ of the natural gradient [default: 5 empirical, 1 sampled; KFAC 0.03
    /// empirical, 0.05 sampled].
    #[arg(long)]
    damping: Option<f64>,
    /// Learning rate of the natural gradient [default: 5 empirical, 1 sampled; KFAC 0.1
    /// empirical, 0.2 sampled].
    #[arg(long)]
    lr: Option<f64>,
    /// KL trust region of the natural gradient, 0 for none [default: 0 empirical, 0.01
    /// sampled; KFAC 0].
    #[arg(long)]
    kl_max: Option<f64>,
    /// Momentum of the natural gradient, 0 for none [default: 0.7 empirical, 0 sampled; KFAC
    /// 0].
    #[arg(long)]
    momentum: Option<f64>,
    /// Learning rate of SGD (the best of its grid, see --sweep).
    #[arg(long, default_value_t = 0.5)]
    sgd_lr: f64,
    /// Learning rate of Adam (the best of its grid, see --sweep).
    #[arg(long, default_value_t = 5e-3)]
    adam_lr: f64,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[command(flatten)]
    common: Common,
    /// Test evaluations per epoch during training, against the training seconds (evals.csv,
    /// time.svg); 0: only after each epoch.
    #[arg(long, default_value_t = 4)]
    evals_per_epoch: usize,
    /// Output folder: results.csv, curves.svg, evals.csv, time.svg, checkpoints.
    #[arg(long, default_value = "target/mnist")]
    out: PathBuf,
    /// Repeat the comparison over this many seeds (`--seed`, `--seed` + 1, …) and report each
    /// optimizer's mean and range per epoch (seeds.csv); results.csv and the picture are the
    /// first seed's.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Run the learning-rate grids for one epoch each and print them (sweep.csv), instead of
    /// the comparison.
    #[arg(long)]
    sweep: bool,
}

/// The natural gradient's sweep grid, `(lr, damping, momentum)` (`--fisher empirical`).
const NGD_GRID: [(f64, f64, f64); 5] = [
    (10.0, 3.0, 0.0),
    (5.0, 2.0, 0.5),
    (5.0, 3.0, 0.5),
    (5.0, 5.0, 0.7),
    (3.0, 3.0, 0.7),
];

/// KFAC's sweep grid, `(lr, damping, momentum)` (`--curvature kfac`, either Fisher).
const KFAC_GRID: [(f64, f64, f64); 5] = [
    (0.1, 0.03, 0.0),
    (0.2, 0.05, 0.0),
    (0.3, 0.1, 0.0),
    (0.5, 0.2, 0.0),
    (1.0, 1.0, 0.7),
];

/// The natural gradient's defaults, `(lr, damping, momentum, kl_max)`: the empirical Gram's
/// won `--sweep`; the sampled Gram needs a trust region (see README); KFAC's won its `--sweep`
/// for both Fishers.
fn ngd_defaults(args: &Args) -> (f64, f64, f64, f64) {
    match (args.curvature.kfac(), args.fisher.fisher) {
        (true, Fisher::Empirical) => (0.1, 0.03, 0.0, 0.0),
        (true, Fisher::Sampled | Fisher::Exact) => (0.2, 0.05, 0.0, 0.0),
        (false, Fisher::Empirical) => (5.0, 5.0, 0.7, 0.0),
        (false, Fisher::Sampled | Fisher::Exact) => (1.0, 1.0, 0.0, 0.01),
    }
}

fn kl_max(args: &Args) -> Option<f64> {
    let kl = args.kl_max.unwrap_or(ngd_defaults(args).3);
    (kl != 0.0).then_some(kl)
}

fn ngd_config(args: &Args, lr: f64, damping: f64, momentum: f64) -> OptimizerSpec {
    let mut config = args
        .curvature
        .configure(
            NaturalGradientConfig::new(),
            match args.solver.unwrap_or(Solver::Gram) {
                Solver::Gram => burn_natgrad::Solver::Gram,
                Solver::CgSample => burn_natgrad::Solver::CgSample(CgConfig::new()),
                Solver::CgParam => burn_natgrad::Solver::CgParam(CgConfig::new()),
            },
        )
        .with_fisher(args.fisher.kind())
        .with_adaptive_damping(
            (args.adaptive_damping > 0)
                .then(|| AdaptiveDampingConfig::new().with_period(args.adaptive_damping)),
        )
        .with_damping(damping)
        .with_curvature_batch(args.curvature_batch)
        .with_kl_max(kl_max(args));
    if momentum > 0.0 {
        config = config.with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(momentum)
                .with_dampening(0.0),
        ));
    }
    OptimizerSpec::Ngd { config, lr }
}

/// The natural gradient of the command line: its options, or their defaults.
fn ngd_spec(args: &Args) -> OptimizerSpec {
    let (lr, damping, momentum, _) = ngd_defaults(args);
    ngd_config(
        args,
        args.lr.unwrap_or(lr),
        args.damping.unwrap_or(damping),
        args.momentum.unwrap_or(momentum),
    )
}

/// The weight average evaluated for `spec` instead of the last iterate: `--average` for every
/// optimizer (0: the last iterate); by default each configuration's decay from the grid {0.9,
/// 0.99, 0.998}, picked by the five-seed mean after epoch 1, ties by epoch 2
/// (`docs/tuning.md`): 0.9 for SGD and the Gram solve with the sampled or exact Fisher, 0.99
/// for Adam, the empirical Gram solve and KFAC. `--sweep` evaluates the last iterate unless
/// `--average` is given (the learning-rate grids were tuned so).
fn average_for(args: &Args, spec: &OptimizerSpec) -> Option<f64> {
    match args.common.average {
        Some(decay) => (decay > 0.0).then_some(decay),
        None if args.sweep => None,
        None => Some(match spec {
            OptimizerSpec::Sgd { .. } => 0.9,
            OptimizerSpec::Adam { .. } => 0.99,
            OptimizerSpec::Ngd { .. } => match (args.curvature.kfac(), args.fisher.fisher) {
                (false, Fisher::Sampled | Fisher::Exact) => 0.9,
                _ => 0.99,
            },
        }),
    }
}

/// The widest hidden layer the example accepts: 784 × 2²⁰ weights are 3 GiB of `f32`.
const MAX_HIDDEN: usize = 1 << 20;

/// Every numeric option, the natural gradient's configuration and the output folder, before
/// anything is loaded.
fn check(args: &Args) -> Result<(), String> {
    let mut checks = Checks::default();
    checks
        .at_least_one("batch-size", args.batch_size)
        .at_least_one("hidden", args.hidden)
        .at_most(
            "hidden",
            args.hidden,
            MAX_HIDDEN,
            "the MLP's first weight alone would take more than 3 GiB",
        )
        .at_least_one("seeds", args.seeds)
        .positive("sgd-lr", args.sgd_lr)
        .positive("adam-lr", args.adam_lr);
    if let Some(m) = args.curvature_batch {
        checks.at_least_one("curvature-batch", m);
    }
    args.curvature.check(&mut checks, args.solver.is_some());
    args.fisher.check(&mut checks);
    if let Some(lr) = args.lr {
        checks.positive("lr", lr);
    }
    if let Some(damping) = args.damping {
        checks.positive("damping", damping);
    }
    if let Some(kl) = args.kl_max {
        checks.non_negative("kl-max", kl);
    }
    if let Some(m) = args.momentum {
        checks.fraction("momentum", m);
    }
    if let OptimizerSpec::Ngd { config, .. } = ngd_spec(args) {
        checks.config(&config);
    }
    checks.finish(&args.common, &args.out)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    // KFAC for the sampled Fisher: the Gram solve divides the part of the gradient outside the
    // sampled rows' span by λ alone (docs/tuning.md); the batch's coupled Fisher otherwise.
    args.curvature.resolve(match args.fisher.fisher {
        Fisher::Sampled => Curvature::Kfac,
        Fisher::Empirical | Fisher::Exact => Curvature::Full,
    });
    let data = match checked_data(check(&args), &args.common) {
        Ok(data) => data,
        Err(code) => return code,
    };
    let ngd = ngd_spec(&args);
    let options = RunOptions {
        epochs: if args.sweep { 1 } else { args.common.epochs },
        batch_size: args.batch_size,
        hidden: args.hidden,
        seed: args.common.seed,
        device: device(args.common.backend),
        progress_bar: std::io::stdout().is_terminal(),
        quiet: false,
        average: None,
        evals_per_epoch: args.evals_per_epoch,
    };
    // Five natural-gradient configurations, as many as SGD's grid: (lr, damping, momentum).
    let grid = if args.curvature.kfac() {
        KFAC_GRID
    } else {
        NGD_GRID
    };
    let grid = grid.map(|(lr, d, m)| ngd_config(&args, lr, d, m)).to_vec();
    let specs = chosen_specs(
        &args.optimizers,
        args.sweep,
        grid,
        ngd,
        args.sgd_lr,
        args.adam_lr,
    );
    println!(
        "MNIST: {} train / {} test examples, MLP 784-{}-10, batch {}, {} epoch(s), backend {:?}",
        data.train.len(),
        data.test.len(),
        args.hidden,
        args.batch_size,
        options.epochs,
        args.common.backend
    );
    let mut results = Vec::new();
    let mut all = Vec::new();
    for s in 0..args.seeds as u64 {
        let options = RunOptions {
            seed: args.common.seed + s,
            ..options.clone()
        };
        for (i, spec) in specs.iter().enumerate() {
            println!(
                "== {} ({}), seed {}",
                spec.name(),
                spec.describe(),
                options.seed
            );
            let dir = args.out.join("runs").join(format!("{i}-{}", spec.name()));
            let options = RunOptions {
                average: average_for(&args, spec),
                ..options.clone()
            };
            let result = run(spec, &data, &options, &dir);
            let accs: Vec<String> = result
                .epochs
                .iter()
                .map(|e| format!("{:.2}%", 100.0 * e.test_accuracy))
                .collect();
            println!("   test accuracy per epoch: {}", accs.join(", "));
            let losses: Vec<f64> = result.epochs.iter().map(|e| e.test_loss).collect();
            let rise = losses
                .windows(2)
                .map(|w| w[1] / w[0] - 1.0)
                .fold(f64::NEG_INFINITY, f64::max);
            let shown: Vec<String> = losses.iter().map(|l| format!("{l:.4}")).collect();
            if losses.len() > 1 {
                println!(
                    "   test loss per epoch: {} (largest rise between epochs: {:+.1}%)",
                    shown.join(", "),
                    100.0 * rise
                );
            }
            if result.skipped_steps > 0 {
                println!(
                    "   {} natural-gradient steps skipped (non-finite)",
                    result.skipped_steps
                );
            }
            if s == 0 {
                results.push(result.clone());
            }
            all.push((options.seed, result));
        }
    }
    if args.seeds > 1 {
        println!("\n{}", seeds_table(&all));
        let path = args.out.join("seeds.csv");
        if let Err(e) = std::fs::write(&path, seeds_csv(&all)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("wrote {}", path.display());
    }
    let table = results_table(&results);
    println!("\n{table}");
    let (csv_name, plot_name, time_name) = if args.sweep {
        ("sweep.csv", "sweep.svg", "sweep-time.svg")
    } else {
        ("results.csv", "curves.svg", "time.svg")
    };
    let csv_path = args.out.join(csv_name);
    if let Err(e) = std::fs::write(&csv_path, results_csv(&results)) {
        eprintln!("error: cannot write {}: {e}", csv_path.display());
        return ExitCode::from(1);
    }
    let plot_path = args.out.join(plot_name);
    let title = format!(
        "MNIST, MLP 784-{}-10, batch {}, {} train examples",
        args.hidden,
        args.batch_size,
        data.train.len()
    );
    if let Err(e) = plot::draw(&results, &title, &plot_path) {
        eprintln!("error: cannot draw {}: {e}", plot_path.display());
        return ExitCode::from(1);
    }
    if args.evals_per_epoch > 0 {
        let (evals_path, time_path) = (args.out.join("evals.csv"), args.out.join(time_name));
        if let Err(e) = std::fs::write(&evals_path, evals_csv(&results)) {
            eprintln!("error: cannot write {}: {e}", evals_path.display());
            return ExitCode::from(1);
        }
        if let Err(e) = plot::draw_time(&results, &title, &time_path) {
            eprintln!("error: cannot draw {}: {e}", time_path.display());
            return ExitCode::from(1);
        }
    }
    if args.sweep {
        for name in [
            "ngd-empirical",
            "ngd-sampled",
            "kfac-empirical",
            "kfac-sampled",
            "sgd",
            "adam",
        ] {
            if let Some(best) = results
                .iter()
                .filter(|r| r.spec.name() == name)
                .max_by(|a, b| {
                    a.epochs[0]
                        .test_accuracy
                        .total_cmp(&b.epochs[0].test_accuracy)
                })
            {
                println!(
                    "best {name}: {} ({:.2}% after epoch 1)",
                    best.describe(),
                    100.0 * best.epochs[0].test_accuracy
                );
            }
        }
    }
    if args.evals_per_epoch > 0 {
        println!(
            "wrote {}, {}, evals.csv and {time_name}",
            csv_path.display(),
            plot_path.display()
        );
    } else {
        println!("wrote {} and {}", csv_path.display(), plot_path.display());
    }
    ExitCode::SUCCESS
}
