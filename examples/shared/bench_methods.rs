//! The benchmark's methods (`examples/bench.rs`): their names, and the natural-gradient
//! optimizer each name stands for.

use burn_natgrad::{
    CgConfig, Curvature, FisherKind, KfacConfig, KfacInverse, NaturalGradient,
    NaturalGradientConfig, Solver,
};

/// Every method the benchmark knows, in the order of its tables.
pub const METHODS: [&str; 24] = [
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
    "kfac-empirical-f50-r8",
    "factors",
    "forward-backward",
];

/// The natural-gradient methods; a `-cbM` suffix estimates the Fisher on a curvature batch of
/// the first `M` examples, and `-rR` gives wide KFAC factors rank-`R` inverses.
pub fn natgrad(method: &str) -> Option<NaturalGradient> {
    let (method, curvature) = match method.rsplit_once("-cb") {
        Some((base, m)) => (base, Some(m.parse().expect("curvature batch"))),
        None => (method, None),
    };
    let (method, inverse) = match method.rsplit_once("-r") {
        Some((base, r)) if r.chars().all(|c| c.is_ascii_digit()) => (
            base,
            KfacInverse::LowRank {
                rank: r.parse().expect("rank"),
            },
        ),
        _ => (method, KfacInverse::Dense),
    };
    let c = NaturalGradientConfig::new()
        .with_damping(1.0)
        .with_curvature_batch(curvature);
    let cg = CgConfig::new().with_max_iters(10).with_check_every(0);
    let kfac = KfacConfig::new().with_inverse(inverse);
    let c = match method {
        "ngd-empirical-gram" => c,
        "ngd-empirical-cg-sample" => c.with_curvature(Curvature::full(Solver::CgSample(cg))),
        "ngd-empirical-cg-param" => c.with_curvature(Curvature::full(Solver::CgParam(cg))),
        "ngd-sampled-1" => c.with_fisher(FisherKind::Sampled { samples: 1 }),
        "ngd-sampled-4" => c.with_fisher(FisherKind::Sampled { samples: 4 }),
        // KFAC with its usual settings (inverses every 10 steps), and inverting every step.
        "kfac-empirical" => c.with_curvature(Curvature::Kfac(kfac)),
        "kfac-sampled-1" => c
            .with_curvature(Curvature::Kfac(kfac))
            .with_fisher(FisherKind::Sampled { samples: 1 }),
        "kfac-empirical-inv1" => c.with_curvature(Curvature::Kfac(kfac.with_inv_update_steps(1))),
        // Factors every K steps, inverses every `S` steps: f5 every 10 (as `kfac-empirical`),
        // f10 every 50, f20 and f50 every 100. The steps in between reuse the inverses on a
        // plain backward pass.
        factors => {
            let (period, inverses) = match factors.strip_prefix("kfac-empirical-f")? {
                "5" => (5, 10),
                "10" => (10, 50),
                "20" => (20, 100),
                "50" => (50, 100),
                _ => return None,
            };
            c.with_curvature(Curvature::Kfac(
                kfac.with_factor_update_steps(period)
                    .with_inv_update_steps(inverses),
            ))
        }
    };
    Some(c.build())
}
