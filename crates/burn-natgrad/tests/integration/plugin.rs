//! The drop-in layers on Burn's guide model (two Conv2d, BatchNorm, Dropout, two Linear): a
//! model switched to them keeps its record, its forward pass is unchanged, `train_step` records
//! every layer through the model's own forward pass (the BatchNorm too), and it trains; its
//! `TrainStep` is one line for `step` and one for `optimize`, with no
//! field in the model, and that glue refuses what it cannot do right.

use crate::common::*;
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LinearConfig, Relu};
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Int, Tensor};
use burn::train::{ClassificationOutput, TrainOutput, TrainStep};
use burn_natgrad::testing::Factors;
use burn_natgrad::{nn, Capture, NaturalGradientConfig};

/// Burn's guide model with a BatchNorm after the first convolution, in Burn's own layers.
#[derive(Module, Debug)]
struct BurnGuide {
    conv1: burn::nn::conv::Conv2d,
    bn: BatchNorm,
    conv2: burn::nn::conv::Conv2d,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    linear1: burn::nn::Linear,
    linear2: burn::nn::Linear,
    activation: Relu,
}

/// The same model with the drop-in layers: the only change is the layer types.
#[derive(Module, Debug)]
struct Guide {
    conv1: nn::Conv2d,
    bn: nn::BatchNorm,
    conv2: nn::Conv2d,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    linear1: nn::Linear,
    linear2: nn::Linear,
    activation: Relu,
}

fn burn_guide(dropout: f64, device: &Device) -> BurnGuide {
    device.seed(11);
    BurnGuide {
        conv1: Conv2dConfig::new([1, 4], [3, 3]).init(device),
        bn: BatchNormConfig::new(4).init(device),
        conv2: Conv2dConfig::new([4, 6], [3, 3]).init(device),
        pool: AdaptiveAvgPool2dConfig::new([4, 4]).init(),
        dropout: DropoutConfig::new(dropout).init(),
        linear1: LinearConfig::new(6 * 4 * 4, 16).init(device),
        linear2: LinearConfig::new(16, 3).init(device),
        activation: Relu::new(),
    }
}

/// The guide's forward pass, written once for both models.
macro_rules! guide_forward {
    ($m:expr, $images:expr) => {{
        let m = $m;
        let [n, h, w] = $images.dims();
        let x = $images.reshape([n, 1, h, w]);
        let x = m.bn.forward(m.conv1.forward(x));
        let x = m.dropout.forward(x);
        let x = m.conv2.forward(x);
        let x = m.activation.forward(m.dropout.forward(x));
        let x = m.pool.forward(x).reshape([n, 6 * 4 * 4]);
        let x = m
            .activation
            .forward(m.dropout.forward(m.linear1.forward(x)));
        m.linear2.forward(x)
    }};
}

impl BurnGuide {
    fn forward(&self, images: Tensor<3>) -> Tensor<2> {
        guide_forward!(self, images)
    }
}

impl Guide {
    fn forward(&self, images: Tensor<3>) -> Tensor<2> {
        guide_forward!(self, images)
    }
}

/// A record saved from Burn's layers loads into the drop-in model, and both compute the same.
#[test]
fn drop_in_layers_keep_the_record_and_the_forward_pass() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let burn_model = burn_guide(0.0, &device);
        let x = tensor(3, [5, 10, 10], 1.0, &device);
        let expected = host(burn_model.forward(x.clone()));
        device.seed(99);
        let fresh = Guide {
            conv1: Conv2dConfig::new([1, 4], [3, 3]).init(&device).into(),
            bn: BatchNormConfig::new(4).init(&device).into(),
            conv2: Conv2dConfig::new([4, 6], [3, 3]).init(&device).into(),
            pool: AdaptiveAvgPool2dConfig::new([4, 4]).init(),
            dropout: DropoutConfig::new(0.0).init(),
            linear1: LinearConfig::new(6 * 4 * 4, 16).init(&device).into(),
            linear2: LinearConfig::new(16, 3).init(&device).into(),
            activation: Relu::new(),
        };
        assert!(rel_err(&host(fresh.forward(x.clone())), &expected) > 1e-3);
        let loaded = fresh.load_record(burn_model.clone().into_record());
        let got = host(loaded.forward(x.clone()));
        assert!(
            rel_err(&got, &expected) <= 1e-6,
            "{name}: record not loaded"
        );
        assert_eq!(loaded.num_params(), burn_model.num_params());
        // Inside a capture scope the output is the same, and all five layers are recorded.
        let (cap, out) = Capture::new().scope(|| loaded.forward(x.clone()));
        assert_eq!(cap.len(), 5, "{name}");
        assert!(rel_err(&host(out), &expected) <= 1e-6, "{name}");
        // The scope is over: nothing more is recorded.
        let _ = loaded.forward(x);
    }
}

/// The drop-in configs are Burn's: with the same seed, `init` builds the drop-in layer of the
/// weights Burn's config builds, and the builders reach Burn's fields.
#[test]
fn drop_in_configs_build_burns_layers() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        // Burn initialises a parameter when it is first read: read each one as it is built.
        device.seed(5);
        let ours = nn::Conv2dConfig::new([2, 3], [3, 2])
            .with_stride([2, 1])
            .with_groups(1)
            .with_bias(false)
            .init(&device);
        let ours_weight = host(ours.weight.val());
        let linear = nn::LinearConfig::new(6, 4).with_bias(false).init(&device);
        let linear_weight = host(linear.weight.val());
        let norm = nn::LayerNormConfig::new(4).with_epsilon(1e-3);
        device.seed(5);
        let burns = Conv2dConfig::new([2, 3], [3, 2])
            .with_stride([2, 1])
            .with_bias(false)
            .init(&device);
        assert_eq!(ours_weight, host(burns.weight.val()), "{name}");
        let burn_linear = LinearConfig::new(6, 4).with_bias(false).init(&device);
        assert_eq!(linear_weight, host(burn_linear.weight.val()), "{name}");
        assert!(ours.bias.is_none() && linear.bias.is_none(), "{name}");
        assert_eq!(ours.stride, [2, 1], "{name}");
        assert_eq!(norm.epsilon, 1e-3, "{name}");
        assert_eq!(norm.init(&device).gamma.dims(), [4], "{name}");
        assert_eq!(nn::LinearConfig::new(6, 4).d_output, 4);
        let (cap, _) = Capture::new().scope(|| linear.forward(tensor(1, [3, 6], 1.0, &device)));
        assert_eq!(cap.len(), 1, "{name}: the drop-in records");
    }
}

/// `train_step` on the model's own forward pass gives the same factors as routing each layer
/// through the capture by hand, every parameter covered (the default policy refuses any other).
#[test]
fn train_step_records_the_models_own_forward_pass() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let model = Guide::from_burn(burn_guide(0.0, &device));
        let x = tensor(4, [6, 10, 10], 1.0, &device);
        let y = labels(5, 6, 3, &device);
        let ng = NaturalGradientConfig::new().build();
        let out = ng.train_step(&model, x.clone(), y.clone(), |x| model.forward(x));
        let by_hand = {
            let (mut cap, xc) = ng.capture(x);
            let [n, h, w] = xc.dims();
            let m = &model;
            let h1 = cap.conv2d(&m.conv1, xc.reshape([n, 1, h, w]));
            let h1 = cap.batch_norm(&m.bn, h1);
            let h2 = m.activation.forward(cap.conv2d(&m.conv2, h1));
            let h3 = m.pool.forward(h2).reshape([n, 6 * 4 * 4]);
            let h4 = m.activation.forward(cap.linear(&m.linear1, h3));
            let logits = cap.linear(&m.linear2, h4);
            ng.try_classification(&model, cap, logits, y).unwrap()
        };
        let a = Factors::from_grads(&model, &out.grads).unwrap();
        let b = Factors::from_grads(&model, &by_hand.grads).unwrap();
        assert_blocks_match(&a, &b, name);
        assert_eq!(
            a.blocks.len(),
            10,
            "{name}: conv and linear weights and biases, bn.gamma and bn.beta"
        );
    }
}

/// A few natural-gradient steps with dropout and a training-mode BatchNorm lower the loss.
#[test]
fn the_guide_model_trains_with_the_natural_gradient() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let mut model = Guide::from_burn(burn_guide(0.1, &device));
        let (ng, mut optim) = NaturalGradientConfig::new().with_damping(1.0).init();
        let x = tensor(6, [16, 10, 10], 1.0, &device);
        let y = labels(7, 16, 3, &device);
        let loss = |model: &Guide| {
            host(
                ng.train_step(model, x.clone(), y.clone(), |x| model.forward(x))
                    .loss,
            )[0]
        };
        let first = loss(&model);
        for _ in 0..15 {
            let out = ng.train_step(&model, x.clone(), y.clone(), |x| model.forward(x));
            model = ng.step(&mut optim, 1.0, model, out.grads);
        }
        let last = loss(&model);
        assert_eq!(ng.stats().skipped, 0, "{name}");
        println!("{name}: loss {first:.4} → {last:.4}");
        assert!(last < 0.5 * first, "{name}: loss {first:.4} → {last:.4}");
    }
}

impl Guide {
    /// The drop-in model with the weights of Burn's.
    fn from_burn(m: BurnGuide) -> Self {
        Guide {
            conv1: m.conv1.into(),
            bn: m.bn.into(),
            conv2: m.conv2.into(),
            pool: m.pool,
            dropout: m.dropout,
            linear1: m.linear1.into(),
            linear2: m.linear2.into(),
            activation: m.activation,
        }
    }
}

/// A batch for the guide's `TrainStep`.
#[derive(Clone, Debug)]
struct Batch {
    images: Tensor<3>,
    targets: Tensor<1, Int>,
}

/// README's way: no field in the model, one line for each method.
impl TrainStep for Guide {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        burn_natgrad::classification_step(self, batch.images, batch.targets, |x| self.forward(x))
    }

    burn_natgrad::natural_gradient_optimize!();
}

fn guide_batch(device: &Device) -> Batch {
    Batch {
        images: tensor(6, [8, 10, 10], 1.0, device),
        targets: labels(7, 8, 3, device),
    }
}

fn guide_config() -> NaturalGradientConfig {
    NaturalGradientConfig::new().with_damping(1.0)
}

/// The parameters of a guide model, in module order (host).
fn weights(model: &Guide) -> Vec<f64> {
    struct Collect<'a>(&'a mut Vec<f64>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.extend(host(param.val()));
        }
    }
    let mut out = Vec::new();
    model.visit(&mut Collect(&mut out));
    out
}

/// `TrainStep::step` and `optimize` without a field find the natural gradient (the one created
/// last on this thread; the one the `ModuleOptimizer` belongs to) and take the same step as the
/// explicit calls.
#[test]
fn the_train_step_glue_finds_its_natural_gradient() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let model = Guide::from_burn(burn_guide(0.0, &device));
        let batch = guide_batch(&device);
        let (explicit, mut explicit_optim) = guide_config().init();
        let out = explicit.train_step(&model, batch.images.clone(), batch.targets.clone(), |x| {
            model.forward(x)
        });
        let expected = explicit.step(&mut explicit_optim, 0.5, model.clone(), out.grads);

        let (ng, mut optim) = guide_config().init();
        let output = model.step(batch);
        let stepped = model.clone().optimize(&mut optim, 0.5.into(), output.grads);
        let err = rel_err(&weights(&stepped), &weights(&expected));
        assert!(err <= 1e-6, "{name}: the glue's step differs ({err:e})");
        assert!(
            rel_err(&weights(&stepped), &weights(&model)) > 1e-4,
            "{name}: nothing moved"
        );
        assert_eq!(ng.stats().steps, 1, "{name}");
        assert_eq!(explicit.stats().steps, 1, "{name}");
    }
}

/// A batch on the plain device, as Burn's data loaders give it, joins the graph at the first
/// captured layer: the step equals that of the same batch on the autodiff device (the Gram
/// solve and KFAC's preset, convolutions, BatchNorm and Linear layers).
#[test]
fn a_batch_on_the_plain_device_takes_the_same_step() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        for config in [guide_config(), NaturalGradientConfig::kfac()] {
            let model = Guide::from_burn(burn_guide(0.0, &device));
            let batch = guide_batch(&device);
            let plain = Batch {
                images: batch.images.clone().inner(),
                targets: batch.targets.clone().inner(),
            };
            assert!(!plain.images.is_autodiff(), "{name}");
            let step = |batch: Batch| {
                let (ng, mut optim) = config.init();
                let out = ng.train_step(&model, batch.images, batch.targets, |x| model.forward(x));
                ng.step(&mut optim, 0.5, model.clone(), out.grads)
            };
            let expected = step(batch);
            let got = step(plain);
            let err = rel_err(&weights(&got), &weights(&expected));
            assert!(
                err <= 1e-6,
                "{name}: the plain batch's step differs ({err:e})"
            );
            assert!(
                rel_err(&weights(&got), &weights(&model)) > 1e-4,
                "{name}: nothing moved"
            );
        }
    }
}

/// The glue refuses, before any weight moves: a batch captured for another natural gradient
/// than the `ModuleOptimizer`'s; natural-gradient factors handed to Burn's own optimizer; and a
/// step with no natural gradient alive on the thread. With Burn's optimizer and plain
/// gradients it is Burn's step.
#[test]
fn the_train_step_glue_refuses_what_it_cannot_do() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let model = Guide::from_burn(burn_guide(0.0, &device));
        let (first, mut first_optim) = guide_config().init();
        let (second, _second_optim) = guide_config().init();
        let output = model.step(guide_batch(&device));
        let msg = panic_message(|| {
            let _ = model
                .clone()
                .optimize(&mut first_optim, 0.5.into(), output.grads);
        });
        assert!(msg.contains("another NaturalGradient"), "{name}: {msg}");
        assert_eq!(
            (first.stats().steps, second.stats().steps),
            (0, 0),
            "{name}"
        );

        let output = model.step(guide_batch(&device));
        let mut sgd: ModuleOptimizer = SgdConfig::new().init();
        let msg = panic_message(|| {
            let _ = model.clone().optimize(&mut sgd, 0.5.into(), output.grads);
        });
        assert!(msg.contains("not its own"), "{name}: {msg}");

        // Burn's optimizer on plain gradients: Burn's step.
        let batch = guide_batch(&device);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(model.forward(batch.images), batch.targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let stepped = model.clone().optimize(&mut sgd, 0.5.into(), grads);
        assert!(
            rel_err(&weights(&stepped), &weights(&model)) > 1e-4,
            "{name}: SGD did not step"
        );

        drop((first, first_optim, second, _second_optim));
        let msg = panic_message(|| {
            let _ = model.step(guide_batch(&device));
        });
        assert!(msg.contains("found no NaturalGradient"), "{name}: {msg}");
    }
}

/// KFAC with a factor period through the two-line glue on the guide model (drop-in Conv2d,
/// BatchNorm, Linear): the second step reuses the factors, and its plain gradients, which carry
/// the reuse marker, are refused by Burn's own optimizer as factors are.
#[test]
fn the_glue_runs_reusing_steps_and_keeps_them_from_burns_optimizer() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let model = Guide::from_burn(burn_guide(0.0, &device));
        let (ng, mut optim) = NaturalGradientConfig::new()
            // No moving average, so no warm-up: the second step reuses.
            .with_curvature(burn_natgrad::Curvature::Kfac(
                burn_natgrad::KfacConfig::new()
                    .with_factor_decay(0.0)
                    .with_factor_update_steps(2)
                    .with_inv_update_steps(20),
            ))
            .with_damping(0.3)
            .init();
        let output = model.step(guide_batch(&device));
        let model = model.optimize(&mut optim, 0.1.into(), output.grads);
        assert!(!ng.factors_due(), "{name}");
        let output = model.step(guide_batch(&device));
        let mut sgd: ModuleOptimizer = SgdConfig::new().init();
        let msg = panic_message(|| {
            let _ = model.clone().optimize(&mut sgd, 0.5.into(), output.grads);
        });
        assert!(msg.contains("not its own"), "{name}: {msg}");
        assert!(!ng.factors_due(), "{name}");
        let output = model.step(guide_batch(&device));
        let stepped = model.clone().optimize(&mut optim, 0.1.into(), output.grads);
        let stats = ng.stats();
        assert_eq!((stats.steps, stats.reused), (2, 1), "{name}");
        assert!(
            rel_err(&weights(&stepped), &weights(&model)) > 1e-6,
            "{name}: the reusing step did not move the weights"
        );
        assert!(
            ng.factors_due(),
            "{name}: the third step updates the factors"
        );
    }
}

/// The guide model keeping its natural gradient in a field, for several on one thread.
#[derive(Module, Debug)]
struct Fielded {
    guide: Guide,
    #[module(skip)]
    natgrad: Option<burn_natgrad::NaturalGradient>,
}

impl TrainStep for Fielded {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        let ng = self.natgrad.as_ref().expect("a NaturalGradient");
        let targets = batch.targets.clone();
        ng.train_step(self, batch.images, batch.targets, |x| self.guide.forward(x))
            .into_train_output(targets)
    }

    burn_natgrad::natural_gradient_optimize!(natgrad);
}

/// With the field form, the model's own natural gradient steps even when another was created
/// after it on this thread.
#[test]
fn the_field_form_steps_the_models_own_natural_gradient() {
    let _rng = rng_lock();
    for (name, device) in backends() {
        let (own, mut optim) = guide_config().init();
        let (later, _later_optim) = guide_config().init();
        let model = Fielded {
            guide: Guide::from_burn(burn_guide(0.0, &device)),
            natgrad: Some(own.clone()),
        };
        let output = model.step(guide_batch(&device));
        let stepped = model.clone().optimize(&mut optim, 0.5.into(), output.grads);
        assert_eq!((own.stats().steps, later.stats().steps), (1, 0), "{name}");
        let moved = rel_err(&weights(&stepped.guide), &weights(&model.guide));
        assert!(moved > 1e-4, "{name}: nothing moved");
    }
}
