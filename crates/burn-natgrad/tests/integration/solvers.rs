//! CG (parameter and sample space) and the Gram/Woodbury solve against a dense
//! `(F + λI)⁻¹ g` computed on the host in f64, for the empirical and the sampled Fisher,
//! coupled and block-diagonal, on every backend.

use crate::common::*;
use burn_natgrad::testing::gram_and_implicit_projection;
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{CgConfig, FisherKind, NaturalGradientConfig, NaturalGradientOutput};

const DAMPING: f64 = 0.05;

fn captured(
    fisher: FisherKind,
    curvature_batch: Option<usize>,
    device: &burn::tensor::Device,
) -> (Mlp, NaturalGradientOutput) {
    let model = Mlp::new(&[4, 6, 3], true, 21, device);
    let ng = NaturalGradientConfig::new()
        .with_fisher(fisher)
        .with_curvature_batch(curvature_batch)
        .build();
    let _rng = rng_lock();
    device.seed(7);
    let (mut cap, x) = ng.capture(tensor(4, [8, 4], 1.0, device));
    let logits = model.logits2(x, &mut cap);
    let out = ng
        .try_classification(&model, cap, logits, labels(8, 8, 3, device))
        .unwrap();
    (model, out)
}

fn check(fisher: FisherKind, block_diagonal: bool) {
    check_curvature(fisher, block_diagonal, None);
}

fn check_curvature(fisher: FisherKind, block_diagonal: bool, curvature_batch: Option<usize>) {
    for (name, device) in backends() {
        let (model, out) = captured(fisher, curvature_batch, &device);
        let factors = Factors::from_grads(&model, &out.grads).unwrap();
        let groups = if block_diagonal {
            factors.by_group()
        } else {
            vec![(0..factors.blocks.len()).collect()]
        };
        assert_eq!(groups.len(), if block_diagonal { 2 } else { 1 });
        let mut expected = vec![Vec::new(); factors.blocks.len()];
        for group in &groups {
            let blocks: Vec<&Block> = group.iter().map(|&i| &factors.blocks[i]).collect();
            let g: Vec<f64> = group
                .iter()
                .flat_map(|&i| host(factors.gradient(i)))
                .collect();
            let d = dense_direction(&blocks, g, DAMPING);
            let mut offset = 0;
            for &i in group {
                let n: usize = factors.blocks[i].dims.iter().product();
                expected[i] = d[offset..offset + n].to_vec();
                offset += n;
            }
        }
        let expected: Vec<f64> = expected.concat();
        let cg = CgConfig::new().with_max_iters(200).with_tolerance(1e-9);
        for solver in solvers(cg) {
            let ng = NaturalGradientConfig::new()
                .with_fisher(fisher)
                .with_curvature(full(solver, block_diagonal))
                .with_damping(DAMPING)
                .build();
            let pre = ng.precondition(&model, 1.0, &out.grads).unwrap();
            let dirs = pre.directions.expect("finite step");
            let got = gathered(&model, &dirs);
            let err = rel_err(&got, &expected);
            assert!(
                err <= 1e-4,
                "{name} {fisher:?} {solver:?} block_diagonal={block_diagonal} \
                 curvature_batch={curvature_batch:?}: rel err {err:e}"
            );
            // dᵀFd from the solver matches the dense quadratic form of its own direction
            // (block-diagonal: the sum over the groups of each group's form).
            let mut quadratic = 0.0;
            let mut offset = 0;
            for group in &groups {
                let blocks: Vec<&Block> = group.iter().map(|&i| &factors.blocks[i]).collect();
                let len: usize = group
                    .iter()
                    .map(|&i| factors.blocks[i].dims.iter().product::<usize>())
                    .sum();
                quadratic += dense_quadratic(&blocks, &got[offset..offset + len]);
                offset += len;
            }
            let q_err = (pre.quadratic - quadratic).abs() / quadratic.abs().max(1e-30);
            assert!(
                q_err <= 1e-4,
                "{name} {fisher:?} {solver:?} block_diagonal={block_diagonal}: dᵀFd {} vs dense \
                 {quadratic}, rel err {q_err:e}",
                pre.quadratic
            );
        }
    }
}

#[test]
fn solvers_match_dense_empirical() {
    check(FisherKind::Empirical, false);
}

#[test]
fn solvers_match_dense_sampled() {
    check(FisherKind::Sampled { samples: 2 }, false);
}

/// A curvature batch of 3 of the 8 examples: the Fisher rows are the first 3 data rows
/// (empirical; their input a prefix of the data's) or 3·k sampled rows.
#[test]
fn solvers_match_dense_curvature_batch() {
    for block_diagonal in [false, true] {
        check_curvature(FisherKind::Empirical, block_diagonal, Some(3));
        check_curvature(FisherKind::Sampled { samples: 2 }, block_diagonal, Some(3));
    }
}

#[test]
fn solvers_match_dense_exact() {
    check(FisherKind::Exact { classes: 3 }, false);
    check(FisherKind::Exact { classes: 3 }, true);
    check_curvature(FisherKind::Exact { classes: 3 }, false, Some(3));
}

#[test]
fn solvers_match_dense_block_diagonal() {
    check(FisherKind::Empirical, true);
    check(FisherKind::Sampled { samples: 3 }, true);
}

#[test]
fn damping_dominated_direction_is_scaled_gradient() {
    // With λ ≫ ‖F‖ the natural gradient tends to g / λ: a sanity check on the scale.
    for (name, device) in backends() {
        let (model, out) = captured(FisherKind::Empirical, None, &device);
        let ng = NaturalGradientConfig::new().with_damping(1e4).build();
        let got = directions_of(&ng, &model, 1.0, &out.grads);
        let factors = Factors::from_grads(&model, &out.grads).unwrap();
        let grad: Vec<f64> = (0..factors.blocks.len())
            .flat_map(|i| host(factors.gradient(i)))
            .collect();
        let scaled: Vec<f64> = grad.iter().map(|g| g / 1e4).collect();
        assert!(rel_err(&got, &scaled) < 1e-3, "{name}");
    }
}

#[test]
fn fused_weight_and_bias_gram_is_the_sum_of_the_blocks_in_any_order() {
    // `gram_and_implicit_projection` computes a Linear's weight and bias together; in block
    // order, reversed (bias before weight), and block by block it must agree.
    let kinds = [FisherKind::Empirical, FisherKind::Sampled { samples: 2 }];
    for (fisher, curvature) in kinds.into_iter().flat_map(|f| [(f, None), (f, Some(3))]) {
        for (name, device) in backends() {
            let (model, out) = captured(fisher, curvature, &device);
            let factors = Factors::from_grads(&model, &out.grads).unwrap();
            let forward: Vec<&Block> = factors.blocks.iter().collect();
            let reversed: Vec<&Block> = factors.blocks.iter().rev().collect();
            let (k, b) = gram_and_implicit_projection(&forward);
            let (kr, br) = gram_and_implicit_projection(&reversed);
            let (ks, bs) = forward
                .iter()
                .map(|blk| blk.gram_and_implicit_projection())
                .reduce(|(k1, b1), (k2, b2)| (k1 + k2, b1 + b2))
                .unwrap();
            let (k, b, ks, bs) = (host(k), host(b), host(ks), host(bs));
            for (what, got) in [("reversed", (host(kr), host(br))), ("one by one", (ks, bs))] {
                let ek = rel_err(&got.0, &k);
                let eb = rel_err(&got.1, &b);
                assert!(
                    ek <= 1e-5 && eb <= 1e-5,
                    "{name} {fisher:?} {curvature:?} {what}: K {ek:e}, b {eb:e}"
                );
            }
        }
    }
}
