//! Adaptive damping (Levenberg–Marquardt): the new `λ` from a reduction ratio computed here from
//! the dense Fisher's quadratic model, the next direction solved with it, its state through the
//! optimizer record, and its configuration errors.

use crate::common::*;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{AdaptiveDampingConfig, NaturalGradient, NaturalGradientConfig};

const LR: f64 = 0.5;

fn adaptive(period: usize) -> NaturalGradient {
    NaturalGradientConfig::new()
        .with_damping(0.2)
        .with_adaptive_damping(Some(
            AdaptiveDampingConfig::new()
                .with_period(period)
                .with_decay(0.9),
        ))
        .build()
}

fn batch(seed: u64, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    (
        tensor(seed, [8, 4], 1.0, device),
        labels(seed + 1, 8, 3, device),
    )
}

/// The captured gradients and the batch loss.
fn grads(ng: &NaturalGradient, model: &Mlp, seed: u64, device: &Device) -> (GradientsParams, f64) {
    let (x, y) = batch(seed, device);
    let (mut cap, x) = ng.capture(x);
    let logits = model.logits2(x, &mut cap);
    let out = ng.classification(model, cap, logits, y);
    (out.grads, out.loss.into_scalar::<f64>())
}

/// The minibatch gradient of every block, flattened in block order (host, f64).
fn host_gradient(factors: &Factors) -> Vec<f64> {
    (0..factors.blocks.len())
        .flat_map(|i| host(factors.gradient(i)))
        .collect()
}

fn loss(model: &Mlp, seed: u64, device: &Device) -> f64 {
    let (x, y) = batch(seed, device);
    let logits = model.logits2(x, &mut burn_natgrad::Capture::disabled());
    CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits, y)
        .into_scalar::<f64>()
}

#[test]
fn the_damping_follows_the_reduction_ratio_of_the_quadratic_model() {
    for (name, device) in backends() {
        let ng = adaptive(1);
        let mut optim = ng.module_optimizer();
        let model = Mlp::new(&[4, 6, 3], true, 21, &device);
        let (g, before) = grads(&ng, &model, 3, &device);
        // The predicted change of the dense quadratic model, q(δ) = gᵀδ + ½ δᵀ(F + λI)δ.
        let factors = Factors::from_grads(&model, &g).unwrap();
        let blocks: Vec<&Block> = factors.blocks.iter().collect();
        let gradient = host_gradient(&factors);
        let d = directions_of(&ng, &model, LR, &g);
        let delta: Vec<f64> = d.iter().map(|v| -LR * v).collect();
        let quad =
            dense_quadratic(&blocks, &delta) + 0.2 * delta.iter().map(|v| v * v).sum::<f64>();
        let predicted = gradient.iter().zip(&delta).map(|(a, b)| a * b).sum::<f64>() + 0.5 * quad;
        assert!(!ng.adaptation_due(), "{name}: nothing applied yet");
        let model = ng.step(&mut optim, LR, model, g);
        assert!(ng.adaptation_due(), "{name}: period 1");
        let after = loss(&model, 3, &device);
        let rho = (after - before) / predicted;
        let omega = 0.9;
        let expected = if rho > 0.75 {
            0.2 * omega
        } else if rho < 0.25 {
            0.2 / omega
        } else {
            0.2
        };
        let got = ng.adapt_damping(before, after).expect("an adaptation");
        assert!(
            (got.rho - rho).abs() <= 1e-4 * rho.abs().max(1.0),
            "{name}: ρ = {} against the dense model's {rho}",
            got.rho
        );
        assert!(
            (got.damping - expected).abs() < 1e-9 && (ng.damping() - expected).abs() < 1e-9,
            "{name}: ρ = {rho}: damping {}, expected {expected}",
            got.damping
        );
        assert!(!ng.adaptation_due() && ng.adapt_damping(before, after).is_none());
        // The next direction is solved with the new damping.
        let (g2, _) = grads(&ng, &model, 5, &device);
        let factors = Factors::from_grads(&model, &g2).unwrap();
        let blocks: Vec<&Block> = factors.blocks.iter().collect();
        let gradient = host_gradient(&factors);
        let err = rel_err(
            &directions_of(&ng, &model, LR, &g2),
            &dense_direction(&blocks, gradient, expected),
        );
        assert!(
            err <= 1e-4,
            "{name}: direction at the new damping, rel err {err:e}"
        );
    }
}

/// With period 3 only every third step asks for the loss after it; the damping in force is
/// saved in the record and read back by a fresh optimizer.
#[test]
fn the_damping_is_due_every_period_and_travels_in_the_record() {
    for (name, device) in backends() {
        let ng = adaptive(3);
        let mut optim = ng.module_optimizer();
        let mut model = Mlp::new(&[4, 6, 3], true, 21, &device);
        let mut due = Vec::new();
        for seed in 0..6u64 {
            let (g, before) = grads(&ng, &model, 10 + seed, &device);
            model = ng.step(&mut optim, LR, model, g);
            due.push(ng.adaptation_due());
            if ng.adaptation_due() {
                // A loss that rose: the quadratic model was wrong, the damping grows.
                assert!(ng.adapt_damping(before, before + 1.0).is_some(), "{name}");
            }
        }
        assert_eq!(due, [false, false, true, false, false, true], "{name}");
        let omega = 0.9f64.powi(3);
        let expected = 0.2 / omega / omega;
        assert!(
            (ng.damping() - expected).abs() < 1e-9,
            "{name}: {}",
            ng.damping()
        );
        // One more step writes the damping in force into every parameter's state.
        let (g, _) = grads(&ng, &model, 30, &device);
        model = ng.step(&mut optim, LR, model, g);
        let fresh = adaptive(3);
        let loaded = fresh.module_optimizer().load_record(optim.to_record());
        fresh.resume_from(&loaded, &model);
        assert!(
            (fresh.damping() - expected).abs() < 1e-9,
            "{name}: resumed damping {}",
            fresh.damping()
        );
    }
}

#[test]
fn bad_adaptive_damping_is_refused() {
    let config = |a: AdaptiveDampingConfig| {
        NaturalGradientConfig::new()
            .with_adaptive_damping(Some(a))
            .try_build()
            .expect_err("invalid config accepted")
            .to_string()
    };
    let msg = config(AdaptiveDampingConfig::new().with_period(0));
    assert!(msg.contains("`adaptive_damping.period`"), "{msg}");
    let msg = config(AdaptiveDampingConfig::new().with_min(10.0).with_max(1.0));
    assert!(msg.contains("bounds reversed"), "{msg}");
    let msg = config(AdaptiveDampingConfig::new().with_min(2.0).with_max(5.0));
    assert!(
        msg.contains("`damping`") && msg.contains("outside"),
        "{msg}"
    );
    for decay in [0.0, 1.0, f64::NAN] {
        let msg = config(AdaptiveDampingConfig::new().with_decay(decay));
        assert!(msg.contains("`adaptive_damping.decay`"), "{msg}");
    }
    let msg = config(AdaptiveDampingConfig::new().with_min(-1.0));
    assert!(msg.contains("`adaptive_damping.min`"), "{msg}");
}
