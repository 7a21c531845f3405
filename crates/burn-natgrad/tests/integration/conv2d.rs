//! The Conv2d rule against the exact per-example loop (the oracle) and against a dense solve,
//! over strides, dilation, groups and every padding of Burn's `Conv2d`, on every backend; in
//! both of its factor forms: materialised rows (the Gram solve's) and the Kronecker factors
//! KFAC asks for (KFC), whose exact Gram the solvers can also use.

use crate::common::*;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::Tensor;
use burn_natgrad::testing::{gram, Block, BlockFactors, Factors};
use burn_natgrad::NaturalGradientOutput;
use burn_natgrad::{
    per_example_classification, Capture, Curvature, FisherKind, FullConfig, NaturalGradientConfig,
};

/// The configurations the rule must cover: `(name, config, input channels, input size)`.
fn configs() -> Vec<(&'static str, Conv2dConfig, [usize; 2])> {
    let c = |cin, cout, k| Conv2dConfig::new([cin, cout], k);
    vec![
        ("stride 1, valid", c(2, 3, [3, 3]), [6, 6]),
        ("stride 2", c(2, 3, [3, 3]).with_stride([2, 2]), [7, 7]),
        ("dilation 2", c(2, 3, [3, 2]).with_dilation([2, 2]), [7, 6]),
        ("groups 2", c(4, 6, [3, 3]).with_groups(2), [5, 5]),
        (
            "explicit, asymmetric",
            c(2, 3, [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 0, 2, 1)),
            [5, 5],
        ),
        (
            "same, odd kernel",
            c(2, 3, [3, 3]).with_padding(PaddingConfig2d::Same),
            [5, 5],
        ),
        (
            "same, even kernel (asymmetric), stride 2",
            c(2, 3, [2, 4])
                .with_padding(PaddingConfig2d::Same)
                .with_stride([2, 2]),
            [6, 7],
        ),
        ("no bias", c(2, 3, [3, 3]).with_bias(false), [5, 5]),
    ]
}

fn captured(
    ng: &burn_natgrad::NaturalGradient,
    model: &ConvNet,
    x: Tensor<4>,
    y: burn::tensor::Tensor<1, burn::tensor::Int>,
) -> NaturalGradientOutput {
    let (mut cap, xc) = ng.capture(x);
    let logits = model.logits(xc, &mut cap);
    assert_eq!(cap.len(), 2, "the conv and the linear layer are recorded");
    ng.try_classification(model, cap, logits, y).unwrap()
}

/// The Gram solve's configuration, KFAC's (these convolutions are under its default block
/// limit: rows), and KFAC's with a block limit of 0, under which a one-group convolution keeps
/// its Kronecker factors (KFC).
fn curvatures() -> [(Curvature, usize); 3] {
    [
        (Curvature::Full(FullConfig::new()), 2048),
        (Curvature::kfac(), 2048),
        (Curvature::kfac(), 0),
    ]
}

fn natural_gradient(curvature: Curvature, limit: usize) -> NaturalGradientConfig {
    let curvature = match curvature {
        Curvature::Kfac(k) => Curvature::Kfac(k.with_block_limit(limit)),
        full => full,
    };
    NaturalGradientConfig::new().with_curvature(curvature)
}

#[test]
fn conv2d_rule_matches_the_per_example_loop() {
    for (name, device) in backends() {
        for ((what, config, hw), (curvature, limit)) in configs()
            .into_iter()
            .flat_map(|c| curvatures().map(|k| (c.clone(), k)))
        {
            let what = format!("{what}, {curvature:?}, block limit {limit}");
            let cin = config.channels[0];
            let model = ConvNet::new(config.clone(), hw, 4, 31, &device);
            let ng = natural_gradient(curvature, limit).build();
            let n = 5;
            let x = tensor(3, [n, cin, hw[0], hw[1]], 1.0, &device);
            let y = labels(4, n, 4, &device);
            let probe = captured(&ng, &model, x.clone(), y.clone());
            let looped = per_example_classification(&ng, &model, x, y, |m: &ConvNet, x| {
                m.logits(x, &mut Capture::disabled())
            })
            .unwrap();
            let fp = Factors::from_grads(&model, &probe.grads).unwrap();
            let fl = Factors::from_grads(&model, &looped.grads).unwrap();
            let expected = if config.bias { 4 } else { 3 };
            assert_eq!(fp.blocks.len(), expected, "{name} {what}");
            assert_eq!(fl.blocks.len(), expected, "{name} {what}");
            let kronecker = curvature.as_kfac().is_some() && limit == 0 && config.groups == 1;
            assert_eq!(
                matches!(fp.blocks[0].factors, BlockFactors::Weight { .. }),
                kronecker,
                "{name} {what}: the conv weight's factor form"
            );
            assert_blocks_match(&fp, &fl, &format!("{name} {what}"));
            // The Gram the solvers use against G Gᵀ of the loop's materialised gradients.
            let blocks: Vec<&Block> = fp.blocks.iter().collect();
            let looped_blocks: Vec<&Block> = fl.blocks.iter().collect();
            let u = burn_natgrad::testing::dense_rows(&looped_blocks);
            let expected = u.clone().matmul(u.transpose());
            let err = rel_err(&host(gram(&blocks)), &host(expected));
            assert!(err <= 1e-5, "{name} {what}: Gram rel err {err:e}");
        }
    }
}

/// Every solver against the dense solve: a two-group convolution (rows), and a one-group one
/// whose factors were captured in KFAC's Kronecker form (its exact Gram `Σ_{t,s}`).
#[test]
fn conv2d_solvers_match_the_dense_solve() {
    let damping = 0.05;
    let cases = [
        (configs().swap_remove(3), curvatures()[0]), // groups 2
        (configs().swap_remove(1), curvatures()[2]), // stride 2, Kronecker factors
    ];
    for (name, device) in backends() {
        for ((what, config, hw), curvature) in cases.clone() {
            check_solvers(name, what, config, hw, curvature, damping, &device);
        }
    }
}

fn check_solvers(
    name: &str,
    what: &str,
    config: Conv2dConfig,
    hw: [usize; 2],
    (curvature, limit): (Curvature, usize),
    damping: f64,
    device: &burn::tensor::Device,
) {
    let name = format!("{name} {what}");
    let cin = config.channels[0];
    let model = ConvNet::new(config, hw, 3, 41, device);
    for fisher in [FisherKind::Empirical, FisherKind::Sampled { samples: 2 }] {
        let ng = natural_gradient(curvature, limit)
            .with_fisher(fisher)
            .build();
        let x = tensor(5, [6, cin, hw[0], hw[1]], 1.0, device);
        let out = {
            let _rng = rng_lock();
            device.seed(3);
            captured(&ng, &model, x, labels(6, 6, 3, device))
        };
        let factors = Factors::from_grads(&model, &out.grads).unwrap();
        let blocks: Vec<&Block> = factors.blocks.iter().collect();
        let g: Vec<f64> = (0..blocks.len())
            .flat_map(|i| host(factors.gradient(i)))
            .collect();
        let expected = dense_direction(&blocks, g, damping);
        assert_solvers_match_dense(&model, &out.grads, fisher, &expected, damping, &name);
    }
}
