//! The GroupNorm and RmsNorm rules against the exact per-example loop (both layers normalise
//! each example by its own statistics), GroupNorm over 4-D input, RmsNorm over 3-D and 2-D, on
//! every backend: the rows and gradients (empirical Fisher), the Fisher of the exact Fisher's
//! copies, the Gram against `G Gᵀ` and every solver against the dense solve.

use crate::common::*;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use burn_natgrad::testing::{gram, Block, Factors};
use burn_natgrad::{per_example_classification, Capture, FisherKind, NaturalGradientConfig};

/// Conv2d `2 → 4` (3×3 on 5×5) → GroupNorm (2 groups) → ReLU → RmsNorm over `[N, 9, 4]` →
/// Linear `36 → 5` → RmsNorm over `[N, 5]` → ReLU → Linear `5 → 3`.
#[derive(Module, Debug)]
struct NormNet {
    conv: Conv2d,
    group: GroupNorm,
    rms1: RmsNorm,
    fc1: Linear,
    rms2: RmsNorm,
    fc2: Linear,
}

fn rms(d: usize, seed: u64, device: &Device) -> RmsNorm {
    let mut norm = RmsNormConfig::new(d).init(device);
    norm.gamma = Param::from_tensor(tensor(seed, [d], 0.5, device).add_scalar(1.0));
    norm
}

impl NormNet {
    fn new(device: &Device) -> Self {
        let conv = ConvNet::new(Conv2dConfig::new([2, 4], [3, 3]), [5, 5], 3, 31, device).conv;
        let mut group = GroupNormConfig::new(2, 4).init(device);
        group.gamma = Some(Param::from_tensor(
            tensor(32, [4], 0.5, device).add_scalar(1.0),
        ));
        group.beta = Some(Param::from_tensor(tensor(33, [4], 0.3, device)));
        let mut fcs = Mlp::new(&[36, 5, 3], true, 34, device).layers.into_iter();
        Self {
            conv,
            group,
            rms1: rms(4, 35, device),
            fc1: fcs.next().unwrap(),
            rms2: rms(5, 36, device),
            fc2: fcs.next().unwrap(),
        }
    }

    fn logits(&self, x: Tensor<4>, cap: &mut Capture) -> Tensor<2> {
        let [n, ..] = x.dims();
        let h = cap.conv2d(&self.conv, x);
        let h = relu(cap.group_norm(&self.group, h));
        let h = h.reshape([n, 4, 9]).swap_dims(1, 2);
        let h = cap.rms_norm(&self.rms1, h).reshape([n, 36]);
        let h = cap.linear(&self.fc1, h);
        let h = relu(cap.rms_norm(&self.rms2, h));
        cap.linear(&self.fc2, h)
    }
}

#[test]
fn group_norm_and_rms_norm_rules_match_the_per_example_loop() {
    for (name, device) in backends() {
        let model = NormNet::new(&device);
        for fisher in [FisherKind::Empirical, FisherKind::Exact { classes: 3 }] {
            let what = format!("{name} {fisher:?}");
            let ng = NaturalGradientConfig::new().with_fisher(fisher).build();
            let n = 5;
            let (x, y) = (
                tensor(37, [n, 2, 5, 5], 1.0, &device),
                labels(38, n, 3, &device),
            );
            let (mut cap, xc) = ng.capture(x.clone());
            let logits = model.logits(xc, &mut cap);
            assert_eq!(cap.len(), 6, "{what}");
            let probe = ng
                .try_classification(&model, cap, logits, y.clone())
                .unwrap();
            let looped = per_example_classification(&ng, &model, x, y, |m: &NormNet, x| {
                m.logits(x, &mut Capture::disabled())
            })
            .unwrap();
            let fp = Factors::from_grads(&model, &probe.grads).unwrap();
            let fl = Factors::from_grads(&model, &looped.grads).unwrap();
            // conv w, b; group γ, β; rms1 γ; fc1 w, b; rms2 γ; fc2 w, b.
            assert_eq!(fp.blocks.len(), 10, "{what}");
            if fisher == FisherKind::Empirical {
                assert_blocks_match(&fp, &fl, &what);
            } else {
                let paths: Vec<&str> = fp.blocks.iter().map(|b| b.path.as_str()).collect();
                let err = rel_err(&fisher_of(&fp, &paths), &fisher_of(&fl, &paths));
                assert!(err <= 1e-5, "{what}: Fisher rel err {err:e}");
            }
            let blocks: Vec<&Block> = fp.blocks.iter().collect();
            let u = burn_natgrad::testing::dense_rows(&blocks);
            let expected = host(u.clone().matmul(u.transpose()));
            let err = rel_err(&host(gram(&blocks)), &expected);
            assert!(err <= 1e-5, "{what}: Gram rel err {err:e}");
            let g: Vec<f64> = (0..blocks.len())
                .flat_map(|i| host(fp.gradient(i)))
                .collect();
            let dense = dense_direction(&blocks, g, 0.05);
            assert_solvers_match_dense(&model, &probe.grads, fisher, &dense, 0.05, name);
        }
    }
}

/// The drop-in GroupNorm and RmsNorm are Burn's layers outside a scope and record inside one.
#[test]
fn drop_in_norms_record_inside_a_scope() {
    for (name, device) in backends() {
        let model = NormNet::new(&device);
        let group: burn_natgrad::nn::GroupNorm = model.group.clone().into();
        let rms: burn_natgrad::nn::RmsNorm = model.rms1.clone().into();
        let x = tensor(39, [3, 4, 2, 2], 1.0, &device);
        // GroupNorm over [3, 4, 2, 2], then RmsNorm over its [3, 4 positions, 4 channels].
        let positions = |h: Tensor<4>| h.reshape([3, 4, 4]).swap_dims(1, 2);
        let expected = host(
            model
                .rms1
                .forward(positions(model.group.forward(x.clone()))),
        );
        let run = || rms.forward(positions(group.forward(x.clone())));
        assert!(
            rel_err(&host(run()), &expected) <= 1e-6,
            "{name}: outside a scope"
        );
        let (cap, out) = Capture::new().scope(run);
        assert_eq!(cap.len(), 2, "{name}");
        assert!(
            rel_err(&host(out), &expected) <= 1e-6,
            "{name}: inside a scope"
        );
    }
}
