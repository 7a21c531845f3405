//! The benchmark's methods (`examples/bench.rs`): their names, and the natural-gradient
//! optimizer each name stands for.

use burn_natgrad::{CurvatureKind, FisherKind, NaturalGradient, NaturalGradientConfig, SolverKind};

/// Every method the benchmark knows, in the order of its tables.
pub const METHODS: [&str; 26] = [
    "sgd",
    "adam",
    "ngd-empirical-gram",
    "ngd-empirical-cg-sample",
    "ngd-empirical-cg-param",
    "ngd-sampled-1",
    "ngd-sampled-4",
    "ngd-empirical-gram-cb32",
    "ngd-sampled-1-cb32",
    "kfac-empirical",
    "kfac-sampled-1",
    "kfac-empirical-inv1",
    "kfac-empirical-f5",
    "kfac-empirical-f10",
    "kfac-empirical-f10-r32",
    "kfac-empirical-f10-r16",
    "kfac-empirical-f20-r16",
    "kfac-empirical-f50-r16",
    "kfac-empirical-f50-r16-cb128",
    "kfac-empirical-f50-r4",
    "kfac-empirical-f50-r4-cb128",
    "kfac-empirical-f50-r4-sk",
    "kfac-empirical-f50-r4-sk-cb128",
    "kfac-empirical-f50-r8",
    "factors",
    "forward-backward",
];

/// The natural-gradient methods; a `-cbM` suffix estimates the Fisher on a curvature batch of
/// the first `M` examples, `-rR` gives wide KFAC factors rank-`R` inverses, and `-sk` (before
/// `-cbM`) keeps their input factors as sketches (`kfac_sketch`).
pub fn natgrad(method: &str) -> Option<NaturalGradient> {
    let (method, curvature) = match method.rsplit_once("-cb") {
        Some((base, m)) => (base, Some(m.parse().expect("curvature batch"))),
        None => (method, None),
    };
    let (method, sketch) = match method.strip_suffix("-sk") {
        Some(base) => (base, true),
        None => (method, false),
    };
    let (method, rank) = match method.rsplit_once("-r") {
        Some((base, r)) if r.chars().all(|c| c.is_ascii_digit()) => {
            (base, Some(r.parse().expect("rank")))
        }
        _ => (method, None),
    };
    let c = NaturalGradientConfig::new()
        .with_damping(1.0)
        .with_curvature_batch(curvature)
        .with_kfac_rank(rank)
        .with_kfac_sketch(sketch);
    let c = match method {
        "ngd-empirical-gram" => c,
        "ngd-empirical-cg-sample" => c
            .with_solver(SolverKind::CgSample)
            .with_cg_max_iters(10)
            .with_cg_check_every(0),
        "ngd-empirical-cg-param" => c
            .with_solver(SolverKind::CgParam)
            .with_cg_max_iters(10)
            .with_cg_check_every(0),
        "ngd-sampled-1" => c.with_fisher(FisherKind::Sampled { samples: 1 }),
        "ngd-sampled-4" => c.with_fisher(FisherKind::Sampled { samples: 4 }),
        // KFAC with its usual settings (inverses every 10 steps), and inverting every step.
        "kfac-empirical" => c.with_curvature(CurvatureKind::kfac()),
        "kfac-sampled-1" => c
            .with_curvature(CurvatureKind::kfac())
            .with_fisher(FisherKind::Sampled { samples: 1 }),
        "kfac-empirical-inv1" => c.with_curvature(CurvatureKind::Kfac {
            decay: 0.95,
            inverse_period: 1,
        }),
        // Factors every K steps, inverses every `K · inverse_period` steps: f5 every 10 (as
        // `kfac-empirical`), f10 every 50, f20 and f50 every 100. The steps in between reuse
        // the inverses on a plain backward pass.
        factors => {
            let (period, inverse_period) = match factors.strip_prefix("kfac-empirical-f")? {
                "5" => (5, 2),
                "10" => (10, 5),
                "20" => (20, 5),
                "50" => (50, 2),
                _ => return None,
            };
            c.with_curvature(CurvatureKind::Kfac {
                decay: 0.95,
                inverse_period,
            })
            .with_kfac_factor_period(period)
        }
    };
    Some(c.build())
}
