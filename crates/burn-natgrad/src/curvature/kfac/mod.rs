//! Kronecker-factored approximate curvature (KFAC) from the same captured factors as the Gram
//! solve (Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
//! Curvature", 2015; for weight sharing, the "expand" setting of Eschenhagen, Immer, Turner,
//! Schneider & Hennig, "Kronecker-Factored Approximate Curvature for Modern Neural Network
//! Architectures", 2023).
//!
//! Each parameter tensor gets its own block, approximated from its factors (scaled so that the
//! block's Fisher is `UᵀU`, see [`FisherKind`](crate::FisherKind)):
//!
//! * a weight (`[P, T, in]` inputs `x`, `[M, T, out]` output gradients `δ`): `F ≈ A ⊗ G` with
//!   `A = Σ_{p,t} x xᵀ / (P·T)` and `G = Σ_{m,t} δ δᵀ`, so that `(A ⊗ G) vec(V) = A V G`; a
//!   one-group convolution is such a block with its output gradients as the first factor and
//!   its patches as the second (KFC: Grosse & Martens, "A Kronecker-factored approximate Fisher
//!   matrix for convolution layers", 2016), the scale `1/(P·T)` moving between the factors,
//!   which the π-corrected damping below does not see;
//! * an embedding table (a gather): the same, with `A` diagonal (how often each id is read);
//! * a bias, or any parameter with explicit rows of at most
//!   [`block_limit`](crate::KfacConfig::block_limit) entries: its block
//!   `UᵀU` itself; larger explicit rows: their diagonal.
//!
//! The factors are exponential moving averages over steps (decay `ε`); the damped inverse uses
//! factored Tikhonov damping with the π correction (Martens & Grosse §6.3):
//! `(A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹` with `π = √((tr A / dim A) / (tr G / dim G))`, recomputed
//! every [`inv_update_steps`](crate::KfacConfig::inv_update_steps) steps, in `f64` on the host,
//! or, for a factor wider than four times the rank of
//! [`KfacInverse::LowRank`](crate::KfacInverse::LowRank), as a low-rank-plus-identity inverse
//! from its randomized eigendecomposition ([`low_rank`](crate::linalg::low_rank), applied by
//! [`apply`]). The state of every block travels in the optimizer record ([`state`]).

mod apply;
mod config;
mod factored;
mod inverse;
pub(crate) mod reuse;
pub(crate) mod state;

pub use config::{KfacConfig, KfacInverse};
pub(crate) use factored::RowsPolicy;

use burn::module::ParamId;
use burn::tensor::{IndexingUpdateOp, Tensor};

use crate::factors::{products, BlockFactors, Factors};
pub(crate) use state::Velocity;
pub use state::{KfacState, NaturalGradientState};

/// What kind of block a [`KfacState`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// `A ⊗ G`, both full.
    Kronecker = 0,
    /// `diag(a) ⊗ G`: an embedding table.
    Gather = 1,
    /// The block `F` itself (`right`), no left factor.
    Full = 2,
    /// The diagonal of the block (`right`, `[1, n]`).
    Diagonal = 3,
}

impl Kind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        [Kind::Kronecker, Kind::Gather, Kind::Full, Kind::Diagonal]
            .into_iter()
            .find(|k| *k as u8 == v)
    }
}

/// The settings of a KFAC update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KfacOptions {
    /// EMA decay `ε` of the factors: `A ← ε A + (1 − ε) A_batch`.
    pub decay: f64,
    /// Recompute the inverses every this many updates.
    pub inverse_period: usize,
    /// Tikhonov damping `λ`.
    pub damping: f64,
    /// Explicit rows of at most this many entries get their whole block `UᵀU`, longer ones
    /// their diagonal.
    pub block_limit: usize,
    /// Kronecker factors wider than `4 · rank` get low-rank-plus-identity inverses with this
    /// many eigenpairs; `None`: every inverse dense.
    pub rank: Option<usize>,
}

/// The batch's factors of one block: its kind, left factor (if any) and right factor.
fn batch_factors(factors: &BlockFactors, o: &KfacOptions) -> (Kind, Option<Tensor<2>>, Tensor<2>) {
    let limit = o.block_limit;
    match factors {
        BlockFactors::Weight { input, output_grad } => {
            let [p, t, d_in] = input.dims();
            let [m, _, d_out] = output_grad.dims();
            let x = input.clone().reshape([p * t, d_in]);
            let d = output_grad.clone().reshape([m * t, d_out]);
            let a = x.clone().transpose().matmul(x).div_scalar((p * t) as f64);
            (Kind::Kronecker, Some(a), d.clone().transpose().matmul(d))
        }
        BlockFactors::Gather {
            ids,
            output_grad,
            vocab,
        } => {
            let [m, t, d_out] = output_grad.dims();
            let device = output_grad.device();
            let flat = ids.clone().reshape([m * t]).int();
            let counts = Tensor::<1>::zeros([*vocab], &device).select_assign(
                0,
                flat,
                Tensor::ones([m * t], &device),
                IndexingUpdateOp::Add,
            );
            let a = counts.div_scalar((m * t) as f64).reshape([*vocab, 1]);
            let d = output_grad.clone().reshape([m * t, d_out]);
            (Kind::Gather, Some(a), d.clone().transpose().matmul(d))
        }
        BlockFactors::Bias { output_grad: rows } => (
            Kind::Full,
            None,
            rows.clone().transpose().matmul(rows.clone()),
        ),
        BlockFactors::Dense { rows } if rows.dims()[1] <= limit => (
            Kind::Full,
            None,
            rows.clone().transpose().matmul(rows.clone()),
        ),
        BlockFactors::Dense { rows } => (Kind::Diagonal, None, rows.clone().square().sum_dim(0)),
    }
}

/// `decay · old + (1 − decay) · new`.
fn ema(old: &Tensor<2>, new: Tensor<2>, decay: f64) -> Tensor<2> {
    old.clone().mul_scalar(decay) + new.mul_scalar(1.0 - decay)
}

/// A block's state after one batch, before its inverses (when due) are computed.
pub(crate) struct Pending {
    state: KfacState,
    /// The inverses to compute, when due; otherwise `state` keeps the previous ones.
    planned: Option<inverse::Planned>,
}

/// The updated state of a block after one batch: the EMA of its factors, and the plan of
/// their inverses when due (the first update, every `inverse_period`-th, when the block changed
/// shape, or when the damping moved).
pub(crate) fn begin_update(
    previous: Option<&KfacState>,
    id: ParamId,
    factors: &BlockFactors,
    o: &KfacOptions,
) -> Pending {
    let (kind, left, right) = batch_factors(factors, o);
    let same = |p: &KfacState| {
        p.kind() == Some(kind)
            && p.right.dims() == right.dims()
            && p.left.as_ref().map(|l| l.dims()) == left.as_ref().map(|l| l.dims())
    };
    let (left, right, updates, previous) = match previous.filter(|p| same(p)) {
        Some(p) => (
            p.left
                .as_ref()
                .zip(left)
                .map(|(old, new)| ema(old, new, o.decay)),
            ema(&p.right, right, o.decay),
            p.updates,
            Some(p),
        ),
        None => (left, right, 0, None),
    };
    // The inverses in force are kept unless due, or computed with another damping or rank.
    let low = |f: Option<&Tensor<2>>| {
        kind != Kind::Full && f.is_some_and(|f| inverse::factor_rank(f.dims()[0], o.rank).is_some())
    };
    let same_form = |p: &KfacState| {
        p.left_coef.is_some() == (kind == Kind::Kronecker && low(left.as_ref()))
            && p.right_coef.is_some() == low(Some(&right))
    };
    let kept = previous.filter(|p| {
        !updates.is_multiple_of(o.inverse_period as u64) && p.damping == o.damping && same_form(p)
    });
    let planned = kept
        .is_none()
        .then(|| inverse::plan(kind, left.as_ref(), &right, o.damping, o.rank));
    // Until the plan runs, the right inverse is a placeholder (the factor itself).
    let (left_inv, right_inv, left_coef, right_coef) = match kept {
        Some(p) => (
            p.left_inv.clone(),
            p.right_inv.clone(),
            p.left_coef.clone(),
            p.right_coef.clone(),
        ),
        None => (None, right.clone(), None, None),
    };
    Pending {
        state: KfacState {
            param: id.val(),
            kind: kind as u8,
            left,
            right,
            left_inv,
            right_inv,
            left_coef,
            right_coef,
            updates: updates + 1,
            damping: o.damping,
            reused: None,
        },
        planned,
    }
}

/// Computes the inverses the blocks' plans hold, all together (spread over the cores), and
/// returns their states; `Err((i, which))` names block `i`'s factor that is not positive
/// definite or not finite.
pub(crate) fn finish_updates(
    pending: Vec<Pending>,
) -> Result<Vec<KfacState>, (usize, &'static str)> {
    let (states, plans): (Vec<KfacState>, Vec<Option<inverse::Planned>>) =
        pending.into_iter().map(|p| (p.state, p.planned)).unzip();
    let due: Vec<usize> = (0..plans.len()).filter(|&i| plans[i].is_some()).collect();
    let mut inverses = inverse::run(plans.into_iter().flatten().collect()).into_iter();
    let mut states = states;
    for i in due {
        let (left, right) = inverses
            .next()
            .expect("one result per plan")
            .map_err(|which| (i, which))?;
        let (left_inv, left_coef) = left.map_or((None, None), |l| (Some(l.inv), l.coef));
        states[i].left_inv = left_inv;
        states[i].left_coef = left_coef;
        states[i].right_inv = right.inv;
        states[i].right_coef = right.coef;
    }
    Ok(states)
}

/// [`begin_update`] and [`finish_updates`] of one block.
#[cfg(test)]
pub(crate) fn update(
    previous: Option<&KfacState>,
    id: ParamId,
    factors: &BlockFactors,
    o: &KfacOptions,
) -> Result<KfacState, &'static str> {
    finish_updates(vec![begin_update(previous, id, factors, o)])
        .map(|mut s| s.remove(0))
        .map_err(|(_, which)| which)
}

/// The KFAC direction of a gradient `g` in the block's matrix view.
pub(crate) fn direction(state: &KfacState, g: Tensor<2>) -> Tensor<2> {
    match (state.kind(), &state.left_inv) {
        (Some(Kind::Kronecker), Some(_)) => state.kronecker_mul(g),
        (Some(Kind::Gather), Some(a)) => state.right_mul(g * a.clone()),
        (Some(Kind::Full), None) => g.matmul(state.right_inv.clone()),
        (Some(Kind::Diagonal), None) => g * state.right_inv.clone(),
        _ => unreachable!("update builds consistent states"),
    }
}

/// A KFAC solve of every block, in block order.
pub(crate) struct Solution {
    /// The directions.
    pub directions: Vec<Tensor<2>>,
    /// `U d` (`[M, 1]`), so that `dᵀFd = ‖U d‖²` with the batch's own Fisher rows.
    pub ud: Tensor<2>,
    /// The blocks' new states.
    pub states: Vec<KfacState>,
    /// The gradients the directions were computed from (formed once, also for the adaptive
    /// damping's `gᵀd`).
    pub gradients: Vec<Tensor<2>>,
}

/// A KFAC solve of every block; `Err` names a block whose factor cannot be inverted.
pub(crate) fn solve(
    factors: &Factors,
    previous: impl Fn(ParamId) -> Option<KfacState>,
    o: &KfacOptions,
) -> Result<Solution, String> {
    let pending = factors
        .blocks
        .iter()
        .map(|b| begin_update(previous(b.id).as_ref(), b.id, &b.factors, o))
        .collect();
    let states = finish_updates(pending).map_err(|(i, which)| {
        format!(
            "KFAC: {which} of `{}` is not positive definite or not finite",
            factors.blocks[i].path
        )
    })?;
    let gradients: Vec<Tensor<2>> = (0..factors.blocks.len())
        .map(|i| factors.gradient(i))
        .collect();
    let directions: Vec<Tensor<2>> = states
        .iter()
        .zip(&gradients)
        .map(|(state, g)| direction(state, g.clone()))
        .collect();
    let blocks: Vec<_> = factors.blocks.iter().collect();
    let ud = products::project(&blocks, &directions);
    Ok(Solution {
        directions,
        ud,
        states,
        gradients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::cholesky::cholesky_solve;
    use crate::testing::devices::cpu_devices;
    use burn::tensor::Distribution;
    use inverse::host;

    fn host_vec(t: Tensor<2>) -> Vec<f64> {
        host(&t)
    }

    const LIMIT: usize = 2048;

    fn options(damping: f64) -> KfacOptions {
        KfacOptions {
            decay: 0.9,
            inverse_period: 1,
            damping,
            block_limit: LIMIT,
            rank: None,
        }
    }

    /// Explicit rows of at most `block_limit` entries get the damped inverse of their whole
    /// block, longer ones of its diagonal.
    #[test]
    fn explicit_rows_use_the_full_block_or_its_diagonal() {
        for device in cpu_devices() {
            let id = ParamId::new();
            for (n, kind) in [(5, Kind::Full), (LIMIT + 1, Kind::Diagonal)] {
                let rows = Tensor::<2>::random([3, n], Distribution::Normal(0.0, 1.0), &device);
                let g = Tensor::<2>::random([1, n], Distribution::Normal(0.0, 1.0), &device);
                let block = BlockFactors::Dense { rows: rows.clone() };
                let state = update(None, id, &block, &options(0.5)).unwrap();
                assert_eq!(state.kind(), Some(kind));
                let d = host_vec(direction(&state, g.clone()));
                let (r, gv) = (host_vec(rows), host_vec(g));
                let expected: Vec<f64> = if kind == Kind::Full {
                    let mut f = vec![0.0; n * n];
                    for row in r.chunks_exact(n) {
                        for i in 0..n {
                            for j in 0..n {
                                f[i * n + j] += row[i] * row[j];
                            }
                        }
                    }
                    cholesky_solve(&f, &gv, n, 0.5).unwrap()
                } else {
                    (0..n)
                        .map(|i| {
                            let f: f64 = r.chunks_exact(n).map(|row| row[i] * row[i]).sum();
                            gv[i] / (f + 0.5)
                        })
                        .collect()
                };
                let err = d
                    .iter()
                    .zip(&expected)
                    .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
                assert!(err < 1e-4, "{kind:?}: max error {err:e}");
            }
        }
    }

    /// A factor that is not finite is refused by name instead of giving a direction.
    #[test]
    fn a_non_finite_factor_is_refused() {
        for device in cpu_devices() {
            let rows = Tensor::<2>::from_floats([[1.0, f32::NAN], [0.5, 2.0]], &device);
            let block = BlockFactors::Bias { output_grad: rows };
            let err = update(None, ParamId::new(), &block, &options(1.0)).unwrap_err();
            assert_eq!(err, "its Fisher block");
        }
    }

    #[test]
    fn kinds_round_trip_through_their_byte() {
        for kind in [Kind::Kronecker, Kind::Gather, Kind::Full, Kind::Diagonal] {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(Kind::from_u8(9), None);
    }
}
