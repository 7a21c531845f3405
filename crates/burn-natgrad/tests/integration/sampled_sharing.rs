//! The sampled Fisher stacks the batch and `k` copies of its first `m` examples; a layer whose
//! input carries no gradient (the first) is computed once, on the batch, and with whole copies
//! (`m = N`) its factors keep one input row per example. Oracles: the same step with nothing
//! shared (a plain capture on the input stacked by hand, same sampled labels), and autodiff's
//! minibatch gradient on the data alone.

use crate::common::*;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use burn_natgrad::testing::{BlockFactors, Factors};
use burn_natgrad::{Capture, CgConfig, FisherKind, NaturalGradient, NaturalGradientConfig, Solver};

const N: usize = 8;
const SAMPLES: usize = 2;

type Forward = fn(&Mlp, Tensor<2>, &mut Capture) -> Tensor<2>;

fn mlp(m: &Mlp, x: Tensor<2>, cap: &mut Capture) -> Tensor<2> {
    m.logits2(x, cap)
}

/// Layer 0 applied to the data (input without gradient: shared) and again to a hidden tensor
/// (not shared): the capture merges the two uses along `T`.
fn reused(m: &Mlp, x: Tensor<2>, cap: &mut Capture) -> Tensor<2> {
    let h = relu(cap.linear(&m.layers[0], x));
    let h = relu(cap.linear(&m.layers[0], h));
    cap.linear(&m.layers[1], h)
}

/// Factors and directions of one sampled step; `shared`: through `NaturalGradient::capture`,
/// otherwise through a plain capture on the batch stacked by hand.
fn step<const D: usize>(
    ng: &NaturalGradient,
    model: &Mlp,
    forward: impl Fn(&Mlp, Tensor<D>, &mut Capture) -> Tensor<2>,
    x: &Tensor<D>,
    y: &Tensor<1, Int>,
    shared: bool,
) -> (Factors, Vec<f64>) {
    let device = x.device();
    let _rng = rng_lock();
    device.seed(11);
    let (mut cap, xs) = if shared {
        ng.capture(x.clone())
    } else {
        let m = ng.curvature_rows(x.dims()[0]);
        let mut parts = vec![x.clone()];
        parts.extend(std::iter::repeat_n(x.clone().narrow(0, 0, m), SAMPLES));
        (Capture::new(), Tensor::cat(parts, 0))
    };
    let logits = forward(model, xs, &mut cap);
    let out = ng
        .try_classification(model, cap, logits, y.clone())
        .unwrap();
    let factors = Factors::from_grads(model, &out.grads).unwrap();
    let pre = ng.precondition(model, 0.1, &out.grads).unwrap();
    let directions = pre.directions.expect("finite step");
    let mut d = Vec::new();
    model.visit(&mut Gather {
        grads: &directions,
        out: &mut d,
    });
    (factors, d)
}

/// Autodiff's gradient of the mean cross-entropy on the data, in module order.
fn autodiff_gradient(model: &Mlp, forward: Forward, x: &Tensor<2>, y: &Tensor<1, Int>) -> Vec<f64> {
    let logits = forward(model, x.clone(), &mut Capture::disabled());
    let loss = CrossEntropyLossConfig::new()
        .init(&x.device())
        .forward(logits, y.clone());
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut g = Vec::new();
    model.visit(&mut Gather {
        grads: &grads,
        out: &mut g,
    });
    g
}

fn input_rows(factors: &BlockFactors) -> usize {
    match factors {
        BlockFactors::Weight { input, .. } => input.dims()[0],
        other => panic!("expected a weight block, got {other:?}"),
    }
}

/// `layer0_alone`: layer 0 is used once, on the data (so its factors share the input when the
/// copies are whole).
fn check(
    forward: Forward,
    layer0_alone: bool,
    sizes: &[usize],
    solver: Solver,
    curvature: Option<usize>,
    device: &Device,
    name: &str,
) {
    let model = Mlp::new(sizes, true, 17, device);
    let ng = NaturalGradientConfig::new()
        .with_fisher(FisherKind::Sampled { samples: SAMPLES })
        .with_curvature(full(solver, false))
        .with_damping(0.1)
        .with_curvature_batch(curvature)
        .build();
    let x = tensor(3, [N, sizes[0]], 1.0, device);
    let y = labels(4, N, *sizes.last().unwrap(), device);
    let (shared, d_shared) = step(&ng, &model, forward, &x, &y, true);
    let (plain, d_plain) = step(&ng, &model, forward, &x, &y, false);

    // Nothing is shared without `NaturalGradient::capture`; with it, exactly the first layer
    // of the plain MLP.
    let m = ng.curvature_rows(N) * SAMPLES;
    for b in &plain.blocks {
        let data = b.data.as_ref().expect("sampled blocks carry data rows");
        assert_eq!(b.factors.rows(), m, "{name} {}", b.path);
        assert!(!data.shares_input, "{name} {}", b.path);
    }
    if layer0_alone && curvature.is_some() {
        // Copies of the first m examples only: layer 0 runs once, on the batch, but its factors
        // keep every row (the Fisher's and the data's), as the unshared step's do.
        assert_eq!(input_rows(&shared.blocks[0].factors), m, "{name}: layer 0");
        assert!(!shared.blocks[0].data.as_ref().unwrap().shares_input);
    } else if layer0_alone {
        assert_eq!(
            input_rows(&shared.blocks[0].factors),
            N,
            "{name}: layer 0 shared"
        );
        assert!(shared.blocks[0].data.as_ref().unwrap().shares_input);
        assert_eq!(
            input_rows(&shared.blocks[2].factors),
            m,
            "{name}: layer 1 not shared"
        );
    }

    // Same Fisher rows, same gradients, same directions.
    let grad_oracle = autodiff_gradient(&model, forward, &x, &y);
    let mut grads = Vec::new();
    for (i, (a, b)) in shared.blocks.iter().zip(&plain.blocks).enumerate() {
        let rows = rel_err(&host(a.factors.dense_rows()), &host(b.factors.dense_rows()));
        assert!(
            rows <= 1e-5,
            "{name} {}: Fisher rows differ by {rows:e}",
            a.path
        );
        let g = host(shared.gradient(i));
        let g_plain = host(plain.gradient(i));
        assert!(
            rel_err(&g, &g_plain) <= 1e-5,
            "{name} {}: gradients",
            a.path
        );
        grads.extend(g);
    }
    let grad_err = rel_err(&grads, &grad_oracle);
    assert!(
        grad_err <= 1e-5,
        "{name}: gradient vs autodiff {grad_err:e}"
    );
    let dir_err = rel_err(&d_shared, &d_plain);
    assert!(
        dir_err <= 1e-4,
        "{name} {solver:?}: directions differ by {dir_err:e}"
    );
}

#[test]
fn shared_first_layer_matches_the_unshared_step() {
    for (name, device) in backends() {
        for solver in solvers(CgConfig::new()) {
            check(mlp, true, &[6, 5, 4, 3], solver, None, &device, name);
        }
    }
}

/// Copies of the first 3 of 8 examples: the first layer still runs once, on the batch.
#[test]
fn shared_first_layer_with_a_curvature_batch_matches_the_unshared_step() {
    for (name, device) in backends() {
        for solver in solvers(CgConfig::new()) {
            check(mlp, true, &[6, 5, 4, 3], solver, Some(3), &device, name);
        }
        check(
            reused,
            false,
            &[5, 5, 3],
            Solver::Gram,
            Some(3),
            &device,
            name,
        );
    }
}

#[test]
fn reused_layer_with_shared_and_unshared_uses_matches_the_unshared_step() {
    for (name, device) in backends() {
        check(reused, false, &[5, 5, 3], Solver::Gram, None, &device, name);
    }
}

/// Sequence input `[N, T, in]` (`T = 3`): the shared first layer's factors are periodic in the
/// example and summed over `T`; same oracle as above.
#[test]
fn shared_first_layer_with_sequence_input_matches_the_unshared_step() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 23, &device);
        let ng = NaturalGradientConfig::new()
            .with_fisher(FisherKind::Sampled { samples: SAMPLES })
            .with_damping(0.1)
            .build();
        let x = tensor(5, [N * 3, 4], 1.0, &device).reshape([N, 3, 4]);
        let y = labels(6, N, 3, &device);
        let forward = |m: &Mlp, x: Tensor<3>, cap: &mut Capture| m.logits3(x, cap);
        let (shared, d_shared) = step(&ng, &model, forward, &x, &y, true);
        let (_, d_plain) = step(&ng, &model, forward, &x, &y, false);
        assert_eq!(
            input_rows(&shared.blocks[0].factors),
            N,
            "{name}: layer 0 shared"
        );
        let err = rel_err(&d_shared, &d_plain);
        assert!(err <= 1e-4, "{name}: directions differ by {err:e}");
    }
}
