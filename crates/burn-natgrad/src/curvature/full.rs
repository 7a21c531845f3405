//! Solvers for the damped natural-gradient system `(F + λI) d = g`, with `F = UᵀU`.
//!
//! * [`Solver::Gram`]: the exact Woodbury / Sherman–Morrison–Woodbury identity in sample
//!   space, `(UᵀU + λI)⁻¹ g = (g − Uᵀ (UUᵀ + λI)⁻¹ U g) / λ` (Ren & Goldfarb, "Efficient
//!   Subsampled Gauss-Newton and Natural Gradient Methods for Training Neural Networks", 2019),
//!   with the `M × M` system solved by a Cholesky factorisation on the host in `f64`.
//! * [`Solver::CgSample`]: the same sample-space system `(UUᵀ + λI) β = U g` solved by
//!   conjugate gradient on the device.
//! * [`Solver::CgParam`]: conjugate gradient directly in parameter space with matrix-free
//!   Fisher-vector products `F v = Uᵀ(U v)` (Martens, "Deep learning via Hessian-free
//!   optimization", 2010).
//!
//! Conjugate gradient (Hestenes & Stiefel, 1952) keeps α and β as device tensors: no host read
//! per iteration. Convergence is checked on the host only every `check_every` iterations
//! (never when 0), where a read is the price of stopping early.

use burn::config::Config;
use burn::tensor::{Tensor, TensorData};

use crate::factors::products::{
    back, fisher_vector_product, gram, gram_and_implicit_projection, project,
};
use crate::factors::uniform_weights;
use crate::factors::Block;
use crate::linalg::cholesky::cholesky_factor_solve;

/// The settings of [`Curvature::Full`](crate::Curvature::Full): the batch's own Fisher.
#[derive(Config, Debug, PartialEq, Copy)]
pub struct FullConfig {
    /// How `(F + λI) d = g` is solved. Default: [`Solver::Gram`] (exact).
    #[config(default = "Solver::Gram")]
    pub solver: Solver,
    /// Use the per-layer block-diagonal Fisher instead of the full, coupled one. Default: false.
    #[config(default = false)]
    pub block_diagonal: bool,
}

/// How the damped system is solved.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Solver {
    /// Exact: Woodbury identity, `M × M` Cholesky solve on the host (`f64`).
    Gram,
    /// Conjugate gradient on the `M × M` sample-space (Gram) system, on the device.
    CgSample(CgConfig),
    /// Conjugate gradient in parameter space with matrix-free Fisher-vector products.
    CgParam(CgConfig),
}

/// Conjugate-gradient stopping rules.
#[derive(Config, Debug, PartialEq, Copy)]
pub struct CgConfig {
    /// Iteration cap (≥ 1). Default: 50.
    #[config(default = 50)]
    pub max_iters: usize,
    /// Stop when `‖r‖ ≤ tolerance · ‖b‖`. Default: 1e-6.
    #[config(default = 1e-6)]
    pub tolerance: f64,
    /// Read the residual on the host every this many iterations to stop early (one device
    /// read each); 0: never, always run `max_iters`. Default: 10.
    #[config(default = 10)]
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
pub fn solve(blocks: &[&Block], gradient: Gradient, solver: &Solver, damping: f64) -> Solution {
    let m = blocks[0].factors.rows();
    match solver {
        Solver::Gram | Solver::CgSample(_) => {
            // K = U Uᵀ and b = U g.
            let (k, b) = match &gradient {
                Gradient::Explicit(g) => (gram(blocks), project(blocks, g)),
                Gradient::Implicit(w) => {
                    let (k, b) = gram_and_implicit_projection(blocks);
                    (k, b * w.clone().reshape([1, 1]))
                }
            };
            let (beta, residual, iterations) = if let Solver::CgSample(cg) = solver {
                let (beta, res, it) = conjugate_gradient(
                    |p: &[Tensor<2>]| {
                        vec![k.clone().matmul(p[0].clone()) + p[0].clone().mul_scalar(damping)]
                    },
                    vec![b.clone()],
                    cg,
                );
                (beta.into_iter().next().unwrap(), Some(res), it)
            } else {
                (gram_direct(&k, &b, damping), None, 0)
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
        Solver::CgParam(cg) => {
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
    options: &CgConfig,
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
