//! KFAC with a factor period above 1: the steps between two factor updates form no Fisher rows
//! (only the Linear layers record theirs, for the direction from the rows), take the plain
//! gradient, and precondition it with the inverses in force, against the host
//! oracle of `kfac.rs` (the dense Kronecker solve of the last update's factors, applied to the
//! gradient of a captured step on the same batch); the schedule through the optimizer record;
//! and the configurations refused.

use crate::common::*;
use crate::kfac::{
    assert_direction, averaged, batch_factors, conv_net, kfac_config, kron_solve, HostFactors, Net,
    DAMPING,
};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use burn_natgrad::testing::{BlockFactors, Factors};
use burn_natgrad::{
    AdaptiveDampingConfig, Curvature, FisherKind, KfacConfig, NaturalGradient,
    NaturalGradientConfig, UncoveredPolicy,
};

/// KFAC with factors every `factor_period` steps and inverses at every factor update.
fn kfac(
    fisher: FisherKind,
    factor_period: usize,
    limit: usize,
    kl_max: Option<f64>,
) -> NaturalGradient {
    kfac_ranked(fisher, factor_period, limit, kl_max, None)
}

/// [`kfac`] with low-rank inverses of `rank` eigenpairs (`None`: dense).
fn kfac_ranked(
    fisher: FisherKind,
    factor_period: usize,
    limit: usize,
    kl_max: Option<f64>,
    rank: Option<usize>,
) -> NaturalGradient {
    map_kfac(kfac_config(fisher, 1), |k| {
        k.with_inverse(inverse(rank))
            .with_block_limit(limit)
            .with_factor_update_steps(factor_period)
            .with_inv_update_steps(factor_period)
    })
    .with_kl_max(kl_max)
    .build()
}

/// The tensors `grads` holds for a module's trainable parameters, one host vector each, in
/// module order.
struct PerParam<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f64>>,
}

impl ModuleVisitor for PerParam<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(t) = self.grads.get::<D>(param.id) {
            self.out.push(host(t));
        }
    }
}

fn per_param<M: Module>(model: &M, grads: &GradientsParams) -> Vec<Vec<f64>> {
    let mut v = PerParam {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// The gradient of every trainable parameter of a reusing step, in module order: explicit for
/// the layers that ran plainly, implicit (`Σ xᵀΔ` of the recorded rows) for the Linear layers,
/// which record their rows on such a step too (every model here has one) when `rows` says so.
/// Checks that those rows are the batch's own (`n` of them, no Fisher rows) and the only
/// blocks; without `rows`, that nothing was recorded.
fn reused_gradients<M: Module>(
    what: &str,
    model: &M,
    grads: &GradientsParams,
    n: usize,
    rows: bool,
) -> Vec<Vec<f64>> {
    let collected = Factors::collect(model, grads, UncoveredPolicy::DampedGradient);
    if !rows {
        let msg = collected.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("no per-example factors"),
            "{what}: rows recorded: {msg}"
        );
        return per_param(model, grads);
    }
    let factors =
        collected.unwrap_or_else(|e| panic!("{what}: the Linear layers record their rows: {e}"));
    for b in &factors.blocks {
        assert!(
            matches!(
                b.factors,
                BlockFactors::Weight { .. } | BlockFactors::Bias { .. }
            ) && b.factors.rows() == n
                && b.data.is_none(),
            "{what}: `{}` has Fisher rows on a reusing step",
            b.path
        );
    }
    let mut ids = ParamIds(Vec::new());
    model.visit(&mut ids);
    ids.0
        .into_iter()
        .filter_map(|id| match factors.blocks.iter().position(|b| b.id == id) {
            Some(i) => Some(host(factors.gradient(i))),
            None => factors
                .uncovered
                .iter()
                .find(|u| u.id == id)
                .map(|u| host(u.grad.clone())),
        })
        .collect()
}

struct ParamIds(Vec<ParamId>);

impl ModuleVisitor for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id);
    }
}

/// `vec(d)ᵀ (L ⊗ R) vec(d)` of undamped host factors (`d` the block's matrix view, row-major).
fn kron_quadratic(f: &HostFactors, d: &[f64]) -> f64 {
    let (nr, r) = &f.right;
    let (nl, l) = match &f.left {
        Some((nl, l)) => (*nl, l.clone()),
        None => (1, vec![1.0]),
    };
    let mut q = 0.0;
    for i in 0..nl {
        for j in 0..nl {
            for o in 0..*nr {
                for p in 0..*nr {
                    q += d[i * nr + o] * l[i * nl + j] * r[o * nr + p] * d[j * nr + p];
                }
            }
        }
    }
    q
}

/// Steps 1–4 update the factors (the warm-up: `⌈1 / (1 − 0.7)⌉ = 4` batches); steps 5 and 6
/// reuse them on the plain gradient, which equals a captured step's on the same batch; step 7
/// averages its factors with those of steps 1–4 only.
fn check<M: Net>(name: &str, model: M, device: &Device, fisher: FisherKind, limit: usize) {
    check_ranked(name, model, device, fisher, limit, None, true);
}

/// [`check`] with the inverses' `rank`; `rows`: whether the reusing steps record some Linear
/// layer's rows (`kfac::rows_form`), or take the plain gradient of every layer.
fn check_ranked<M: Net>(
    name: &str,
    model: M,
    device: &Device,
    fisher: FisherKind,
    limit: usize,
    rank: Option<usize>,
    rows: bool,
) {
    let what = format!("{name} {fisher:?} block limit {limit} rank {rank:?}");
    // A trust region that never binds, so that every step reports its dᵀFd.
    let ng = kfac_ranked(fisher, 3, limit, Some(1e12), rank);
    let reference = kfac_ranked(fisher, 1, limit, None, rank);
    let mut optim = ng.module_optimizer();
    let mut model = model;
    let mut averages: Option<Vec<HostFactors>> = None;
    for (step, seed) in [(1, 11), (2, 13), (3, 17), (4, 19)] {
        let what = format!("{what}, warm-up step {step}");
        assert!(ng.factors_due(), "{what}: updates the factors");
        let grads = model.grads(&ng, seed, device);
        let f = match &averages {
            None => batch_factors(&model, &grads),
            Some(old) => averaged(&model, &grads, old),
        };
        assert_direction(&what, &ng, &model, &grads, &f);
        averages = Some(f);
        model = ng.step(&mut optim, 0.5, model, grads);
    }
    let f4 = averages.expect("four updates");
    for (step, seed) in [(5, 23), (6, 29)] {
        let what = format!("{what}, step {step}");
        assert!(!ng.factors_due(), "{what}: reuses the factors");
        let grads = model.grads(&ng, seed, device);
        let captured = model.grads(&reference, seed, device);
        let factors = Factors::from_grads(&model, &captured).unwrap();
        let first = &factors.blocks[0];
        let n = first
            .data
            .as_ref()
            .map_or(first.factors.rows(), |d| d.factors.rows());
        let plain = reused_gradients(&what, &model, &grads, n, rows);
        let expected_g: Vec<f64> = (0..factors.blocks.len())
            .flat_map(|i| host(factors.gradient(i)))
            .collect();
        let err = rel_err(&plain.concat(), &expected_g);
        assert!(err <= 1e-5, "{what}: plain gradient rel err {err:e}");

        let pre = ng.precondition(&model, 1.0, &grads).unwrap();
        let got = per_param(&model, pre.directions.as_ref().expect("a finite step"));
        let expected: Vec<f64> = plain
            .iter()
            .zip(&f4)
            .flat_map(|(g, f)| kron_solve(f, g, DAMPING))
            .collect();
        let err = rel_err(&got.concat(), &expected);
        assert!(err <= 1e-4, "{what}: direction rel err {err:e}");
        let q: f64 = got.iter().zip(&f4).map(|(d, f)| kron_quadratic(f, d)).sum();
        let q_err = (pre.quadratic - q).abs() / q.abs().max(1e-30);
        assert!(q_err <= 1e-4, "{what}: dᵀFd {} vs {q}", pre.quadratic);
        model = ng.step(&mut optim, 0.5, model, grads);
    }
    assert!(ng.factors_due(), "{what}: step 7 updates the factors");
    let grads = model.grads(&ng, 31, device);
    let f7 = averaged(&model, &grads, &f4);
    assert_direction(&format!("{what}, step 7"), &ng, &model, &grads, &f7);
}

#[test]
fn reused_steps_precondition_the_plain_gradient_with_the_inverses_in_force() {
    for (name, device) in backends() {
        for fisher in [FisherKind::Empirical, FisherKind::Sampled { samples: 2 }] {
            let mlp = Mlp::new(&[4, 6, 3], true, 21, &device);
            check(name, mlp, &device, fisher, 2048);
            // Wider than the batch of 8: on the reusing steps the first layer's direction
            // comes from its rows on both sides, the second's on its output side
            // (`kfac/factored.rs`; captured steps keep the gradient-first product).
            let wide = Mlp::new(&[12, 10, 3], true, 21, &device);
            check(name, wide, &device, fisher, 2048);
            // Low-rank inverses of the first layer's 164-wide input factor, exact while its
            // rank (8 per batch, 40 after five) is within 40. With 2 outputs its rows would
            // not pay, so the reusing steps take its plain gradient; with 10 the left inverse
            // joins the rows' product (`kfac::rows_form`, `KfacState::left_rows_mul`).
            let ranked = Mlp::new(&[164, 2, 3], true, 21, &device);
            check_ranked(name, ranked, &device, fisher, 2048, Some(40), false);
            let fused = Mlp::new(&[164, 10, 3], true, 21, &device);
            check_ranked(name, fused, &device, fisher, 2048, Some(40), true);
            check(
                name,
                crate::embedding_norm::TokenNet::new(&device),
                &device,
                fisher,
                2048,
            );
            for limit in [2048, 0] {
                check(name, conv_net(&device), &device, fisher, limit);
            }
        }
    }
}

/// The test MLP after one step of `ng` per seed (lr 0.5), and its optimizer.
fn trained(ng: &NaturalGradient, seeds: &[u64], device: &Device) -> (ModuleOptimizer, Mlp) {
    let mut optim = ng.module_optimizer();
    let mut model = Mlp::new(&[4, 6, 3], true, 21, device);
    for &seed in seeds {
        let grads = model.grads(ng, seed, device);
        model = ng.step(&mut optim, 0.5, model, grads);
    }
    (optim, model)
}

/// The count of reusing steps travels in the record: after the warm-up's four factor updates
/// and two reusing steps (period 3), a resumed optimizer updates the factors next, as the
/// uninterrupted one does, with the same averages; an optimizer without them refuses reusing
/// gradients.
#[test]
fn the_factor_schedule_round_trips_through_the_optimizer_record() {
    for (name, device) in backends() {
        let ng = kfac(FisherKind::Empirical, 3, 2048, None);
        let (mut optim, model) = trained(&ng, &[11, 13, 17, 19, 23, 29], &device);
        assert_eq!(
            ng.stats().reused,
            2,
            "{name}: steps 5 and 6 reused the factors"
        );
        let restored_ng = kfac(FisherKind::Empirical, 3, 2048, None);
        let bytes = optim.clone().into_bytes().unwrap();
        let restored: ModuleOptimizer = restored_ng.module_optimizer().from_bytes(bytes).unwrap();
        assert_eq!(restored_ng.resume_from(&restored, &model), 4, "{name}");
        assert!(
            ng.factors_due(),
            "{name}: the fourth step updates the factors"
        );
        assert!(
            restored_ng.factors_due(),
            "{name}: the record kept the reuse count"
        );
        let grads = model.grads(&ng, 31, &device);
        let straight = directions_of(&ng, &model, 1.0, &grads);
        let resumed = directions_of(&restored_ng, &model, 1.0, &grads);
        let err = rel_err(&resumed, &straight);
        assert!(err <= 1e-6, "{name}: resumed direction differs ({err:e})");

        // A reusing step's gradients, for an optimizer that holds no factors.
        let model = ng.step(&mut optim, 0.5, model, grads);
        assert!(!ng.factors_due(), "{name}");
        let grads = model.grads(&ng, 37, &device);
        let fresh = kfac(FisherKind::Empirical, 3, 2048, None);
        let err = fresh
            .precondition(&model, 1.0, &grads)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds none"), "{name}: {err}");
        let full = NaturalGradientConfig::new().build();
        let err = full
            .precondition(&model, 1.0, &grads)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not use KFAC"), "{name}: {err}");
    }
}

#[test]
fn a_bad_factor_period_is_refused() {
    let msg = |config: NaturalGradientConfig| config.try_build().unwrap_err().to_string();
    let kfac = |k: KfacConfig| NaturalGradientConfig::new().with_curvature(Curvature::Kfac(k));
    let m = msg(kfac(KfacConfig::new().with_factor_update_steps(0)));
    assert!(
        m.contains("`curvature.factor_update_steps`") && m.contains("at least 1"),
        "{m}"
    );
    let adaptive = kfac(KfacConfig::new().with_factor_update_steps(2))
        .with_adaptive_damping(Some(AdaptiveDampingConfig::new()));
    let m = msg(adaptive);
    assert!(m.contains("adaptive damping"), "{m}");
}

/// A reusing step on a batch with a NaN is a step to skip, with its reason, as a captured one is.
#[test]
fn a_non_finite_reusing_step_is_skipped() {
    for (name, device) in backends() {
        let ng = kfac(FisherKind::Empirical, 3, 2048, None);
        let (_, model) = trained(&ng, &[11, 13, 17, 19], &device);
        assert!(!ng.factors_due(), "{name}");
        let x = tensor(23, [8, 4], 1.0, &device).slice_fill([0..1, 0..1], f32::NAN);
        let (mut cap, x) = ng.capture(x);
        assert!(cap.reuses_factors(), "{name}");
        let logits = model.logits2(x, &mut cap);
        let grads = ng
            .classification(&model, cap, logits, labels(24, 8, 3, &device))
            .grads;
        let pre = ng.precondition(&model, 1.0, &grads).unwrap();
        assert!(
            pre.directions.is_none(),
            "{name}: a NaN step was not skipped"
        );
        let reason = pre.skip_reason.unwrap_or_default();
        assert!(reason.contains("reuses KFAC's factors"), "{name}: {reason}");
    }
}
