//! The sampled Fisher is an unbiased Monte-Carlo estimate of the exact Fisher.
//!
//! Model: one Linear layer 3 → 4 with bias, softmax output, N = 4 examples. The exact Fisher
//! `F = (1/N) Σᵢ Σ_y p(y|xᵢ) uᵢ_y uᵢ_yᵀ`, with `uᵢ_y = [xᵢ ⊗ (pᵢ − e_y), pᵢ − e_y]`, is computed
//! on the host in f64. With k = 4000 samples per example (16,000 draws, fixed seed) the
//! estimate's relative Frobenius error must be ≤ 0.05: the Monte-Carlo standard error here is
//! about 0.01 (a per-entry coefficient of variation of ~1.5 over 16,000 draws), so 0.05 is a
//! 5σ bound. The empirical Fisher (data labels) must miss by more than 0.2, so the test tells
//! the two apart.
//!
//! With a curvature batch of the first 2 examples, the estimate (k = 8000, the same 16,000
//! draws) must match the exact Fisher of those 2 examples alone, and miss the whole batch's.
//!
//! `FisherKind::Exact` (one √p-weighted row per class) and the per-example loop's exact Fisher
//! must equal the host's to rounding (relative Frobenius error ≤ 1e-4).

use crate::common::*;
use burn_natgrad::testing::dense_fisher;
use burn_natgrad::testing::{Block, Factors};
use burn_natgrad::{FisherKind, NaturalGradientConfig};

fn frob_rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn sampled_fisher_expectation_matches_exact_fisher() {
    check(None);
}

#[test]
fn sampled_fisher_of_a_curvature_batch_matches_its_exact_fisher() {
    check(Some(2));
}

fn check(curvature_batch: Option<usize>) {
    let (n, d_in, c) = (4usize, 3usize, 4usize);
    let m = curvature_batch.unwrap_or(n);
    for (name, device) in backends() {
        let model = Mlp::new(&[d_in, c], true, 31, &device);
        let x = tensor(17, [n, d_in], 1.0, &device);
        let y = labels(19, n, c, &device);

        // Exact Fisher on the host.
        let xs = host(x.clone().inner());
        let w = host(model.layers[0].weight.val().inner());
        let b = host(model.layers[0].bias.as_ref().unwrap().val().inner());
        let p_dim = d_in * c + c;
        let mut exact = vec![0.0; p_dim * p_dim];
        let mut exact_whole = vec![0.0; p_dim * p_dim];
        for i in 0..n {
            let z: Vec<f64> = (0..c)
                .map(|o| {
                    b[o] + (0..d_in)
                        .map(|a| xs[i * d_in + a] * w[a * c + o])
                        .sum::<f64>()
                })
                .collect();
            let zmax = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - zmax).exp()).collect();
            let s: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / s).collect();
            for label in 0..c {
                let delta: Vec<f64> = (0..c).map(|o| p[o] - f64::from(o == label)).collect();
                let mut u = Vec::with_capacity(p_dim);
                for a in 0..d_in {
                    u.extend(delta.iter().map(|d| xs[i * d_in + a] * d));
                }
                u.extend(&delta);
                for r in 0..p_dim {
                    for s in 0..p_dim {
                        let v = p[label] * u[r] * u[s];
                        exact_whole[r * p_dim + s] += v / n as f64;
                        if i < m {
                            exact[r * p_dim + s] += v / m as f64;
                        }
                    }
                }
            }
        }

        let fisher_of = |fisher: FisherKind| {
            let ng = NaturalGradientConfig::new()
                .with_fisher(fisher)
                .with_curvature_batch(curvature_batch)
                .build();
            let _rng = rng_lock();
            device.seed(1234);
            let (mut cap, xc) = ng.capture(x.clone());
            let logits = model.logits2(xc, &mut cap);
            let out = ng
                .try_classification(&model, cap, logits, y.clone())
                .unwrap();
            let factors = Factors::from_grads(&model, &out.grads).unwrap();
            let blocks: Vec<&Block> = factors.blocks.iter().collect();
            host(dense_fisher(&blocks))
        };
        let sampled = fisher_of(FisherKind::Sampled {
            samples: 16_000 / m,
        });
        let empirical = fisher_of(FisherKind::Empirical);
        let err = frob_rel(&sampled, &exact);
        let emp_err = frob_rel(&empirical, &exact);
        println!(
            "{name} {curvature_batch:?}: sampled rel err {err:.4}, empirical rel err {emp_err:.4}"
        );
        assert!(
            err <= 0.05,
            "{name}: sampled Fisher rel Frobenius error {err:.4} > 0.05"
        );
        assert!(
            emp_err > 0.2,
            "{name}: empirical Fisher too close to exact ({emp_err:.4})"
        );
        // The exact Fisher (one row per class, √p-weighted) is the host's, to rounding.
        let exact_kind = fisher_of(FisherKind::Exact { classes: c });
        let exact_err = frob_rel(&exact_kind, &exact);
        assert!(
            exact_err <= 1e-4,
            "{name} {curvature_batch:?}: FisherKind::Exact rel Frobenius error {exact_err:e}"
        );
        // … and the per-example loop's exact Fisher.
        let ng = NaturalGradientConfig::new()
            .with_fisher(FisherKind::Exact { classes: c })
            .with_curvature_batch(curvature_batch)
            .build();
        let looped = burn_natgrad::per_example_classification(
            &ng,
            &model,
            x.clone(),
            y.clone(),
            |m: &Mlp, x| m.logits2(x, &mut burn_natgrad::Capture::disabled()),
        )
        .unwrap();
        let factors = Factors::from_grads(&model, &looped.grads).unwrap();
        let blocks: Vec<&Block> = factors.blocks.iter().collect();
        let loop_err = frob_rel(&host(dense_fisher(&blocks)), &exact);
        assert!(
            loop_err <= 1e-4,
            "{name}: the loop's exact Fisher rel error {loop_err:e}"
        );
        if m < n {
            let whole_err = frob_rel(&sampled, &exact_whole);
            assert!(
                whole_err > 0.2,
                "{name}: curvature-batch Fisher too close to the whole batch's ({whole_err:.4})"
            );
        }
    }
}
