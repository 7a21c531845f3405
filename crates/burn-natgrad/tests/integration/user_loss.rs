//! The gradient from the model's own training loss (label smoothing, class weights) while the
//! sampled and exact Fisher stay the model's: `train_step_with_loss` /
//! `try_classification_with_loss`, against plain autodiff of the same loss on the same model.

use crate::common::*;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use burn_natgrad::testing::{dense_rows, Block, Factors};
use burn_natgrad::{Capture, FisherKind, NaturalGradient, NaturalGradientConfig};

const N: usize = 6;

/// The test MLP made of burn-natgrad's drop-in layers, for `train_step_with_loss`.
#[derive(Module, Debug)]
struct DropIn {
    layers: Vec<burn_natgrad::nn::Linear>,
}

impl DropIn {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let z = layer.forward(h);
            if i < last {
                burn::tensor::activation::relu(z)
            } else {
                z
            }
        })
    }
}
const CLASSES: usize = 3;

fn smoothed(logits: Tensor<2>, y: Tensor<1, Int>) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.2))
        .init(&logits.device())
        .forward(logits, y)
}

fn class_weighted(logits: Tensor<2>, y: Tensor<1, Int>) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .with_weights(Some(vec![1.0, 3.0, 0.5]))
        .init(&logits.device())
        .forward(logits, y)
}

fn plain(logits: Tensor<2>, y: Tensor<1, Int>) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, y)
}

type Loss = fn(Tensor<2>, Tensor<1, Int>) -> Tensor<1>;

fn fishers() -> [FisherKind; 3] {
    [
        FisherKind::Empirical,
        FisherKind::Sampled { samples: 2 },
        FisherKind::Exact { classes: CLASSES },
    ]
}

fn model(device: &Device) -> Mlp {
    Mlp::new(&[4, 5, CLASSES], true, 71, device)
}

fn batch(device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    (
        tensor(13, [N, 4], 1.0, device),
        labels(14, N, CLASSES, device),
    )
}

/// The captured step with `loss`, or with the default cross-entropy when `None`.
fn captured(ng: &NaturalGradient, model: &Mlp, device: &Device, loss: Option<Loss>) -> Factors {
    let (x, y) = batch(device);
    let (mut cap, xc) = ng.capture(x);
    let logits = model.logits2(xc, &mut cap);
    let out = match loss {
        Some(loss) => ng
            .try_classification_with_loss(model, cap, logits, y, loss)
            .unwrap(),
        None => ng.try_classification(model, cap, logits, y).unwrap(),
    };
    Factors::from_grads(model, &out.grads).unwrap()
}

/// Every block's gradient, in module order (host).
fn gradient(f: &Factors) -> Vec<f64> {
    (0..f.blocks.len())
        .flat_map(|i| host(f.gradient(i)))
        .collect()
}

/// Autodiff's gradient of `loss` on the uncaptured model, in module order, and the loss.
fn autodiff(model: &Mlp, device: &Device, loss: Loss) -> (Vec<f64>, f64) {
    let (x, y) = batch(device);
    let value = loss(model.logits2(x, &mut Capture::disabled()), y);
    let v = value.clone().into_scalar::<f64>();
    let grads = GradientsParams::from_grads(value.backward(), model);
    (gathered(model, &grads), v)
}

/// The gradient is the user's loss's, for every Fisher; the sampled and exact Fisher rows are
/// those of the default step (the model's own Fisher), and the reported loss is the user's.
#[test]
fn the_gradient_comes_from_the_given_loss_and_the_fisher_stays_the_models() {
    for (name, device) in backends() {
        let model = model(&device);
        for fisher in fishers() {
            let ng = NaturalGradientConfig::new().with_fisher(fisher).build();
            let default = captured(&ng, &model, &device, None);
            for (what, loss) in [
                ("smoothing", smoothed as Loss),
                ("class weights", class_weighted),
            ] {
                let what = format!("{name} {fisher:?} {what}");
                let f = captured(&ng, &model, &device, Some(loss));
                let (expected, _) = autodiff(&model, &device, loss);
                let err = rel_err(&gradient(&f), &expected);
                assert!(err <= 1e-5, "{what}: gradient rel err {err:e}");
                let (plain_grad, _) = autodiff(&model, &device, plain);
                assert!(
                    rel_err(&expected, &plain_grad) > 1e-2,
                    "{what}: the loss must change the gradient for this test to mean anything"
                );
                if fisher != FisherKind::Empirical {
                    let rows = |f: &Factors| {
                        let blocks: Vec<&Block> = f.blocks.iter().collect();
                        host(dense_rows(&blocks))
                    };
                    let err = rel_err(&rows(&f), &rows(&default));
                    assert!(err <= 1e-6, "{what}: Fisher rows moved ({err:e})");
                }
            }
        }
    }
}

/// With the empirical Fisher the rows are the given loss's per-example gradients: for label
/// smoothing (a mean of per-example terms), example `n`'s row is `∇ℓₙ / √N`, and `train_step_
/// with_loss` reports the loss autodiff computes.
#[test]
fn the_empirical_fisher_is_that_of_the_given_loss() {
    for (name, device) in backends() {
        let model = model(&device);
        let ng = NaturalGradientConfig::new().build();
        let f = captured(&ng, &model, &device, Some(smoothed));
        let blocks: Vec<&Block> = f.blocks.iter().collect();
        let got = host(dense_rows(&blocks));
        let (x, y) = batch(&device);
        let expected: Vec<f64> = (0..N)
            .flat_map(|i| {
                let xi = x.clone().slice(i..i + 1);
                let yi = y.clone().slice(i..i + 1);
                let l = smoothed(model.logits2(xi, &mut Capture::disabled()), yi);
                let grads = GradientsParams::from_grads(l.backward(), &model);
                gathered(&model, &grads)
                    .into_iter()
                    .map(|g| g / (N as f64).sqrt())
            })
            .collect();
        let err = rel_err(&got, &expected);
        assert!(err <= 1e-5, "{name}: empirical Fisher rows rel err {err:e}");

        // The same step through the drop-in layers and the model's own forward pass.
        let drop_in = DropIn {
            layers: model.layers.iter().cloned().map(Into::into).collect(),
        };
        let out = ng.train_step_with_loss(&drop_in, x, y, |x| drop_in.forward(x), smoothed);
        let g = gradient(&Factors::from_grads(&drop_in, &out.grads).unwrap());
        let err = rel_err(&g, &gradient(&f));
        assert!(
            err <= 1e-6,
            "{name}: train_step_with_loss differs ({err:e})"
        );
        let (_, value) = autodiff(&model, &device, smoothed);
        let reported = out.loss.into_scalar::<f64>();
        assert!(
            (reported - value).abs() <= 1e-5,
            "{name}: loss {reported} vs {value}"
        );
    }
}

/// Every solver against the dense solve of the rows and gradient the given loss produced; and
/// Burn's plain cross-entropy as the loss gives the default step's directions.
#[test]
fn solvers_match_the_dense_solve_with_a_given_loss() {
    let damping = 0.1;
    for (name, device) in backends() {
        let model = model(&device);
        for fisher in fishers() {
            let ng = NaturalGradientConfig::new().with_fisher(fisher).build();
            let (x, y) = batch(&device);
            let (mut cap, xc) = ng.capture(x);
            let logits = model.logits2(xc, &mut cap);
            let out = ng
                .try_classification_with_loss(&model, cap, logits, y, smoothed)
                .unwrap();
            let f = Factors::from_grads(&model, &out.grads).unwrap();
            let blocks: Vec<&Block> = f.blocks.iter().collect();
            let expected = dense_direction(&blocks, gradient(&f), damping);
            let what = format!("{name} smoothing");
            assert_solvers_match_dense(&model, &out.grads, fisher, &expected, damping, &what);

            let a = captured(&ng, &model, &device, Some(plain));
            let b = captured(&ng, &model, &device, None);
            let err = rel_err(&gradient(&a), &gradient(&b));
            assert!(
                err <= 1e-6,
                "{name} {fisher:?}: plain cross-entropy differs ({err:e})"
            );
        }
    }
}

/// A loss that is not the batch mean (per-example values, `[N]`) is refused with its shape.
#[test]
fn a_loss_that_is_not_a_mean_is_refused() {
    for (name, device) in backends() {
        let model = model(&device);
        let ng = NaturalGradientConfig::new().build();
        let (x, y) = batch(&device);
        let (mut cap, xc) = ng.capture(x);
        let logits = model.logits2(xc, &mut cap);
        let err = ng
            .try_classification_with_loss(&model, cap, logits, y, |l, _| l.sum_dim(1).reshape([N]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[1]") && err.contains(&format!("[{N}]")),
            "{name}: {err}"
        );
    }
}
