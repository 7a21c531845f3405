//! The BatchNorm rule over 4-D and 2-D inputs, on every backend. In training mode: against
//! Burn's own layer (logits, running statistics, the gradient of every parameter, also under
//! the sampled and exact Fisher's stacked copies) and against the per-example loop of the same
//! model with the batch's statistics frozen (the rows after the last BatchNorm; every row of the
//! exact Fisher's copies). In inference mode: against the per-example loop outright.

use crate::common::*;
use burn::module::{Module, ModuleVisitor, Param, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{BatchNorm, BatchNormConfig, Linear};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::module::batch_norm_train;
use burn::tensor::{Device, Tensor};
use burn_natgrad::testing::{gram, Block, Factors};
use burn_natgrad::{
    per_example_classification, Capture, FisherKind, NaturalGradient, NaturalGradientConfig,
};

/// Conv2d `2 → 3` (3×3 on 4×4) → BatchNorm over `[N, 3, 2, 2]` → ReLU → Linear `12 → 5` →
/// BatchNorm over `[N, 5]` → ReLU → Linear `5 → 3`.
#[derive(Module, Debug)]
struct BnNet {
    conv: Conv2d,
    bn1: BatchNorm,
    fc1: Linear,
    bn2: BatchNorm,
    fc2: Linear,
}

fn batch_norm(c: usize, seed: u64, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(c).init(device);
    bn.gamma = Param::from_tensor(tensor(seed, [c], 0.5, device).add_scalar(1.0));
    bn.beta = Param::from_tensor(tensor(seed + 1, [c], 0.3, device));
    bn
}

/// `bn` in inference mode with running statistics `mean`, `var`.
fn frozen(bn: &BatchNorm, mean: Tensor<1>, var: Tensor<1>) -> BatchNorm {
    let mut bn = bn.clone();
    bn.running_mean = RunningState::new(mean.detach());
    bn.running_var = RunningState::new(var.detach());
    bn.training = Param::from_bool(false);
    bn
}

impl BnNet {
    fn new(device: &Device) -> Self {
        let conv = ConvNet::new(Conv2dConfig::new([2, 3], [3, 3]), [4, 4], 3, 11, device).conv;
        let mut fcs = Mlp::new(&[12, 5, 3], true, 14, device).layers.into_iter();
        Self {
            conv,
            bn1: batch_norm(3, 20, device),
            fc1: fcs.next().unwrap(),
            bn2: batch_norm(5, 22, device),
            fc2: fcs.next().unwrap(),
        }
    }

    fn logits(&self, x: Tensor<4>, cap: &mut Capture) -> Tensor<2> {
        let [n, ..] = x.dims();
        let h = cap.conv2d(&self.conv, x);
        let h = relu(cap.batch_norm(&self.bn1, h)).reshape([n, 12]);
        let h = cap.linear(&self.fc1, h);
        let h = relu(cap.batch_norm(&self.bn2, h));
        cap.linear(&self.fc2, h)
    }

    /// This model with `x`'s batch statistics frozen: both BatchNorms in inference mode with
    /// those statistics (computed without touching the running ones).
    fn frozen(&self, x: Tensor<4>) -> Self {
        let [n, ..] = x.dims();
        let eps = self.bn1.epsilon;
        let h1 = self.conv.forward(x);
        let s1 = batch_norm_train(h1, self.bn1.gamma.val(), self.bn1.beta.val(), eps);
        let h2 = self.fc1.forward(relu(s1.output).reshape([n, 12]));
        let s2 = batch_norm_train(h2, self.bn2.gamma.val(), self.bn2.beta.val(), eps);
        Self {
            bn1: frozen(&self.bn1, s1.mean, s1.variance),
            bn2: frozen(&self.bn2, s2.mean, s2.variance),
            ..self.clone()
        }
    }

    /// The same parameters with running statistics of their own (clones share them).
    fn unshared(&self) -> Self {
        let own = |bn: &BatchNorm| {
            let mut bn = bn.clone();
            bn.running_mean = RunningState::new(bn.running_mean.value());
            bn.running_var = RunningState::new(bn.running_var.value());
            bn
        };
        Self {
            bn1: own(&self.bn1),
            bn2: own(&self.bn2),
            ..self.clone()
        }
    }

    fn running(&self) -> Vec<f64> {
        [&self.bn1, &self.bn2]
            .iter()
            .flat_map(|bn| {
                let mut v = host(bn.running_mean.value_sync());
                v.extend(host(bn.running_var.value_sync()));
                v
            })
            .collect()
    }
}

/// The gradients `grads` holds, with their ids, in module order (host, f64).
struct WithIds<'a>(&'a GradientsParams, Vec<(ParamId, Vec<f64>)>);

impl ModuleVisitor for WithIds<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.0.get::<D>(param.id) {
            self.1.push((param.id, host(g)));
        }
    }
}

fn x_y(n: usize, device: &Device) -> (Tensor<4>, burn::tensor::Tensor<1, burn::tensor::Int>) {
    (
        tensor(30, [n, 2, 4, 4], 1.0, device),
        labels(31, n, 3, device),
    )
}

fn captured(
    ng: &NaturalGradient,
    model: &BnNet,
    x: Tensor<4>,
    y: Tensor<1, burn::tensor::Int>,
) -> burn_natgrad::NaturalGradientOutput {
    let (mut cap, xc) = ng.capture(x);
    let logits = model.logits(xc, &mut cap);
    assert_eq!(cap.len(), 5);
    ng.try_classification(model, cap, logits, y).unwrap()
}

fn looped(
    ng: &NaturalGradient,
    model: &BnNet,
    x: Tensor<4>,
    y: Tensor<1, burn::tensor::Int>,
) -> Factors {
    let out = per_example_classification(ng, model, x, y, |m: &BnNet, x| {
        m.logits(x, &mut Capture::disabled())
    })
    .unwrap();
    Factors::from_grads(model, &out.grads).unwrap()
}

fn assert_fisher_match(a: &Factors, b: &Factors, paths: &[&str], what: &str) {
    let err = rel_err(&fisher_of(a, paths), &fisher_of(b, paths));
    assert!(err <= 1e-5, "{what} {paths:?}: Fisher rel err {err:e}");
}

const ALL: [&str; 10] = [
    "conv.weight",
    "conv.bias",
    "bn1.gamma",
    "bn1.beta",
    "fc1.weight",
    "fc1.bias",
    "bn2.gamma",
    "bn2.beta",
    "fc2.weight",
    "fc2.bias",
];

#[test]
fn batch_norm_in_training_mode_is_burns_layer_with_exact_gradients() {
    for (name, device) in backends() {
        let fishers = [
            (FisherKind::Empirical, None),
            (FisherKind::Sampled { samples: 2 }, None),
            (FisherKind::Exact { classes: 3 }, None),
            (FisherKind::Exact { classes: 3 }, Some(4)),
        ];
        for (fisher, curvature) in fishers {
            let what = format!("{name} {fisher:?} {curvature:?}");
            let ng = NaturalGradientConfig::new()
                .with_fisher(fisher)
                .with_curvature_batch(curvature)
                .build();
            let (x, y) = x_y(6, &device);
            let model = BnNet::new(&device);
            let burn = model.unshared();
            let frozen = model.frozen(x.clone());
            let out = captured(&ng, &model, x.clone(), y.clone());
            let logits = burn.logits(x.clone(), &mut Capture::disabled());
            let err = rel_err(&host(out.logits.clone()), &host(logits.clone()));
            assert!(err <= 1e-5, "{what}: logits rel err {err:e}");
            let err = rel_err(&model.running(), &burn.running());
            assert!(err <= 1e-5, "{what}: running statistics rel err {err:e}");

            // The data gradient of every parameter is autodiff's through Burn's layer.
            let loss = CrossEntropyLossConfig::new()
                .init(&device)
                .forward(logits, y.clone());
            let mut expected =
                WithIds(&GradientsParams::from_grads(loss.backward(), &burn), vec![]);
            burn.visit(&mut expected);
            let fp = Factors::from_grads(&model, &out.grads).unwrap();
            assert_eq!(fp.blocks.len(), expected.1.len(), "{what}");
            // Per block, relative to the whole gradient: a bias before a BatchNorm has none.
            let norm = expected
                .1
                .iter()
                .flat_map(|(_, g)| g)
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt();
            for (i, (block, (id, g))) in fp.blocks.iter().zip(&expected.1).enumerate() {
                assert_eq!(block.id, *id, "{what}");
                let got = host(fp.gradient(i));
                let diff = got
                    .iter()
                    .zip(g)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    diff <= 1e-5 * norm,
                    "{what} {}: gradient error {diff:e}",
                    block.path
                );
            }

            // The rows against the loop with the batch's statistics frozen: after the last
            // BatchNorm for the data rows, all of them for the exact Fisher's copies.
            match fisher {
                FisherKind::Empirical => {
                    let fl = looped(&ng, &frozen, x, y);
                    assert_fisher_match(&fp, &fl, &ALL[6..], &what);
                    let blocks: Vec<&Block> = fp.blocks.iter().collect();
                    let u = burn_natgrad::testing::dense_rows(&blocks);
                    let gu = host(u.clone().matmul(u.transpose()));
                    let err = rel_err(&host(gram(&blocks)), &gu);
                    assert!(err <= 1e-5, "{what}: Gram rel err {err:e}");
                    let g: Vec<f64> = (0..blocks.len())
                        .flat_map(|i| host(fp.gradient(i)))
                        .collect();
                    let dense = dense_direction(&blocks, g, 0.05);
                    assert_solvers_match_dense(&model, &out.grads, fisher, &dense, 0.05, &what);
                }
                FisherKind::Exact { .. } => {
                    let fl = looped(&ng, &frozen, x, y);
                    assert_fisher_match(&fp, &fl, &ALL, &what);
                }
                FisherKind::Sampled { .. } => {}
            }
        }
    }
}

#[test]
fn batch_norm_in_inference_mode_is_per_example() {
    for (name, device) in backends() {
        let (x, y) = x_y(5, &device);
        // Running statistics of another batch.
        let model = BnNet::new(&device).frozen(tensor(40, [7, 2, 4, 4], 1.5, &device));
        for fisher in [FisherKind::Empirical, FisherKind::Exact { classes: 3 }] {
            let what = format!("{name} {fisher:?}");
            let ng = NaturalGradientConfig::new().with_fisher(fisher).build();
            let out = captured(&ng, &model, x.clone(), y.clone());
            let fp = Factors::from_grads(&model, &out.grads).unwrap();
            let fl = looped(&ng, &model, x.clone(), y.clone());
            match fisher {
                FisherKind::Empirical => assert_blocks_match(&fp, &fl, &what),
                _ => assert_fisher_match(&fp, &fl, &ALL, &what),
            }
        }
    }
}
