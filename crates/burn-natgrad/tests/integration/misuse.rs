//! Edge cases of use with a documented, tested behaviour: a batch of one example, a batch
//! larger than the parameter count, and a model whose captured layers change between steps
//! (every step builds its factors afresh: nothing about the layers is kept).

use crate::common::*;
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{FisherKind, NaturalGradientConfig};

/// Every solver against the dense solve for `n` examples on a 4 → 3 softmax layer (15
/// parameters).
fn check(n: usize, fisher: FisherKind) {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 9, &device);
        let ng = NaturalGradientConfig::new().with_fisher(fisher).build();
        let out = {
            let _rng = rng_lock();
            let (mut cap, x) = ng.capture(tensor(3, [n, 4], 1.0, &device));
            let logits = model.logits2(x, &mut cap);
            ng.try_classification(&model, cap, logits, labels(4, n, 3, &device))
                .unwrap()
        };
        let factors = Factors::from_grads(&model, &out.grads).unwrap();
        let blocks: Vec<&Block> = factors.blocks.iter().collect();
        let g: Vec<f64> = (0..blocks.len())
            .flat_map(|i| host(factors.gradient(i)))
            .collect();
        let damping = 0.05;
        let dense = dense_direction(&blocks, g, damping);
        let what = format!("{name} n={n}");
        assert_solvers_match_dense(&model, &out.grads, fisher, &dense, damping, &what);
    }
}

#[test]
fn a_batch_of_one_example() {
    check(1, FisherKind::Empirical);
    check(1, FisherKind::Sampled { samples: 2 });
}

#[test]
fn a_batch_larger_than_the_parameter_count() {
    // 40 examples, 15 parameters: the Gram (40 × 40) is singular; the damping keeps it solvable.
    check(40, FisherKind::Empirical);
    check(40, FisherKind::Sampled { samples: 1 });
}

#[test]
fn the_captured_layers_may_change_between_steps() {
    for (name, device) in backends() {
        let (ng, mut optim) = NaturalGradientConfig::new().init();
        let small = Mlp::new(&[4, 3], true, 1, &device);
        let large = Mlp::new(&[4, 6, 3], true, 2, &device);
        for _ in 0..2 {
            let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
            let logits = small.logits2(x, &mut cap);
            let out = ng.classification(&small, cap, logits, labels(2, 6, 3, &device));
            let _ = ng.step(&mut optim, 0.1, small.clone(), out.grads);
            let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
            let logits = large.logits2(x, &mut cap);
            let out = ng.classification(&large, cap, logits, labels(2, 6, 3, &device));
            let _ = ng.step(&mut optim, 0.1, large.clone(), out.grads);
        }
        let stats = ng.stats();
        assert_eq!((stats.steps, stats.skipped), (4, 0), "{name}");
    }
}
