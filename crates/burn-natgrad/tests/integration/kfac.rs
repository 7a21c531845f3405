//! KFAC against a dense Kronecker solve formed on the host in f64 from the captured factors
//! (the oracle builds `A`, `G`, their moving averages, the π-corrected damping and the
//! `(in·out)²` Kronecker matrix itself), over two steps (moving average, inverse schedule), for
//! Linear, bias, Embedding, LayerNorm and Conv2d (KFC) blocks, the empirical and the sampled Fisher, on every
//! backend; and its state through the optimizer record.

use crate::common::*;
use crate::embedding_norm::{token_ids, TokenNet};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use burn_natgrad::testing::{cholesky_solve, BlockFactors, Factors};
use burn_natgrad::{Curvature, FisherKind, KfacConfig, NaturalGradient, NaturalGradientConfig};

pub(crate) const DAMPING: f64 = 0.1;
pub(crate) const DECAY: f64 = 0.7;

/// A block's KFAC factors on the host: the left one (dense `n × n`, a diagonal expanded), if
/// any, and the right one.
#[derive(Clone)]
pub(crate) struct HostFactors {
    pub(crate) left: Option<(usize, Vec<f64>)>,
    pub(crate) right: (usize, Vec<f64>),
}

fn outer_sum(rows: &[f64], n: usize, scale: f64) -> (usize, Vec<f64>) {
    let mut f = vec![0.0; n * n];
    for r in rows.chunks_exact(n) {
        for i in 0..n {
            for j in 0..n {
                f[i * n + j] += r[i] * r[j] * scale;
            }
        }
    }
    (n, f)
}

fn host_factors(b: &BlockFactors) -> HostFactors {
    match b {
        BlockFactors::Weight { input, output_grad } => {
            let [p, t, d_in] = input.dims();
            let d_out = output_grad.dims()[2];
            HostFactors {
                left: Some(outer_sum(&host(input.clone()), d_in, 1.0 / (p * t) as f64)),
                right: outer_sum(&host(output_grad.clone()), d_out, 1.0),
            }
        }
        BlockFactors::Gather {
            ids,
            output_grad,
            vocab,
        } => {
            let ids = host(ids.clone());
            let mut a = vec![0.0; vocab * vocab];
            for &id in &ids {
                a[id as usize * vocab + id as usize] += 1.0 / ids.len() as f64;
            }
            HostFactors {
                left: Some((*vocab, a)),
                right: outer_sum(&host(output_grad.clone()), output_grad.dims()[2], 1.0),
            }
        }
        BlockFactors::Bias { output_grad: rows } | BlockFactors::Dense { rows } => HostFactors {
            left: None,
            right: outer_sum(&host(rows.clone()), rows.dims()[1], 1.0),
        },
    }
}

fn ema(old: &HostFactors, new: &HostFactors) -> HostFactors {
    let mix = |(n, a): &(usize, Vec<f64>), (_, b): &(usize, Vec<f64>)| {
        let v = a.iter().zip(b).map(|(x, y)| DECAY * x + (1.0 - DECAY) * y);
        (*n, v.collect())
    };
    HostFactors {
        left: old
            .left
            .as_ref()
            .zip(new.left.as_ref())
            .map(|(a, b)| mix(a, b)),
        right: mix(&old.right, &new.right),
    }
}

fn mean_eigenvalue((n, f): &(usize, Vec<f64>)) -> f64 {
    (0..*n).map(|i| f[i * n + i]).sum::<f64>() / *n as f64
}

/// The host factors of every block of a captured batch.
pub(crate) fn batch_factors<M: Module>(model: &M, grads: &GradientsParams) -> Vec<HostFactors> {
    Factors::from_grads(model, grads)
        .unwrap()
        .blocks
        .iter()
        .map(|b| host_factors(&b.factors))
        .collect()
}

/// The moving averages of `old` and a captured batch's factors.
pub(crate) fn averaged<M: Module>(
    model: &M,
    grads: &GradientsParams,
    old: &[HostFactors],
) -> Vec<HostFactors> {
    batch_factors(model, grads)
        .iter()
        .zip(old)
        .map(|(new, old)| ema(old, new))
        .collect()
}

/// `(L' ⊗ R')⁻¹ g` with `L' = L + π√λ I`, `R' = R + √λ/π I` as one dense Kronecker matrix, or
/// `(F + λI)⁻¹ g` for a single factor.
pub(crate) fn kron_solve(f: &HostFactors, g: &[f64], damping: f64) -> Vec<f64> {
    let (nr, r) = &f.right;
    let Some(left) = &f.left else {
        return cholesky_solve(r, g, *nr, damping).unwrap();
    };
    let pi = (mean_eigenvalue(left) / mean_eigenvalue(&f.right)).sqrt();
    let (nl, l) = left;
    let root = damping.sqrt();
    let n = nl * nr;
    let mut k = vec![0.0; n * n];
    for i in 0..*nl {
        for j in 0..*nl {
            let lij = l[i * nl + j] + if i == j { pi * root } else { 0.0 };
            for o in 0..*nr {
                for q in 0..*nr {
                    let roq = r[o * nr + q] + if o == q { root / pi } else { 0.0 };
                    k[(i * nr + o) * n + j * nr + q] = lij * roq;
                }
            }
        }
    }
    cholesky_solve(&k, g, n, 0.0).unwrap()
}

/// One of the two models, its batch inputs, and how they run under a capture.
pub(crate) trait Net: Module + Clone {
    fn grads(&self, ng: &NaturalGradient, seed: u64, device: &Device) -> GradientsParams;
}

impl Net for Mlp {
    fn grads(&self, ng: &NaturalGradient, seed: u64, device: &Device) -> GradientsParams {
        let width = self.layers[0].weight.dims()[0];
        let (mut cap, x) = ng.capture(tensor(seed, [8, width], 1.0, device));
        let logits = self.logits2(x, &mut cap);
        ng.classification(self, cap, logits, labels(seed + 1, 8, 3, device))
            .grads
    }
}

impl Net for TokenNet {
    fn grads(&self, ng: &NaturalGradient, seed: u64, device: &Device) -> GradientsParams {
        let (mut cap, x) = ng.capture(token_ids(6, seed, device));
        let logits = self.logits(x, &mut cap);
        ng.classification(self, cap, logits, labels(seed + 1, 6, 3, device))
            .grads
    }
}

impl Net for ConvNet {
    fn grads(&self, ng: &NaturalGradient, seed: u64, device: &Device) -> GradientsParams {
        let (mut cap, x) = ng.capture(tensor(seed, [5, 2, 6, 5], 1.0, device));
        let logits = self.logits(x, &mut cap);
        ng.classification(self, cap, logits, labels(seed + 1, 5, 3, device))
            .grads
    }
}

/// A one-group convolution with stride 2, `[N, 2, 6, 5]` inputs: KFAC gets its Kronecker
/// factors (KFC).
pub(crate) fn conv_net(device: &Device) -> ConvNet {
    let config = burn::nn::conv::Conv2dConfig::new([2, 3], [3, 2]).with_stride([2, 1]);
    ConvNet::new(config, [6, 5], 3, 31, device)
}

/// KFAC with the block limit `limit` (0: a convolution gets its Kronecker factors).
fn kfac_limited(fisher: FisherKind, inverse_period: usize, limit: usize) -> NaturalGradient {
    map_kfac(kfac_config(fisher, inverse_period), |k| {
        k.with_block_limit(limit)
    })
    .build()
}

/// The KFAC configuration of these tests (and `factor_period.rs`'s): decay [`DECAY`], damping
/// [`DAMPING`], inverses every `inverse_period` steps.
pub(crate) fn kfac_config(fisher: FisherKind, inverse_period: usize) -> NaturalGradientConfig {
    NaturalGradientConfig::new()
        .with_fisher(fisher)
        .with_curvature(Curvature::Kfac(
            KfacConfig::new()
                .with_factor_decay(DECAY)
                .with_inv_update_steps(inverse_period),
        ))
        .with_damping(DAMPING)
}

/// The oracle's directions (module order, as `gathered`) from the factors used for the
/// inverses and the batch's gradients, and the solver's, compared; and `dᵀFd`.
pub(crate) fn assert_direction<M: Module>(
    what: &str,
    ng: &NaturalGradient,
    model: &M,
    grads: &GradientsParams,
    inverses: &[HostFactors],
) {
    let factors = Factors::from_grads(model, grads).unwrap();
    let damping = ng.damping();
    let expected: Vec<f64> = factors
        .blocks
        .iter()
        .enumerate()
        .flat_map(|(i, _)| kron_solve(&inverses[i], &host(factors.gradient(i)), damping))
        .collect();
    let pre = ng.precondition(model, 1.0, grads).unwrap();
    let mut got = Vec::new();
    model.visit(&mut Gather {
        grads: pre.directions.as_ref().expect("a finite step"),
        out: &mut got,
    });
    let err = rel_err(&got, &expected);
    assert!(err <= 1e-4, "{what}: KFAC direction rel err {err:e}");
    let blocks: Vec<_> = factors.blocks.iter().collect();
    let q = dense_quadratic(&blocks, &got);
    let q_err = (pre.quadratic - q).abs() / q.abs().max(1e-30);
    assert!(q_err <= 1e-4, "{what}: dᵀFd {} vs {q}", pre.quadratic);
}

/// Step 1 inverts the batch's factors; step 2 inverts their moving average when the period is
/// 1, and reuses step 1's inverses when it is 3.
fn check<M: Net>(name: &str, model: M, device: &Device, fisher: FisherKind, limit: usize) {
    for period in [1, 3] {
        let what = format!("{name} {fisher:?} period {period} block limit {limit}");
        let ng = kfac_limited(fisher, period, limit);
        let mut optim = ng.module_optimizer();
        let grads1 = model.grads(&ng, 11, device);
        let f1: Vec<HostFactors> = batch_factors(&model, &grads1);
        assert_direction(&format!("{what}, step 1"), &ng, &model, &grads1, &f1);
        let model = ng.step(&mut optim, 0.5, model.clone(), grads1);
        let grads2 = model.grads(&ng, 23, device);
        let f2: Vec<HostFactors> = averaged(&model, &grads2, &f1);
        let inverses = if period == 1 { &f2 } else { &f1 };
        assert_direction(&format!("{what}, step 2"), &ng, &model, &grads2, inverses);
    }
}

#[test]
fn kfac_matches_a_dense_kronecker_solve() {
    for (name, device) in backends() {
        for fisher in [FisherKind::Empirical, FisherKind::Sampled { samples: 2 }] {
            let mlp = Mlp::new(&[4, 6, 3], true, 21, &device);
            check(name, mlp, &device, fisher, 2048);
            check(name, TokenNet::new(&device), &device, fisher, 2048);
            // The convolution's exact block, then its Kronecker factors (KFC).
            for limit in [2048, 0] {
                check(name, conv_net(&device), &device, fisher, limit);
            }
        }
    }
}

/// With low-rank inverses of rank 8 ([`KfacInverse::LowRank`](burn_natgrad::KfacInverse)),
/// the first layer's `40 × 40` input factor gets a low-rank-plus-identity inverse; a batch of 8
/// gives it rank 8, so the low-rank form is exact and the direction is the dense Kronecker
/// solve's (step 2 reuses step 1's inverses). The moving average of two batches has rank 16:
/// the inverses then differ from the dense ones, but by less than the factor's tail.
#[test]
fn kfac_with_a_rank_covering_the_factor_matches_the_dense_solve() {
    for (name, device) in backends() {
        for fisher in [FisherKind::Empirical, FisherKind::Sampled { samples: 2 }] {
            let what = format!("{name} {fisher:?} rank 8");
            let config = |period| {
                map_kfac(kfac_config(fisher, period), |k| {
                    k.with_inverse(inverse(Some(8)))
                })
            };
            let ng = config(3).build();
            let mut optim = ng.module_optimizer();
            let model = Mlp::new(&[40, 6, 3], true, 21, &device);
            let grads1 = model.grads(&ng, 11, &device);
            let f1: Vec<HostFactors> = batch_factors(&model, &grads1);
            assert_direction(&format!("{what}, step 1"), &ng, &model, &grads1, &f1);
            let model = ng.step(&mut optim, 0.5, model, grads1);
            let grads2 = model.grads(&ng, 23, &device);
            assert_direction(&format!("{what}, step 2"), &ng, &model, &grads2, &f1);
            // Inverting the average (period 1): no longer the dense solve.
            let every = config(1).build();
            let mut optim = every.module_optimizer();
            let model = Mlp::new(&[40, 6, 3], true, 21, &device);
            let grads1 = model.grads(&every, 11, &device);
            let f1: Vec<HostFactors> = batch_factors(&model, &grads1);
            let model = every.step(&mut optim, 0.5, model, grads1);
            let grads2 = model.grads(&every, 23, &device);
            let f2 = averaged(&model, &grads2, &f1);
            let msg = panic_message(|| {
                assert_direction(&what, &every, &model, &grads2, &f2);
            });
            assert!(msg.contains("rel err"), "{what}: {msg}");
        }
    }
}

/// When the adaptive damping moves `λ`, the inverses are recomputed at the next step even
/// before their period is up: step 2 inverts the moving average at the new damping.
#[test]
fn kfac_inverts_again_when_the_damping_moves() {
    for (name, device) in backends() {
        let ng = kfac_config(FisherKind::Empirical, 3)
            .with_adaptive_damping(Some(
                burn_natgrad::AdaptiveDampingConfig::new().with_period(1),
            ))
            .build();
        let mut optim = ng.module_optimizer();
        let model = Mlp::new(&[4, 6, 3], true, 21, &device);
        let grads1 = model.grads(&ng, 11, &device);
        let f1: Vec<HostFactors> = batch_factors(&model, &grads1);
        let model = ng.step(&mut optim, 0.5, model, grads1);
        // A loss that rose by 1: the damping grows.
        let moved = ng.adapt_damping(0.0, 1.0).expect("an adaptation").damping;
        assert!(moved > DAMPING, "{name}");
        let grads2 = model.grads(&ng, 23, &device);
        let f2: Vec<HostFactors> = averaged(&model, &grads2, &f1);
        assert_direction(&format!("{name}, new damping"), &ng, &model, &grads2, &f2);
    }
}

/// A record saved after two steps (period 3: step 3 reuses step 1's inverses) and loaded into
/// another optimizer gives the same third direction; without the record it differs.
#[test]
fn kfac_state_round_trips_through_the_optimizer_record() {
    for (name, device) in backends() {
        for (width, rank) in [(4, None), (40, Some(8))] {
            let what = format!("{name} rank {rank:?}");
            round_trip(&what, width, rank, &device);
        }
    }
}

/// The record test of one width of the test MLP's input and one rank of the inverses.
fn round_trip(name: &str, width: usize, rank: Option<usize>, device: &Device) {
    let kfac = |fisher, period| {
        map_kfac(kfac_config(fisher, period), |k| {
            k.with_inverse(inverse(rank))
        })
        .build()
    };
    {
        let device = device.clone();
        let ng = kfac(FisherKind::Empirical, 3);
        let mut optim = ng.module_optimizer();
        let mut model = Mlp::new(&[width, 6, 3], true, 21, &device);
        for seed in [11, 23] {
            let grads = model.grads(&ng, seed, &device);
            model = ng.step(&mut optim, 0.5, model, grads);
        }
        let grads = model.grads(&ng, 37, &device);
        let straight = directions_of(&ng, &model, 1.0, &grads);

        let restored_ng = kfac(FisherKind::Empirical, 3);
        let bytes = optim.into_bytes().unwrap();
        let restored: ModuleOptimizer = restored_ng.module_optimizer().from_bytes(bytes).unwrap();
        assert_eq!(
            restored_ng.resume_from(&restored, &model),
            4,
            "{name}: 4 blocks"
        );
        let resumed = directions_of(&restored_ng, &model, 1.0, &grads);
        let err = rel_err(&resumed, &straight);
        assert!(
            err <= 1e-6,
            "{name}: resumed KFAC direction differs ({err:e})"
        );

        let fresh = kfac(FisherKind::Empirical, 3);
        let differs = rel_err(&directions_of(&fresh, &model, 1.0, &grads), &straight);
        assert!(differs > 1e-3, "{name}: the state made no difference");

        // `precondition` before reading the record back, then `apply`: refused, nothing moves.
        let late = kfac(FisherKind::Empirical, 3);
        let mut loaded = late.module_optimizer().load_record(restored.to_record());
        let pre = late.precondition(&model, 1.0, &grads).unwrap();
        let msg = panic_message(|| {
            late.apply(&mut loaded, model.clone(), pre);
        });
        assert!(msg.contains("resume_from"), "{name}: {msg}");
    }
}
