//! Solvers for the damped natural-gradient system `(F + λI) d = g`, with `F = UᵀU`.
//!
//! * [`SolverKind::Gram`]: the exact Woodbury / Sherman–Morrison–Woodbury identity in sample
//!   space, `(UᵀU + λI)⁻¹ g = (g − Uᵀ (UUᵀ + λI)⁻¹ U g) / λ` (Ren & Goldfarb, "Efficient
//!   Subsampled Gauss-Newton and Natural Gradient Methods for Training Neural Networks", 2019),
//!   with the `M × M` system solved by a Cholesky factorisation on the host in `f64`.
//! * [`SolverKind::CgSample`]: the same sample-space system `(UUᵀ + λI) β = U g` solved by
//!   conjugate gradient on the device.
//! * [`SolverKind::CgParam`]: conjugate gradient directly in parameter space with matrix-free
//!   Fisher-vector products `F v = Uᵀ(U v)` (Martens, "Deep learning via Hessian-free
//!   optimization", 2010).
//!
//! Conjugate gradient (Hestenes & Stiefel, 1952) keeps α and β as device tensors: no host read
//! per iteration. Convergence is checked on the host only every `check_every` iterations
//! (never when 0), where a read is the price of stopping early.

use burn::config::Config;
use burn::tensor::{Tensor, TensorData};

use crate::factors::uniform_weights;
use crate::factors::Block;
use crate::fisher::{back, fisher_vector_product, gram, gram_and_implicit_projection, project};

/// How the damped system is solved.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum SolverKind {
    /// Exact: Woodbury identity, `M × M` Cholesky solve on the host (`f64`).
    Gram,
    /// Conjugate gradient on the `M × M` sample-space (Gram) system, on the device.
    CgSample,
    /// Conjugate gradient in parameter space with matrix-free Fisher-vector products.
    CgParam,
}

/// Conjugate-gradient stopping rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgOptions {
    /// Iteration cap.
    pub max_iters: usize,
    /// Stop when `‖r‖ ≤ tolerance · ‖b‖`.
    pub tolerance: f64,
    /// Read the residual on the host every this many iterations to stop early; 0: never.
    pub check_every: usize,
}

/// A solved direction for a set of blocks.
#[derive(Debug, Clone)]
pub struct Solution {
    /// `d = (F + λI)⁻¹ g`, block by block, in each block's matrix view.
    pub direction: Vec<Tensor<2>>,
    /// `U d`, `[M, 1]`: `dᵀ F d = ‖U d‖²`.
    pub ud: Tensor<2>,
    /// Final relative residual `‖r‖ / ‖b‖` of the conjugate gradient (a `[1]` tensor), if CG ran.
    pub residual: Option<Tensor<1>>,
    /// Conjugate-gradient iterations run (0 for the direct solve).
    pub iterations: usize,
}

/// Smallest denominator used in CG's ratios, so that an exactly converged run stays finite.
const TINY: f64 = 1e-30;

/// The right-hand side `g` of the system, block by block.
// A `Tensor` handle is larger than a `Vec`; one value per solve: not worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Gradient {
    /// Explicit gradients, one per block, in each block's matrix view.
    Explicit(Vec<Tensor<2>>),
    /// `g = U_dᵀ (w·1)` with the scalar `w` (`[1]`) over each block's data rows (its Fisher rows
    /// when it has none): the gradient of a captured step (see [`Factors::gradient_weight`]).
    ///
    /// [`Factors::gradient_weight`]: crate::factors::Factors::gradient_weight
    Implicit(Tensor<1>),
}

/// Solves `(UᵀU + λI) d = g` for the given blocks.
pub fn solve(
    blocks: &[&Block],
    gradient: Gradient,
    kind: SolverKind,
    damping: f64,
    cg: &CgOptions,
) -> Solution {
    let m = blocks[0].factors.rows();
    match kind {
        SolverKind::Gram | SolverKind::CgSample => {
            // K = U Uᵀ and b = U g.
            let (k, b) = match &gradient {
                Gradient::Explicit(g) => (gram(blocks), project(blocks, g)),
                Gradient::Implicit(w) => {
                    let (k, b) = gram_and_implicit_projection(blocks);
                    (k, b * w.clone().reshape([1, 1]))
                }
            };
            let (beta, residual, iterations) = if kind == SolverKind::Gram {
                (gram_direct(&k, &b, damping), None, 0)
            } else {
                let (beta, res, it) = conjugate_gradient(
                    |p: &[Tensor<2>]| {
                        vec![k.clone().matmul(p[0].clone()) + p[0].clone().mul_scalar(damping)]
                    },
                    vec![b.clone()],
                    cg,
                );
                (beta.into_iter().next().unwrap(), Some(res), it)
            };
            // d = (g − Uᵀβ) / λ.
            let direction = match gradient {
                Gradient::Explicit(g) => g
                    .into_iter()
                    .zip(back(blocks, &beta))
                    .map(|(g, c)| (g - c).div_scalar(damping))
                    .collect(),
                Gradient::Implicit(w) => {
                    // (U_dᵀ (w·1) − Uᵀβ) / λ, one product per weight.
                    let fisher = beta.clone().div_scalar(-damping);
                    blocks
                        .iter()
                        .map(|blk| {
                            let n = blk.data.as_ref().map_or(m, |d| d.factors.rows());
                            let data = uniform_weights(n, &w).div_scalar(damping);
                            blk.back_data_and_fisher(&data, &fisher)
                        })
                        .collect()
                }
            };
            // U d = (U g − UUᵀ β) / λ.
            let ud = (b - k.matmul(beta)).div_scalar(damping);
            Solution {
                direction,
                ud,
                residual,
                iterations,
            }
        }
        SolverKind::CgParam => {
            let grads = match gradient {
                Gradient::Explicit(g) => g,
                Gradient::Implicit(w) => blocks.iter().map(|b| b.implicit_gradient(&w)).collect(),
            };
            let (direction, residual, iterations) = conjugate_gradient(
                |p: &[Tensor<2>]| {
                    fisher_vector_product(blocks, p)
                        .into_iter()
                        .zip(p)
                        .map(|(fp, p)| fp + p.clone().mul_scalar(damping))
                        .collect()
                },
                grads,
                cg,
            );
            let ud = project(blocks, &direction);
            Solution {
                direction,
                ud,
                residual: Some(residual),
                iterations,
            }
        }
    }
}

/// `Σ_blocks sum(a ⊙ b)` as a `[1, 1]` tensor.
fn dot(a: &[Tensor<2>], b: &[Tensor<2>]) -> Tensor<2> {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a.clone() * b.clone()).sum().reshape([1, 1]))
        .reduce(|x, y| x + y)
        .expect("at least one block")
}

/// Conjugate gradient for `A x = b` with `A` symmetric positive definite, starting at `x = 0`.
/// Returns `x`, the relative residual `‖r‖/‖b‖` as a `[1]` tensor, and the iterations run.
pub fn conjugate_gradient(
    apply: impl Fn(&[Tensor<2>]) -> Vec<Tensor<2>>,
    b: Vec<Tensor<2>>,
    options: &CgOptions,
) -> (Vec<Tensor<2>>, Tensor<1>, usize) {
    let mut x: Vec<Tensor<2>> = b.iter().map(|t| t.zeros_like()).collect();
    let bb = dot(&b, &b);
    let mut r = b.clone();
    let mut p = b;
    let mut rr = bb.clone();
    let mut iterations = 0;
    let tol2 = options.tolerance * options.tolerance;
    for i in 0..options.max_iters {
        let ap = apply(&p);
        let alpha = rr.clone().div(dot(&p, &ap).clamp_min(TINY));
        for (xi, pi) in x.iter_mut().zip(&p) {
            *xi = xi.clone() + pi.clone() * alpha.clone();
        }
        for (ri, api) in r.iter_mut().zip(ap) {
            *ri = ri.clone() - api * alpha.clone();
        }
        let rr_new = dot(&r, &r);
        iterations = i + 1;
        if options.check_every > 0 && iterations % options.check_every == 0 {
            let ratio = rr_new
                .clone()
                .div(bb.clone().clamp_min(TINY))
                .into_scalar::<f64>();
            if ratio <= tol2 || !ratio.is_finite() {
                rr = rr_new;
                break;
            }
        }
        let beta = rr_new.clone().div(rr.clamp_min(TINY));
        p = r
            .iter()
            .zip(p)
            .map(|(ri, pi)| ri.clone() + pi * beta.clone())
            .collect();
        rr = rr_new;
    }
    let residual = rr.div(bb.clamp_min(TINY)).sqrt().reshape([1]);
    (x, residual, iterations)
}

/// Solves `(K + λI) β = b` exactly: `K` and `b` are read to the host, factorised by Cholesky in
/// `f64`, and `β` is sent back. A matrix that is not positive definite (it is, for λ > 0, unless
/// the inputs are not finite) yields NaN, which the caller detects.
pub fn gram_direct(k: &Tensor<2>, b: &Tensor<2>, damping: f64) -> Tensor<2> {
    let m = b.dims()[0];
    let device = b.device();
    // One device read: [K | b], row-major [m, m + 1], widened to f64 in one pass; the read
    // buffer is dropped before the factorisation (peak memory).
    let (kd, bd) = {
        let data = Tensor::cat(vec![k.clone(), b.clone()], 1).into_data();
        let mut kd = Vec::with_capacity(m * m);
        let mut bd = Vec::with_capacity(m);
        let mut split = |row: &[f64]| {
            kd.extend_from_slice(&row[..m]);
            bd.push(row[m]);
        };
        match data.as_slice::<f32>() {
            Ok(values) => {
                let mut row = vec![0.0f64; m + 1];
                for chunk in values.chunks_exact(m + 1) {
                    for (r, &v) in row.iter_mut().zip(chunk) {
                        *r = f64::from(v);
                    }
                    split(&row);
                }
            }
            Err(_) => {
                let values = data
                    .convert::<f64>()
                    .try_into_vec::<f64>()
                    .expect("float data");
                values.chunks_exact(m + 1).for_each(&mut split);
            }
        }
        (kd, bd)
    };
    let beta = cholesky_factor_solve(kd, &bd, m, damping).unwrap_or_else(|| vec![f64::NAN; m]);
    let beta: Vec<f32> = beta.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(beta, [m, 1]), &device)
}

/// `Σ a[i] b[i]` with eight independent accumulators over exact chunks (no bounds checks in the
/// loop), so that it vectorises.
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// Block size of the host Cholesky: diagonal blocks and panels are factorised by dot products,
/// the trailing matrix is updated by matrix products (the `gemm` crate).
const CHOLESKY_BLOCK: usize = 32;

/// Solves `(A + λI) x = b` for a symmetric `m × m` row-major `A` by Cholesky (blocked, right-
/// looking: the trailing updates, `m³/6` of the `m³/6 + O(m²·64)` multiply-adds, run as matrix
/// products); `None` if the matrix is not positive definite or not finite. Reads only the lower
/// triangle of `A`.
pub fn cholesky_solve(a: &[f64], b: &[f64], m: usize, damping: f64) -> Option<Vec<f64>> {
    cholesky_factor_solve(a.to_vec(), b, m, damping)
}

/// [`cholesky_solve`] in place: `l` holds `A` and is overwritten by its factor.
fn cholesky_factor_solve(mut l: Vec<f64>, b: &[f64], m: usize, damping: f64) -> Option<Vec<f64>> {
    assert!(l.len() == m * m && b.len() == m, "cholesky_solve: shapes");
    // L overwrites the lower triangle of A + λI; the upper triangle is scratch.
    for i in 0..m {
        l[i * m + i] += damping;
    }
    for k0 in (0..m).step_by(CHOLESKY_BLOCK) {
        let k1 = (k0 + CHOLESKY_BLOCK).min(m);
        // Columns k0..k1 of L, rows k0..m: each entry from the already-updated A and the
        // entries of L to its left within the panel.
        for i in k0..m {
            for j in k0..k1.min(i + 1) {
                let s =
                    l[i * m + j] - dot_f64(&l[i * m + k0..i * m + j], &l[j * m + k0..j * m + j]);
                if i == j {
                    if s.is_nan() || s <= 0.0 || s.is_infinite() {
                        return None;
                    }
                    l[i * m + i] = s.sqrt();
                } else {
                    l[i * m + j] = s / l[j * m + j];
                }
            }
        }
        // Trailing update A[r, c] -= Σ_{p in k0..k1} L[r, p] L[c, p] for k1 <= c <= r, one
        // block row of rows r0..r1 (columns k1..r1) per product.
        for r0 in (k1..m).step_by(CHOLESKY_BLOCK) {
            let r1 = (r0 + CHOLESKY_BLOCK).min(m);
            trailing_update(&mut l, m, k0, k1, r0, r1);
        }
    }
    // A NaN or infinity anywhere in the lower triangle reaches a later pivot `s` (every entry of
    // row i enters L[i, i]), which the check above rejects.
    // L y = b, then Lᵀ x = y.
    let mut y = vec![0.0f64; m];
    for i in 0..m {
        y[i] = (b[i] - dot_f64(&l[i * m..i * m + i], &y[..i])) / l[i * m + i];
    }
    let mut x = vec![0.0f64; m];
    for i in (0..m).rev() {
        let mut s = y[i];
        for p in i + 1..m {
            s -= l[p * m + i] * x[p];
        }
        x[i] = s / l[i * m + i];
    }
    Some(x)
}

/// `L[r0..r1, k1..r1] -= L[r0..r1, k0..k1] · L[k1..r1, k0..k1]ᵀ` in the row-major `m × m`
/// buffer `l` (the columns written, `k1..`, are disjoint from the columns read, `k0..k1`).
fn trailing_update(l: &mut [f64], m: usize, k0: usize, k1: usize, r0: usize, r1: usize) {
    assert!(k0 < k1 && k1 <= r0 && r0 < r1 && r1 <= m && l.len() == m * m);
    let base = l.as_mut_ptr();
    let stride = m as isize;
    // SAFETY: every pointer derives from `base` and stays inside the `m × m` buffer: the
    // destination spans rows r0..r1 and columns k1..r1, the left operand rows r0..r1 and
    // columns k0..k1, the right operand rows k1..r1 and columns k0..k1 (all < m, asserted).
    // The destination's columns (>= k1) do not overlap the operands' (< k1), and nothing else
    // touches `l` during the call.
    unsafe {
        gemm::gemm(
            r1 - r0,
            r1 - k1,
            k1 - k0,
            base.add(r0 * m + k1),
            1,
            stride,
            true,
            base.add(r0 * m + k0) as *const f64,
            1,
            stride,
            base.add(k1 * m + k0) as *const f64,
            stride,
            1,
            1.0,
            -1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook (unblocked) Cholesky solve, as the oracle of the blocked one.
    fn reference_solve(a: &[f64], b: &[f64], m: usize, damping: f64) -> Vec<f64> {
        let mut l = vec![0.0f64; m * m];
        for i in 0..m {
            for j in 0..=i {
                let mut s = a[i * m + j] + if i == j { damping } else { 0.0 };
                for p in 0..j {
                    s -= l[i * m + p] * l[j * m + p];
                }
                l[i * m + j] = if i == j { s.sqrt() } else { s / l[j * m + j] };
            }
        }
        let mut y = vec![0.0; m];
        for i in 0..m {
            y[i] = (b[i] - (0..i).map(|p| l[i * m + p] * y[p]).sum::<f64>()) / l[i * m + i];
        }
        let mut x = vec![0.0; m];
        for i in (0..m).rev() {
            x[i] = (y[i] - (i + 1..m).map(|p| l[p * m + i] * x[p]).sum::<f64>()) / l[i * m + i];
        }
        x
    }

    /// A random Gram matrix `G Gᵀ / m` (`m × m`, rank ≤ 40, so that damping matters) and `b`.
    fn system(m: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let r = 40;
        let g: Vec<f64> = (0..m * r).map(|_| next()).collect();
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                a[i * m + j] = (0..r).map(|p| g[i * r + p] * g[j * r + p]).sum::<f64>() / m as f64;
            }
        }
        let b = (0..m).map(|_| next()).collect();
        (a, b)
    }

    #[test]
    fn blocked_cholesky_matches_the_textbook_one() {
        for (m, damping) in [
            (1, 0.5),
            (63, 1e-3),
            (64, 0.1),
            (65, 1.0),
            (150, 1e-2),
            (257, 1e-4),
        ] {
            let (a, b) = system(m, m as u64);
            let x = cholesky_solve(&a, &b, m, damping).expect("positive definite");
            let expected = reference_solve(&a, &b, m, damping);
            let scale = expected.iter().fold(0.0f64, |acc, v| acc.max(v.abs()));
            let err = x
                .iter()
                .zip(&expected)
                .fold(0.0f64, |acc, (u, v)| acc.max((u - v).abs()));
            assert!(err <= 1e-9 * scale.max(1.0), "m = {m}: max error {err:e}");
        }
    }

    #[test]
    fn blocked_cholesky_rejects_a_nan_in_a_late_block() {
        let m = 130;
        let (mut a, b) = system(m, 3);
        a[129 * m + 3] = f64::NAN;
        assert!(cholesky_solve(&a, &b, m, 0.1).is_none());
        let (mut a, b) = system(m, 4);
        a[100 * m + 100] = -1e3;
        assert!(cholesky_solve(&a, &b, m, 0.1).is_none());
    }

    #[test]
    fn cholesky_solves_a_small_spd_system() {
        // A = [[4, 2], [2, 3]], λ = 1 -> [[5, 2], [2, 4]]; b = [1, 2] -> x = [0, 0.5].
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[1.0, 2.0], 2, 1.0).unwrap();
        assert!(
            (x[0] - 0.0).abs() < 1e-12 && (x[1] - 0.5).abs() < 1e-12,
            "{x:?}"
        );
    }

    #[test]
    fn cholesky_rejects_indefinite_and_nan() {
        assert!(cholesky_solve(&[-1.0], &[1.0], 1, 0.5).is_none());
        assert!(cholesky_solve(&[f64::NAN], &[1.0], 1, 0.5).is_none());
    }
}
