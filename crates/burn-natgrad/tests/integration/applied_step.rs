//! The step that reaches the weights is the one that was checked: every learning rate it applies
//! (Burn's per-group rates included), the optimizer that applies it (Burn's per-group
//! optimizers included), the KL trust region and the adaptive damping's model of it (momentum
//! and weight decay included).

use burn::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::AdamConfig;
use burn::tensor::Tensor;
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{
    AdaptiveDampingConfig, Curvature, FullConfig, KfacConfig, NaturalGradientConfig,
};

use crate::common::*;

/// Every parameter value of a model in module order (host, f64).
fn params(model: &Mlp) -> Vec<f64> {
    struct All<'a>(&'a mut Vec<f64>);
    impl ModuleVisitor for All<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(host(param.val()));
        }
    }
    let mut out = Vec::new();
    model.visit(&mut All(&mut out));
    out
}

/// A learning rate of `base` with the parameters under `path` at `group`.
fn grouped(base: f64, path: &str, group: f64) -> ModuleLearningRate {
    ModuleLrScheduler::new(base)
        .with_group(ParamGroup::from_predicate(path), group)
        .step()
}

/// Per-group learning rates that differ are refused before anything moves; one rate for all
/// from a group is the rate applied (and the trust region's); a group rate that is not a finite
/// number > 0 skips the step.
#[test]
fn every_learning_rate_of_a_step_is_checked() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new()
            .with_damping(1e-3)
            .with_kl_max(Some(1e-4))
            .build();
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        // The last layer at ten times the rate.
        let err = ng
            .precondition(&model, grouped(1.0, "layers.1", 10.0), &out.grads)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("different rates") && msg.contains("layers.1"),
            "{name}: {msg}"
        );
        let mut optim = ng.module_optimizer();
        let msg = panic_message(|| {
            let lr = grouped(1.0, "layers.1", 10.0);
            let _ = ng.step(&mut optim, lr, model.clone(), out.grads);
        });
        assert!(msg.contains("different rates"), "{name}: {msg}");
        assert!(optim.to_record().is_empty(), "{name}: a weight moved");
        assert_eq!(ng.stats().steps, 0, "{name}");
        // Not finite, or not positive, in a group: skipped.
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        for bad in [f64::NAN, -1.0] {
            let pre = ng
                .precondition(&model, grouped(1.0, "layers", bad), &out.grads)
                .unwrap();
            assert!(
                pre.directions.is_none(),
                "{name}: group rate {bad} accepted"
            );
            assert!(pre.skip_reason.unwrap().contains("learning rate"));
        }
        // One rate for all, from a group: applied, and the trust region sized for it.
        let pre = ng
            .precondition(&model, grouped(1.0, "layers", 10.0), &out.grads)
            .unwrap();
        assert_eq!(pre.lr(), 10.0, "{name}");
        assert!(pre.scale < 1.0, "{name}: the trust region should bind");
        let kl = 0.5 * 100.0 * pre.scale * pre.scale * pre.quadratic;
        assert!((kl - 1e-4).abs() < 1e-7, "{name}: predicted KL {kl}");
        let d = gathered(&model, pre.directions.as_ref().unwrap());
        let before = params(&model);
        let after = params(&ng.apply(&mut optim, model.clone(), pre));
        let moved: Vec<f64> = before.iter().zip(&after).map(|(b, a)| b - a).collect();
        let expected: Vec<f64> = d.iter().map(|d| 10.0 * d).collect();
        let err = rel_err(&moved, &expected);
        assert!(err < 1e-5, "{name}: applied at another rate ({err:e})");
    }
}

/// A `ModuleOptimizer` with a group of another optimizer (Adam on one layer) is refused before
/// any weight moves, for the Gram solve and KFAC, on the first or the last layer.
#[test]
fn groups_of_another_optimizer_are_refused() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 1, &device);
        for curvature in [Curvature::Full(FullConfig::new()), Curvature::kfac()] {
            for layer in ["layers.0", "layers.1"] {
                let ng = NaturalGradientConfig::new()
                    .with_curvature(curvature)
                    .with_damping(0.1)
                    .build();
                let mut optim = ng.module_optimizer().with_group(
                    ParamGroup::from_predicate(layer),
                    AdamConfig::new().build(),
                    None,
                );
                assert!(!ng.owns(&optim, &model), "{name} {layer}");
                assert!(ng.owns(&ng.module_optimizer(), &model), "{name}");
                // Refused on the first step, and on a later one (after the state was read).
                for first in [true, false] {
                    let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
                    let logits = model.logits2(x, &mut cap);
                    let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
                    let msg = panic_message(|| {
                        let _ = ng.step(&mut optim, 0.1, model.clone(), out.grads);
                    });
                    assert!(
                        msg.contains("with_group") && msg.contains("No weight was changed"),
                        "{name} {curvature:?} {layer} {first}: {msg}"
                    );
                    assert!(
                        optim.to_record().is_empty(),
                        "{name} {curvature:?} {layer} {first}: half-applied"
                    );
                    if first {
                        let mut own = ng.module_optimizer();
                        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
                        let logits = model.logits2(x, &mut cap);
                        let labels = labels(2, 6, 3, &device);
                        let out = ng.classification(&model, cap, logits, labels);
                        let _ = ng.step(&mut own, 0.1, model.clone(), out.grads);
                    }
                }
                assert_eq!(ng.stats().steps, 1);
            }
        }
    }
}

/// `kl_max` bounds the step that is applied, momentum and weight decay included, and
/// `last_kl` is that step's KL: `½ δᵀFδ` of the weights' actual change `δ`, with the dense
/// Fisher of the step's own rows.
#[test]
fn the_trust_region_bounds_the_applied_step() {
    for (name, device) in backends() {
        let kl_max = 1e-4;
        let ng = NaturalGradientConfig::new()
            .with_damping(1e-2)
            .with_kl_max(Some(kl_max))
            .with_momentum(Some(
                MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
            ))
            .with_weight_decay(Some(WeightDecayConfig::new(0.5)))
            .build();
        let mut optim = ng.module_optimizer();
        let mut model = Mlp::new(&[4, 5, 3], true, 1, &device);
        let mut bound = 0;
        for step in 0..6 {
            let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
            let logits = model.logits2(x, &mut cap);
            let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
            let factors = Factors::from_grads(&model, &out.grads).unwrap();
            let blocks: Vec<&Block> = factors.blocks.iter().collect();
            let before = params(&model);
            model = ng.step(&mut optim, 1.0, model, out.grads);
            let delta: Vec<f64> = params(&model)
                .iter()
                .zip(&before)
                .map(|(a, b)| a - b)
                .collect();
            let kl = 0.5 * dense_quadratic(&blocks, &delta);
            assert!(
                kl <= kl_max * (1.0 + 1e-3),
                "{name} step {step}: the applied step's KL {kl:e} exceeds kl_max"
            );
            let reported = ng.stats().last_kl;
            assert!(
                (reported - kl).abs() <= 1e-3 * kl_max,
                "{name} step {step}: last_kl {reported:e}, applied {kl:e}"
            );
            bound += usize::from(ng.stats().last_scale < 1.0);
        }
        assert!(bound >= 3, "{name}: the trust region bound {bound} times");
    }
}

/// The adaptive damping's predicted change is the quadratic model of the step that was
/// applied, momentum and weight decay included: `gᵀδ + ½ δᵀ(F + λI)δ` with the weights' actual
/// change `δ`, the batch gradient `g` and its dense Fisher.
#[test]
fn the_damping_model_uses_the_applied_step() {
    for (name, device) in backends() {
        let damping = 0.05;
        let ng = NaturalGradientConfig::new()
            .with_damping(damping)
            .with_adaptive_damping(Some(
                AdaptiveDampingConfig::new()
                    .with_period(1)
                    .with_min(1e-9)
                    .with_max(1e9),
            ))
            .with_momentum(Some(
                MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
            ))
            .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
            .build();
        let mut optim = ng.module_optimizer();
        let mut model = Mlp::new(&[4, 5, 3], true, 1, &device);
        for step in 0..4 {
            let lambda = ng.damping();
            let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
            let logits = model.logits2(x, &mut cap);
            let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
            let factors = Factors::from_grads(&model, &out.grads).unwrap();
            let blocks: Vec<&Block> = factors.blocks.iter().collect();
            let g: Vec<f64> = (0..blocks.len())
                .flat_map(|i| host(factors.gradient(i)))
                .collect();
            let before = params(&model);
            model = ng.step(&mut optim, 0.5, model, out.grads);
            let delta: Vec<f64> = params(&model)
                .iter()
                .zip(&before)
                .map(|(a, b)| a - b)
                .collect();
            let expected = g.iter().zip(&delta).map(|(g, d)| g * d).sum::<f64>()
                + 0.5
                    * (dense_quadratic(&blocks, &delta)
                        + lambda * delta.iter().map(|d| d * d).sum::<f64>());
            assert!(expected < 0.0, "{name} step {step}: not a descent step");
            // ρ = actual / predicted with an actual change of −1: predicted = −1 / ρ.
            let adaptation = ng.adapt_damping(0.0, -1.0).expect("an adaptation is due");
            let predicted = -1.0 / adaptation.rho;
            let err = (predicted - expected).abs() / expected.abs();
            assert!(
                err < 1e-3,
                "{name} step {step}: predicted {predicted:e}, the applied step's model {expected:e}"
            );
        }
    }
}

/// An Embedding table with more rows than `f32` ids carry exactly (2²⁴) is refused at the
/// capture, before any weight moves, instead of merging rows.
#[test]
fn embedding_ids_beyond_f32_are_refused() {
    #[cfg(feature = "ndarray")]
    {
        #[allow(deprecated)]
        let device = burn::tensor::Device::ndarray().autodiff();
        let rows = (1usize << 24) + 2;
        let layer = burn::nn::EmbeddingConfig::new(rows, 1).init(&device);
        let ids = Tensor::<2, burn::tensor::Int>::from_ints([[16_777_216, 16_777_217]], &device);
        let msg = panic_message(|| {
            let mut capture = burn_natgrad::Capture::new();
            let _ = capture.embedding(&layer, ids);
        });
        assert!(
            msg.contains("2^24") && msg.contains("16777218 rows"),
            "{msg}"
        );
        // At the limit, ids are exact.
        let small = burn::nn::EmbeddingConfig::new(1 << 24, 1).init(&device);
        let ids = Tensor::<2, burn::tensor::Int>::from_ints([[16_777_215, 16_777_214]], &device);
        let mut capture = burn_natgrad::Capture::new();
        let out = capture.embedding(&small, ids.clone());
        let plain = small.forward(ids);
        assert_eq!(host(out), host(plain));
    }
}

/// The configuration's refusals read as single sentences (no runs of spaces from line breaks).
#[test]
fn refusals_have_no_runs_of_spaces() {
    let kfac = |k: KfacConfig| NaturalGradientConfig::new().with_curvature(Curvature::Kfac(k));
    let configs = [
        kfac(
            KfacConfig::new()
                .with_inv_update_steps(15)
                .with_factor_update_steps(10),
        ),
        kfac(KfacConfig::new().with_factor_update_steps(5))
            .with_adaptive_damping(Some(AdaptiveDampingConfig::new())),
        kfac(KfacConfig::new().with_inverse(burn_natgrad::KfacInverse::LowRank { rank: 0 })),
    ];
    for config in configs {
        let msg = config.try_build().unwrap_err().to_string();
        assert!(!msg.contains("  "), "{msg}");
    }
}
