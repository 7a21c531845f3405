//! Every bad input gets a clear error that says what to change, and loses nothing.

use crate::common::*;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{
    Capture, CgConfig, Curvature, FisherKind, KfacConfig, KfacInverse, NatGradError,
    NaturalGradient, NaturalGradientConfig, Solver,
};

fn config_error(config: NaturalGradientConfig) -> String {
    config
        .try_build()
        .expect_err("invalid config accepted")
        .to_string()
}

#[test]
fn invalid_configs_are_rejected_before_training() {
    for damping in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let msg = config_error(NaturalGradientConfig::new().with_damping(damping));
        assert!(msg.contains("`damping`") && msg.contains("> 0"), "{msg}");
    }
    for kl in [0.0, -0.5, f64::NAN] {
        let msg = config_error(NaturalGradientConfig::new().with_kl_max(Some(kl)));
        assert!(msg.contains("`kl_max`"), "{msg}");
    }
    let msg =
        config_error(NaturalGradientConfig::new().with_fisher(FisherKind::Sampled { samples: 0 }));
    assert!(
        msg.contains("`fisher`") && msg.contains("at least one sample"),
        "{msg}"
    );
    let cg = CgConfig::new();
    for solver in [Solver::CgSample, Solver::CgParam] {
        let msg = config_error(
            NaturalGradientConfig::new().with_curvature(full(solver(cg.with_max_iters(0)), false)),
        );
        assert!(msg.contains("`curvature.solver.max_iters`"), "{msg}");
        let msg = config_error(
            NaturalGradientConfig::new()
                .with_curvature(full(solver(cg.with_tolerance(f64::NAN)), false)),
        );
        assert!(msg.contains("`curvature.solver.tolerance`"), "{msg}");
    }
    let msg = config_error(NaturalGradientConfig::new().with_momentum(Some(
        burn::optim::momentum::MomentumConfig::new().with_momentum(f64::NAN),
    )));
    assert!(msg.contains("`momentum.momentum`"), "{msg}");
    let msg = config_error(
        NaturalGradientConfig::new()
            .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(-1.0))),
    );
    assert!(msg.contains("`weight_decay.penalty`"), "{msg}");
    let msg = config_error(NaturalGradientConfig::new().with_curvature_batch(Some(0)));
    assert!(
        msg.contains("`curvature_batch`") && msg.contains("at least 1"),
        "{msg}"
    );
    let kfac = |k: KfacConfig| NaturalGradientConfig::new().with_curvature(Curvature::Kfac(k));
    let msg = config_error(kfac(KfacConfig::new().with_inv_update_steps(0)));
    assert!(msg.contains("`curvature.inv_update_steps`"), "{msg}");
    let msg = config_error(kfac(KfacConfig::new().with_factor_update_steps(0)));
    assert!(msg.contains("`curvature.factor_update_steps`"), "{msg}");
    // Inverses are formed at factor updates: their period is a multiple of the factors'.
    let msg = config_error(kfac(
        KfacConfig::new()
            .with_factor_update_steps(10)
            .with_inv_update_steps(25),
    ));
    assert!(
        msg.contains("`curvature.inv_update_steps`") && msg.contains("multiple"),
        "{msg}"
    );
    for decay in [1.0, -0.1, f64::NAN] {
        let msg = config_error(kfac(KfacConfig::new().with_factor_decay(decay)));
        assert!(msg.contains("`curvature.factor_decay`"), "{msg}");
    }
    assert!(kfac(
        KfacConfig::new()
            .with_factor_decay(0.0)
            .with_inv_update_steps(1)
    )
    .try_build()
    .is_ok());
    let low_rank = |rank| KfacConfig::new().with_inverse(KfacInverse::LowRank { rank });
    let msg = config_error(kfac(low_rank(0)));
    assert!(
        msg.contains("`curvature.inverse.rank`") && msg.contains("at least 1"),
        "{msg}"
    );
    assert!(kfac(low_rank(16)).try_build().is_ok());
    assert!(NaturalGradientConfig::kfac().try_build().is_ok());
    assert!(NaturalGradientConfig::gram().try_build().is_ok());
    // build() and init() panic with the same message.
    let msg = panic_message(|| {
        NaturalGradientConfig::new().with_damping(0.0).init();
    });
    assert!(msg.contains("`damping`"), "{msg}");
}

#[test]
fn gradients_without_factors_say_what_to_change() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new().build();
        let logits = model.logits2(tensor(1, [6, 4], 1.0, &device), &mut Capture::disabled());
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, labels(2, 6, 3, &device));
        let plain = GradientsParams::from_grads(loss.backward(), &model);
        let err = ng.precondition(&model, 0.1, &plain).unwrap_err();
        assert_eq!(err, NatGradError::MissingFactors, "{name}");
        let msg = err.to_string();
        assert!(
            msg.contains("grads_accumulation") && msg.contains("one device"),
            "{msg}"
        );

        // What gradient accumulation hands to optimize: the factors are gone.
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        let mut acc = GradientsAccumulator::<Mlp>::new();
        acc.accumulate(&model, out.grads);
        let accumulated = acc.grads();
        assert_eq!(
            ng.precondition(&model, 0.1, &accumulated).unwrap_err(),
            NatGradError::MissingFactors
        );
        let mut optim = ng.module_optimizer();
        let before = host(model.layers[0].weight.val().inner());
        let msg = panic_message(|| {
            ng.step(&mut optim, 0.1, model.clone(), accumulated);
        });
        assert!(msg.contains("no per-example factors"), "{msg}");
        assert_eq!(
            host(model.layers[0].weight.val().inner()),
            before,
            "nothing lost"
        );
    }
}

#[test]
fn raw_gradients_are_refused_by_the_per_tensor_part() {
    // What the Learner's default `optimize_multi` (multi-device) or a missing `optimize`
    // override would do: hand raw gradients to the ModuleOptimizer.
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let (ng, mut optim) = NaturalGradientConfig::new().init();
        let logits = model.logits2(tensor(1, [6, 4], 1.0, &device), &mut Capture::disabled());
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, labels(2, 6, 3, &device));
        let plain = GradientsParams::from_grads(loss.backward(), &model);
        let msg = panic_message(|| {
            optim.step(0.1, model.clone(), plain);
        });
        assert!(
            msg.contains("raw gradients") && msg.contains("optimize_multi"),
            "{name}: {msg}"
        );
        // The same optimizer still works through the natural-gradient step.
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        let _ = ng.step(&mut optim, 0.1, model, out.grads);
        assert_eq!(ng.stats().steps, 1);
    }
}

#[test]
fn uncaptured_parameters_are_named() {
    for (_, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new().build();
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        // The second layer bypasses the capture.
        let h = burn::tensor::activation::relu(cap.linear(&model.layers[0], x));
        let logits = model.layers[1].forward(h);
        let err = ng
            .try_classification(&model, cap, logits, labels(2, 6, 3, &device))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("layers.1.weight")
                && msg.contains("layers.1.bias")
                && msg.contains("Capture::linear"),
            "{msg}"
        );
        assert!(!msg.contains("layers.0"), "{msg}");
    }
}

#[test]
fn bad_targets_and_shapes_are_reported() {
    for (_, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new()
            .with_fisher(FisherKind::Sampled { samples: 2 })
            .build();
        // Labels out of range.
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let bad = labels(2, 6, 3, &device).add_scalar(5);
        let msg = ng
            .try_classification(&model, cap, logits, bad)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("targets must lie in 0..3"), "{msg}");
        // Forward pass on the raw batch instead of the stacked one.
        let unstacked = |ng: &NaturalGradient| {
            let mut cap = Capture::new();
            let logits = model.logits2(tensor(1, [6, 4], 1.0, &device), &mut cap);
            ng.try_classification(&model, cap, logits, labels(2, 6, 3, &device))
                .unwrap_err()
                .to_string()
        };
        let msg = unstacked(&ng);
        assert!(
            msg.contains("NaturalGradient::capture") && msg.contains("needs 18 rows"),
            "{msg}"
        );
        // The same with a curvature batch of 2: the batch and 2 copies of 2 rows.
        let curv = NaturalGradientConfig::new()
            .with_fisher(FisherKind::Sampled { samples: 2 })
            .with_curvature_batch(Some(2))
            .build();
        let msg = unstacked(&curv);
        assert!(msg.contains("needs 10 rows"), "{msg}");
        // A disabled capture.
        let logits = model.logits2(tensor(1, [6, 4], 1.0, &device), &mut Capture::disabled());
        let msg = NaturalGradientConfig::new()
            .build()
            .try_classification(
                &model,
                Capture::disabled(),
                logits,
                labels(2, 6, 3, &device),
            )
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("recorded no layer") && msg.contains("burn_natgrad::nn::{Linear, Conv2d"),
            "{msg}"
        );
        // Rank-1 input to the capture.
        let msg = panic_message(|| {
            Capture::new().linear(&model.layers[0], Tensor::<1>::ones([4], &device));
        });
        assert!(msg.contains("rank >= 2"), "{msg}");
    }
}

#[test]
fn non_finite_direction_skips_the_step() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 1, &device);
        let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for (solver, bad) in solvers(CgConfig::new())
            .into_iter()
            .flat_map(|s| bad.map(|b| (s, b)))
        {
            let ng = NaturalGradientConfig::new()
                .with_curvature(full(solver, false))
                .build();
            // One NaN or infinity in the input batch: it reaches the loss, the factors and the
            // direction.
            let mut values = values(1, 24);
            values[7] = bad;
            let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(values, [6, 4]), &device);
            let (mut cap, x) = ng.capture(x);
            let logits = model.logits2(x, &mut cap);
            let grads = ng
                .classification(&model, cap, logits, labels(2, 6, 3, &device))
                .grads;
            let before: Vec<Vec<f64>> = model
                .layers
                .iter()
                .map(|l| host(l.weight.val().inner()))
                .collect();
            let mut optim = ng.module_optimizer();
            let after = ng.step(&mut optim, 0.1, model.clone(), grads);
            let after: Vec<Vec<f64>> = after
                .layers
                .iter()
                .map(|l| host(l.weight.val().inner()))
                .collect();
            assert_eq!(
                before, after,
                "{name} {solver:?}: weights must be untouched"
            );
            assert!(
                optim.to_record().is_empty(),
                "{name}: no optimizer state was created"
            );
            assert_eq!(ng.stats().skipped, 1, "{name} {solver:?}");
            assert_eq!(ng.stats().steps, 0);
        }
    }
}

#[test]
fn the_exact_fisher_needs_the_softmax_width() {
    let err = NaturalGradientConfig::new()
        .with_fisher(FisherKind::Exact { classes: 1 })
        .try_build()
        .unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new()
            .with_fisher(FisherKind::Exact { classes: 5 })
            .build();
        // The capture stacks 5 copies; the logits are 3 wide.
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let err = ng
            .try_classification(&model, cap, logits, labels(2, 6, 3, &device))
            .unwrap_err();
        assert!(
            err.to_string().contains("the logits have 3 columns"),
            "{name}: {err}"
        );
    }
}

#[test]
fn trust_region_bounds_the_predicted_kl() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new()
            .with_damping(1e-3)
            .with_kl_max(Some(1e-3))
            .build();
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        let lr = 1.0;
        let pre = ng.precondition(&model, lr, &out.grads).unwrap();
        assert!(
            pre.scale < 1.0,
            "{name}: the trust region should bind at λ = 1e-3"
        );
        // The predicted KL of the applied (scaled) direction, from the dense Fisher of the
        // factors: it must sit on the bound.
        let factors = Factors::from_grads(&model, &out.grads).unwrap();
        let blocks: Vec<&Block> = factors.blocks.iter().collect();
        let d = gathered(&model, pre.directions.as_ref().expect("a finite step"));
        let kl = 0.5 * lr * lr * dense_quadratic(&blocks, &d);
        assert!((kl - 1e-3).abs() < 1e-5, "{name}: predicted KL {kl}");
        // Applied, the step records the same KL.
        let mut optim = ng.module_optimizer();
        let _ = ng.apply(&mut optim, model, pre);
        assert!((ng.stats().last_kl - 1e-3).abs() < 1e-6);
    }
}
