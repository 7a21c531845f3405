//! Probe factors against the exact per-example loop (the oracle), on every backend.

use crate::common::*;
use burn_natgrad::testing::Factors;
use burn_natgrad::{per_example_classification, Capture, NaturalGradientConfig};

fn check(bias: bool, sequence: bool) {
    for (name, device) in backends() {
        let model = Mlp::new(&[5, 7, 6, 4], bias, 11, &device);
        let ng = NaturalGradientConfig::new().build();
        let n = 8;
        let y = labels(3, n, 4, &device);
        let (probe, looped) = if sequence {
            let x = tensor(5, [n, 3, 5], 1.0, &device);
            let (mut cap, xc) = ng.capture(x.clone());
            let logits = model.logits3(xc, &mut cap);
            let probe = ng
                .try_classification(&model, cap, logits, y.clone())
                .unwrap();
            let looped = per_example_classification(&ng, &model, x, y, |m: &Mlp, x| {
                m.logits3(x, &mut Capture::disabled())
            })
            .unwrap();
            (probe, looped)
        } else {
            let x = tensor(5, [n, 5], 1.0, &device);
            let (mut cap, xc) = ng.capture(x.clone());
            let logits = model.logits2(xc, &mut cap);
            let probe = ng
                .try_classification(&model, cap, logits, y.clone())
                .unwrap();
            let looped = per_example_classification(&ng, &model, x, y, |m: &Mlp, x| {
                m.logits2(x, &mut Capture::disabled())
            })
            .unwrap();
            (probe, looped)
        };
        let fp = Factors::from_grads(&model, &probe.grads).unwrap();
        let fl = Factors::from_grads(&model, &looped.grads).unwrap();
        let expected_blocks = if bias { 6 } else { 3 };
        assert_eq!(fp.blocks.len(), expected_blocks, "{name}");
        assert_eq!(fl.blocks.len(), expected_blocks, "{name}");
        // The probe's gradients are implicit (empirical Fisher), the loop's explicit.
        assert!(fp.gradient_weight.is_some() && fl.gradient_weight.is_none());
        assert_blocks_match(&fp, &fl, &format!("{name} bias={bias} seq={sequence}"));
        let loss = rel_err(&host(probe.loss.clone()), &host(looped.loss.clone()));
        assert!(loss <= 1e-5, "{name}: loss rel err {loss:e}");
    }
}

#[test]
fn probe_matches_loop_2d_with_bias() {
    check(true, false);
}

#[test]
fn probe_matches_loop_2d_without_bias() {
    check(false, false);
}

#[test]
fn probe_matches_loop_3d_with_bias() {
    check(true, true);
}

#[test]
fn probe_matches_loop_3d_without_bias() {
    check(false, true);
}

#[test]
fn captured_factors_give_per_example_gradients() {
    // The public CapturedFactors view against autodiff's gradients of the same loss without the
    // capture: N · xᵢᵀΔᵢ averaged over i, and grad(), are the batch gradient.
    for (name, device) in backends() {
        let model = Mlp::new(&[3, 4], true, 2, &device);
        let x = tensor(9, [6, 3], 1.0, &device);
        let y = labels(1, 6, 4, &device);
        let ce = |logits| {
            burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&device)
                .forward(logits, y.clone())
        };
        let plain = ce(model.logits2(x.clone(), &mut Capture::disabled())).backward();
        let batch_grad = model.layers[0].weight.val().grad(&plain).unwrap();
        let bias_grad = model.layers[0]
            .bias
            .as_ref()
            .unwrap()
            .val()
            .grad(&plain)
            .unwrap();

        let mut cap = Capture::new();
        let grads = ce(model.logits2(x, &mut cap)).backward();
        assert!(
            model.layers[0].weight.val().grad(&grads).is_none(),
            "captured weights enter as constants: autodiff computes no gradient for them"
        );
        let factors = cap.into_factors(&grads).unwrap();
        let (w, b) = (
            model.layers[0].weight.id,
            model.layers[0].bias.as_ref().unwrap().id,
        );
        assert_eq!(factors.params(), vec![w, b]);
        let per_example = factors.per_example_grads(w, 6.0).unwrap();
        assert_eq!(per_example.dims(), [6, 12]);
        let mean = per_example.mean_dim(0).reshape([3, 4]);
        assert!(
            rel_err(&host(mean), &host(batch_grad.clone())) <= 1e-5,
            "{name}"
        );
        let grad = factors.grad(w).unwrap().reshape([3, 4]);
        assert!(rel_err(&host(grad), &host(batch_grad)) <= 1e-5, "{name}");
        let bias = factors
            .per_example_grads(b, 6.0)
            .unwrap()
            .mean_dim(0)
            .reshape([4]);
        assert!(
            rel_err(&host(bias), &host(bias_grad.clone())) <= 1e-5,
            "{name}"
        );
        let grad = factors.grad(b).unwrap().reshape([4]);
        assert!(rel_err(&host(grad), &host(bias_grad)) <= 1e-5, "{name}");
    }
}

#[test]
fn shared_layer_uses_are_summed_per_example() {
    // Layer 0 is applied twice (weight sharing): its per-example gradient is the sum over both
    // uses, which the capture gets by concatenating the uses along T.
    fn forward(m: &Mlp, x: burn::tensor::Tensor<2>, cap: &mut Capture) -> burn::tensor::Tensor<2> {
        let h = burn::tensor::activation::relu(cap.linear(&m.layers[0], x));
        let h = burn::tensor::activation::relu(cap.linear(&m.layers[0], h));
        cap.linear(&m.layers[1], h)
    }
    for (name, device) in backends() {
        let model = Mlp::new(&[5, 5, 3], true, 13, &device);
        let ng = NaturalGradientConfig::new().build();
        let x = tensor(6, [8, 5], 1.0, &device);
        let y = labels(7, 8, 3, &device);
        let (mut cap, xc) = ng.capture(x.clone());
        let logits = forward(&model, xc, &mut cap);
        assert_eq!(cap.len(), 3, "three layer uses recorded");
        let probe = ng
            .try_classification(&model, cap, logits, y.clone())
            .unwrap();
        let looped = per_example_classification(&ng, &model, x, y, |m: &Mlp, x| {
            forward(m, x, &mut Capture::disabled())
        })
        .unwrap();
        let fp = Factors::from_grads(&model, &probe.grads).unwrap();
        let fl = Factors::from_grads(&model, &looped.grads).unwrap();
        assert_eq!(
            fp.blocks.len(),
            4,
            "{name}: two layers, weight and bias each"
        );
        assert_blocks_match(&fp, &fl, name);
    }
}
