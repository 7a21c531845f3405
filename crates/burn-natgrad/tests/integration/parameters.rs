//! Parameter handling: frozen parameters, parameters used inside and outside the capture, the
//! policy for parameters no rule covers, `precondition` as a query, a foreign
//! `ModuleOptimizer`, and BatchNorm in the per-example loop.

use crate::common::*;
use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Linear};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use burn_natgrad::testing::Factors;
use burn_natgrad::{
    per_example_classification, Capture, NatGradError, NaturalGradientConfig, UncoveredPolicy,
};

/// A frozen bias on a trainable Linear layer gets no factors, does not move, and its rows do not
/// enter the Fisher: the step equals that of a model without the bias.
#[test]
fn frozen_bias_is_left_alone() {
    for (name, device) in backends() {
        let mut model = Mlp::new(&[4, 5, 3], true, 3, &device);
        let bias = model.layers[0].bias.take().unwrap();
        model.layers[0].bias = Some(Param::from_tensor(bias.val()).set_require_grad(false));
        let ng = NaturalGradientConfig::new().with_damping(0.1).build();
        let x = tensor(1, [6, 4], 1.0, &device);
        let y = labels(2, 6, 3, &device);
        let (mut cap, xc) = ng.capture(x.clone());
        let logits = model.logits2(xc, &mut cap);
        let out = ng.classification(&model, cap, logits, y.clone());
        let factors = Factors::from_grads(&model, &out.grads).unwrap();
        let paths: Vec<&str> = factors.blocks.iter().map(|b| b.path.as_str()).collect();
        assert_eq!(
            paths,
            ["layers.0.weight", "layers.1.weight", "layers.1.bias"],
            "{name}"
        );
        let before = host(model.layers[0].bias.as_ref().unwrap().val());
        let mut optim = ng.module_optimizer();
        let after = ng.step(&mut optim, 0.5, model, out.grads);
        let moved = host(after.layers[0].bias.as_ref().unwrap().val());
        assert_eq!(before, moved, "{name}: the frozen bias moved");
    }
}

/// A parameter used both through the capture and directly would get only part of its
/// gradient: refused, naming it.
#[test]
fn a_parameter_used_inside_and_outside_the_capture_is_refused() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 4, 3], true, 5, &device);
        let ng = NaturalGradientConfig::new().build();
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let h = relu(cap.linear(&model.layers[0], x.clone()));
        // The same weight, read directly: a residual-like term `x W₀` outside the capture.
        let direct = x.matmul(model.layers[0].weight.val());
        let logits = cap.linear(&model.layers[1], h + direct);
        let err = ng
            .try_classification(&model, cap, logits, labels(2, 6, 3, &device))
            .unwrap_err();
        assert_eq!(
            err,
            NatGradError::MixedUse {
                params: vec!["layers.0.weight".into()]
            },
            "{name}"
        );
        assert!(err.to_string().contains("also used outside the capture"));
    }
}

/// Handing plain autodiff gradients of `model` on `x` to `optim` panics with the
/// `NotPreconditioned` message.
fn assert_raw_gradients_refused(
    model: &Mlp,
    x: Tensor<2>,
    optim: &mut burn::optim::ModuleOptimizer,
    name: &str,
) {
    let device = x.device();
    let logits = model.logits2(x, &mut Capture::disabled());
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, labels(2, 6, 3, &device));
    let plain = GradientsParams::from_grads(loss.backward(), model);
    let msg = panic_message(|| {
        optim.step(0.1, model.clone(), plain);
    });
    assert!(msg.contains("raw gradients"), "{name}: {msg}");
}

/// `precondition` is a query: it counts nothing, and raw gradients after it are still refused.
#[test]
fn precondition_is_a_query() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let (ng, mut optim) = NaturalGradientConfig::new().init();
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x.clone(), &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        let pre = ng.precondition(&model, 0.1, &out.grads).unwrap();
        assert!(pre.directions.is_some());
        assert_eq!(ng.stats().steps, 0, "{name}: precondition counted a step");
        assert_raw_gradients_refused(&model, x, &mut optim, name);
        let _ = ng.apply(&mut optim, model, pre);
        assert_eq!(ng.stats().steps, 1, "{name}");
    }
}

/// Another optimizer's `ModuleOptimizer` (Adam) is refused before any weight moves.
#[test]
fn a_foreign_module_optimizer_is_refused() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new().build();
        let other = NaturalGradientConfig::new().build();
        assert!(ng.owns(&ng.module_optimizer(), &model));
        assert!(ng.owns(&ng.clone().module_optimizer(), &model));
        assert!(!ng.owns(&other.module_optimizer(), &model));
        let mut adam = AdamConfig::new().init();
        assert!(!ng.owns(&adam, &model));
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        let before = host(model.layers[0].weight.val());
        let msg = panic_message(|| {
            ng.step(&mut adam, 0.1, model.clone(), out.grads);
        });
        assert!(msg.contains("not its own"), "{name}: {msg}");
        assert!(adam.to_record().is_empty(), "{name}: Adam took a step");
        assert_eq!(host(model.layers[0].weight.val()), before);
        assert_eq!(ng.stats().steps, 0);
    }
}

/// A Linear, a BatchNorm over its features, a Linear: the BatchNorm is called directly, not
/// through its rule (`Capture::batch_norm`), so its parameters have no factors.
#[derive(Module, Debug)]
struct NormNet {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl NormNet {
    fn new(device: &Device) -> Self {
        let mlp = Mlp::new(&[4, 5, 3], true, 7, device);
        let mut layers = mlp.layers.into_iter();
        Self {
            fc1: layers.next().unwrap(),
            bn: BatchNormConfig::new(5).init(device),
            fc2: layers.next().unwrap(),
        }
    }

    fn logits(&self, x: Tensor<2>, cap: &mut Capture) -> Tensor<2> {
        let h = cap.linear(&self.fc1, x);
        let [n, d] = h.dims();
        let h = self.bn.forward(h.reshape([n, d, 1])).reshape([n, d]);
        cap.linear(&self.fc2, relu(h))
    }
}

/// Uncovered parameters are refused by default; `DampedGradient` moves them by `g / λ` and
/// preconditions the rest as if they were frozen.
#[test]
fn uncovered_parameters_follow_the_policy() {
    for (name, device) in backends() {
        let model = NormNet::new(&device);
        let x = tensor(1, [8, 4], 1.0, &device);
        let y = labels(2, 8, 3, &device);
        let run = |ng: &burn_natgrad::NaturalGradient| {
            let (mut cap, xc) = ng.capture(x.clone());
            let logits = model.logits(xc, &mut cap);
            ng.try_classification(&model, cap, logits, y.clone())
        };
        let refuse = NaturalGradientConfig::new().build();
        let err = run(&refuse).unwrap_err();
        assert_eq!(
            err,
            NatGradError::UncapturedParameters {
                params: vec!["bn.gamma".into(), "bn.beta".into()]
            },
            "{name}"
        );
        assert!(err.to_string().contains("UncoveredPolicy::DampedGradient"));

        let damping = 2.0;
        let ng = NaturalGradientConfig::new()
            .with_damping(damping)
            .with_uncovered(UncoveredPolicy::DampedGradient)
            .build();
        let out = run(&ng).unwrap();
        let factors =
            Factors::collect(&model, &out.grads, UncoveredPolicy::DampedGradient).unwrap();
        assert_eq!(factors.uncovered.len(), 2, "{name}");
        let pre = ng.precondition(&model, 1.0, &out.grads).unwrap();
        let dirs = pre.directions.expect("a finite step");
        for u in &factors.uncovered {
            let d = match u.dims.len() {
                1 => host(dirs.get::<1>(u.id).unwrap()),
                _ => unreachable!(),
            };
            let g: Vec<f64> = host(u.grad.clone()).iter().map(|g| g / damping).collect();
            assert!(rel_err(&d, &g) <= 1e-6, "{name} {}: not g/λ", u.path);
        }
        // The captured parameters: the same direction as with the BatchNorm frozen.
        let frozen = NormNet {
            bn: model.bn.clone().no_grad(),
            ..NormNet::new(&device)
        };
        let ng_frozen = NaturalGradientConfig::new().with_damping(damping).build();
        let (mut cap, xc) = ng_frozen.capture(x.clone());
        let logits = frozen.logits(xc, &mut cap);
        let out_frozen = ng_frozen.classification(&frozen, cap, logits, y.clone());
        let pre_frozen = ng_frozen
            .precondition(&frozen, 1.0, &out_frozen.grads)
            .unwrap();
        let frozen_dirs = pre_frozen.directions.unwrap();
        for (a, b) in [(&model.fc1, &frozen.fc1), (&model.fc2, &frozen.fc2)] {
            let da = host(dirs.get::<2>(a.weight.id).unwrap());
            let db = host(frozen_dirs.get::<2>(b.weight.id).unwrap());
            assert!(
                rel_err(&da, &db) <= 1e-5,
                "{name}: captured directions changed"
            );
        }
    }
}

/// BatchNorm in training mode has no per-example gradient: the exact loop refuses it.
#[test]
fn per_example_loop_refuses_batchnorm_in_training_mode() {
    for (name, device) in backends() {
        let model = NormNet::new(&device);
        let ng = NaturalGradientConfig::new().build();
        let err = per_example_classification(
            &ng,
            &model,
            tensor(1, [4, 4], 1.0, &device),
            labels(2, 4, 3, &device),
            |m: &NormNet, x| m.logits(x, &mut Capture::disabled()),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("BatchNorm in training mode")
                && err.to_string().contains("[bn]"),
            "{name}: {err}"
        );
    }
}

/// An optimizer whose per-tensor step panics.
#[derive(Clone)]
struct Panicking;

impl burn::optim::Optimizer for Panicking {
    type State<const D: usize> = burn::optim::SgdState<D>;

    fn step<const D: usize>(
        &self,
        _lr: burn::optim::LearningRate,
        _tensor: Tensor<D>,
        _grad: Tensor<D>,
        _state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        panic!("this optimizer fails")
    }

    fn to_device<const D: usize>(state: Self::State<D>, _device: &Device) -> Self::State<D> {
        state
    }
}

/// An optimizer that panics inside the ownership probe leaves nothing behind on the thread: raw
/// gradients are still refused (not silently ignored) and the natural gradient's own steps
/// still move the weights.
#[test]
fn a_panic_inside_the_ownership_probe_leaves_nothing_behind() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let (ng, mut optim) = NaturalGradientConfig::new().init();
        let panicking = burn::optim::ModuleOptimizer::from(Panicking);
        let msg = panic_message(|| {
            let _ = ng.owns(&panicking, &model);
        });
        assert!(msg.contains("this optimizer fails"), "{name}: {msg}");
        let x = tensor(1, [6, 4], 1.0, &device);
        assert_raw_gradients_refused(&model, x, &mut optim, name);
        let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
        let logits = model.logits2(x, &mut cap);
        let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
        let before = host(model.layers[0].weight.val());
        let after = ng.step(&mut optim, 0.5, model, out.grads);
        assert_ne!(
            host(after.layers[0].weight.val()),
            before,
            "{name}: no step"
        );
    }
}
