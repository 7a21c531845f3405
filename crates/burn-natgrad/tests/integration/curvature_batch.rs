//! The curvature batch (`NaturalGradientConfig::curvature_batch`): the Fisher from the first `m`
//! examples, the gradient from all `N`, on every backend.
//!
//! Oracles: the per-example loop run on the first `m` examples alone gives the Fisher
//! `(1/m) Σ_{i<m} gᵢgᵢᵀ`, and run on the whole batch the gradient; the solvers' agreement with
//! the dense solve is in `solvers.rs`.

use crate::common::*;
use burn::tensor::{Device, Int, Tensor};
use burn_natgrad::testing::dense_fisher;
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{
    per_example_classification, Capture, FisherKind, NaturalGradient, NaturalGradientConfig,
    NaturalGradientOutput,
};

const N: usize = 8;
const M: usize = 3;

/// A 4-6-3 MLP with bias, a batch of `N` inputs and their labels, all seeded from `seed`.
fn problem(seed: u64, device: &Device) -> (Mlp, Tensor<2>, Tensor<1, Int>) {
    (
        Mlp::new(&[4, 6, 3], true, seed, device),
        tensor(seed + 2, [N, 4], 1.0, device),
        labels(seed + 6, N, 3, device),
    )
}

fn probe(
    ng: &NaturalGradient,
    model: &Mlp,
    x: &Tensor<2>,
    y: &Tensor<1, Int>,
) -> NaturalGradientOutput {
    let (mut cap, xc) = ng.capture(x.clone());
    let logits = model.logits2(xc, &mut cap);
    ng.try_classification(model, cap, logits, y.clone())
        .unwrap()
}

fn looped(
    ng: &NaturalGradient,
    model: &Mlp,
    x: Tensor<2>,
    y: Tensor<1, Int>,
) -> NaturalGradientOutput {
    per_example_classification(ng, model, x, y, |m: &Mlp, x| {
        m.logits2(x, &mut Capture::disabled())
    })
    .unwrap()
}

/// The dense Fisher `UᵀU` and the gradient, block after block.
fn fisher_and_gradient(model: &Mlp, out: &NaturalGradientOutput) -> (Vec<f64>, Vec<f64>, usize) {
    let factors = Factors::from_grads(model, &out.grads).unwrap();
    let blocks: Vec<&Block> = factors.blocks.iter().collect();
    let g: Vec<f64> = (0..factors.blocks.len())
        .flat_map(|i| host(factors.gradient(i)))
        .collect();
    (host(dense_fisher(&blocks)), g, factors.rows())
}

#[test]
fn empirical_curvature_batch_fisher_is_the_first_examples_and_gradient_the_whole_batch() {
    for (name, device) in backends() {
        let (model, x, y) = problem(41, &device);
        let whole = NaturalGradientConfig::new().build();
        let curv = NaturalGradientConfig::new()
            .with_curvature_batch(Some(M))
            .build();

        let (fisher, grad, rows) = fisher_and_gradient(&model, &probe(&curv, &model, &x, &y));
        assert_eq!(
            rows, M,
            "{name}: the Fisher has one row per curvature example"
        );
        // Oracles: the loop over the first M examples (its Fisher), over all N (its gradient).
        let first = looped(
            &whole,
            &model,
            x.clone().narrow(0, 0, M),
            y.clone().narrow(0, 0, M),
        );
        let (fisher_first, _, _) = fisher_and_gradient(&model, &first);
        let all = looped(&whole, &model, x.clone(), y.clone());
        let (fisher_all, grad_all, _) = fisher_and_gradient(&model, &all);
        let err_f = rel_err(&fisher, &fisher_first);
        let err_g = rel_err(&grad, &grad_all);
        assert!(err_f <= 1e-5, "{name}: Fisher rel err {err_f:e}");
        assert!(err_g <= 1e-5, "{name}: gradient rel err {err_g:e}");
        // The whole batch's Fisher is another matrix: the comparison can fail.
        assert!(rel_err(&fisher_all, &fisher_first) > 0.05);

        // The per-example loop with the same curvature batch agrees.
        let (fisher_loop, grad_loop, rows_loop) =
            fisher_and_gradient(&model, &looped(&curv, &model, x.clone(), y.clone()));
        assert_eq!(rows_loop, M);
        assert!(rel_err(&fisher_loop, &fisher_first) <= 1e-5, "{name}");
        assert!(rel_err(&grad_loop, &grad_all) <= 1e-5, "{name}");
    }
}

#[test]
fn sampled_curvature_batch_draws_labels_for_the_first_examples_only() {
    let k = 2;
    for (name, device) in backends() {
        let (model, x, y) = problem(51, &device);
        let ng = NaturalGradientConfig::new()
            .with_fisher(FisherKind::Sampled { samples: k })
            .with_curvature_batch(Some(M))
            .build();
        let (cap, xc) = ng.capture(x.clone());
        assert_eq!(
            xc.dims(),
            [N + k * M, 4],
            "{name}: the batch, then k copies of M rows"
        );
        drop(cap);
        let out = {
            let _rng = rng_lock();
            device.seed(5);
            probe(&ng, &model, &x, &y)
        };
        assert_eq!(out.logits.dims(), [N, 3]);
        let (_, grad, rows) = fisher_and_gradient(&model, &out);
        assert_eq!(rows, k * M, "{name}: k Fisher rows per curvature example");
        let all = looped(
            &NaturalGradientConfig::new().build(),
            &model,
            x.clone(),
            y.clone(),
        );
        let (_, grad_all, _) = fisher_and_gradient(&model, &all);
        let err = rel_err(&grad, &grad_all);
        assert!(err <= 1e-5, "{name}: gradient rel err {err:e}");
    }
}

/// A curvature batch at least as large as the batch is the whole batch: the same step.
#[test]
fn curvature_batch_covering_the_batch_changes_nothing() {
    for (name, device) in backends() {
        let (model, x, y) = problem(61, &device);
        for fisher in [FisherKind::Empirical, FisherKind::Sampled { samples: 1 }] {
            let direction = |curvature: Option<usize>| {
                let ng = NaturalGradientConfig::new()
                    .with_fisher(fisher)
                    .with_curvature_batch(curvature)
                    .build();
                let out = {
                    let _rng = rng_lock();
                    device.seed(9);
                    probe(&ng, &model, &x, &y)
                };
                directions_of(&ng, &model, 1.0, &out.grads)
            };
            let none = direction(None);
            assert_eq!(direction(Some(N)), none, "{name} {fisher:?}");
            assert_eq!(direction(Some(10 * N)), none, "{name} {fisher:?}");
            assert_ne!(direction(Some(M)), none, "{name} {fisher:?}");
        }
    }
}
