//! How a block's damped factor inverses act on a matrix: `A⁻¹ V` on the left, `V G⁻¹` on the
//! right. An inverse is stored dense (`[n, n]`), or, with
//! [`KfacInverse::LowRank`](crate::KfacInverse::LowRank), as a low-rank-plus-identity
//! `U diag(c) Uᵀ + s I` ([`low_rank`](crate::linalg::low_rank)): the basis `U` (`[n, r]`) in the
//! inverse's place and `[c₁ … c_r, s]` (`[1, r + 1]`) beside it, so that a product costs
//! `2·n·r` multiply-adds per column instead of `n²`. A Kronecker block whose two inverses are
//! both low-rank applies them together ([`KfacState::kronecker_mul`]), in one product; a low-rank
//! left inverse on a Linear layer's rows joins the gradient's own product
//! ([`KfacState::left_rows_mul`]).

use burn::tensor::{Tensor, TensorData};

use super::KfacState;
use crate::linalg::low_rank::LowRankInverse;

/// A factor's damped inverse on the device: dense (`coef` `None`), or the basis `U` and the
/// coefficients `[c, s]` of a low-rank-plus-identity one.
#[derive(Clone, Debug)]
pub(crate) struct FactorInverse {
    pub inv: Tensor<2>,
    pub coef: Option<Tensor<2>>,
}

impl FactorInverse {
    /// A dense `n × n` inverse from its host values.
    pub(crate) fn dense(values: &[f64], n: usize, device: &burn::tensor::Device) -> Self {
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Self {
            inv: Tensor::from_data(TensorData::new(values, [n, n]), device),
            coef: None,
        }
    }

    /// A low-rank-plus-identity inverse of an `n × n` factor from its host form.
    pub(crate) fn low_rank(l: &LowRankInverse, n: usize, device: &burn::tensor::Device) -> Self {
        let r = l.coef.len();
        let basis: Vec<f32> = l.basis.iter().map(|&v| v as f32).collect();
        let coef: Vec<f32> = l
            .coef
            .iter()
            .chain([l.scale].iter())
            .map(|&v| v as f32)
            .collect();
        Self {
            inv: Tensor::from_data(TensorData::new(basis, [n, r]), device),
            coef: Some(Tensor::from_data(TensorData::new(coef, [1, r + 1]), device)),
        }
    }
}

/// `(c, s)` of coefficients `[c₁ … c_r, s]`: `c` as `[1, r]`, `s` as `[1, 1]`.
fn split(coef: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let r = coef.dims()[1] - 1;
    (coef.clone().narrow(1, 0, r), coef.clone().narrow(1, r, 1))
}

/// `M⁻¹ v` for an inverse `inv` (dense, or the basis of a low-rank one with `coef`).
pub(crate) fn left_mul(inv: &Tensor<2>, coef: Option<&Tensor<2>>, v: Tensor<2>) -> Tensor<2> {
    match coef {
        None => inv.clone().matmul(v),
        Some(coef) => {
            let (c, s) = split(coef);
            let projected = inv.clone().transpose().matmul(v.clone()) * c.transpose();
            v * s + inv.clone().matmul(projected)
        }
    }
}

/// `v M⁻¹` for an inverse `inv` (dense, or the basis of a low-rank one with `coef`).
pub(crate) fn right_mul(v: Tensor<2>, inv: &Tensor<2>, coef: Option<&Tensor<2>>) -> Tensor<2> {
    match coef {
        None => v.matmul(inv.clone()),
        Some(coef) => {
            let (c, s) = split(coef);
            let projected = v.clone().matmul(inv.clone()) * c;
            v * s + projected.matmul(inv.clone().transpose())
        }
    }
}

/// `L v R` for low-rank-plus-identity inverses `L = U diag(c) Uᵀ + sI` (basis `u`,
/// coefficients `coef_u` `[c, s]`) and `R = W diag(e) Wᵀ + tI` (`w`, `coef_w` `[e, t]`), as
/// one product: `st·v + [U | vW] · [t·P + P W (e∘Wᵀ) ; s·(e∘Wᵀ)]` with `P = c∘(Uᵀv)`: one
/// full-size product and sum where left-then-right takes two of each.
fn both_mul(
    u: &Tensor<2>,
    coef_u: &Tensor<2>,
    v: Tensor<2>,
    w: &Tensor<2>,
    coef_w: &Tensor<2>,
) -> Tensor<2> {
    let (c, s) = split(coef_u);
    let (e, t) = split(coef_w);
    let p = u.clone().transpose().matmul(v.clone()) * c.transpose();
    let ew = (w.clone() * e).transpose();
    let top = p.clone() * t.clone() + p.matmul(w.clone()).matmul(ew.clone());
    let bottom = ew * s.clone();
    let basis = Tensor::cat(vec![u.clone(), v.clone().matmul(w.clone())], 1);
    v * (s * t) + basis.matmul(Tensor::cat(vec![top, bottom], 0))
}

/// `A⁻¹ Xᵀ D` for a low-rank-plus-identity `A⁻¹ = U diag(c) Uᵀ + sI` (basis `u` `[a, r]`,
/// coefficients `coef` `[c, s]`), rows `x` `[R, a]` and `d` `[R, b]`, as one product:
/// `[Xᵀ | U] · [s·D ; c∘(Uᵀ Xᵀ D)]`, the `R·a·b` product of `Xᵀ D` itself with `r` more terms
/// of its sum, where applying `A⁻¹` to `Xᵀ D` afterwards takes two skinny products and three
/// more passes over an `a × b` matrix (the scaled copy, the rebuild and the sum).
fn left_rows_mul(u: &Tensor<2>, coef: &Tensor<2>, x: Tensor<2>, d: Tensor<2>) -> Tensor<2> {
    let (c, s) = split(coef);
    // `Uᵀ Xᵀ D`, with `X U` first (`[R, r]`; on flex 30 µs at the MLP's first layer, against
    // 41 µs for `Uᵀ Xᵀ` of the two transposed views, in a micro-benchmark not kept).
    let m = x.clone().matmul(u.clone()).transpose().matmul(d.clone()) * c.transpose();
    let lhs = Tensor::cat(vec![x, u.clone().transpose()], 0);
    lhs.transpose().matmul(Tensor::cat(vec![d * s, m], 0))
}

impl KfacState {
    /// `A⁻¹ Xᵀ D` for rows `x` (`[R, a]`) and `d` (`[R, b]`) with a low-rank left inverse
    /// (see [`left_rows_mul`]); `None` with a dense one.
    pub(crate) fn left_rows_mul(&self, x: Tensor<2>, d: Tensor<2>) -> Option<Tensor<2>> {
        let u = self.left_inv.as_ref()?;
        Some(left_rows_mul(u, self.left_coef.as_ref()?, x, d))
    }

    /// `A⁻¹ v G⁻¹` with a Kronecker block's two inverses.
    pub(crate) fn kronecker_mul(&self, v: Tensor<2>) -> Tensor<2> {
        let inv = self.left_inv.as_ref().expect("a block with a left factor");
        match (&self.left_coef, &self.right_coef) {
            (Some(coef_u), Some(coef_w)) => both_mul(inv, coef_u, v, &self.right_inv, coef_w),
            _ => self.right_mul(self.left_mul(v)),
        }
    }

    /// `A⁻¹ v` with the block's left inverse.
    pub(crate) fn left_mul(&self, v: Tensor<2>) -> Tensor<2> {
        let inv = self.left_inv.as_ref().expect("a block with a left factor");
        left_mul(inv, self.left_coef.as_ref(), v)
    }

    /// `v G⁻¹` with the block's right inverse.
    pub(crate) fn right_mul(&self, v: Tensor<2>) -> Tensor<2> {
        right_mul(v, &self.right_inv, self.right_coef.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curvature::kfac::{update, KfacOptions};
    use crate::factors::BlockFactors;
    use crate::testing::devices::cpu_devices;
    use burn::module::ParamId;
    use burn::tensor::Distribution;

    /// Both products of a low-rank inverse equal the dense matrix `U diag(c) Uᵀ + sI`, and so
    /// do the two-sided product with two of them and the left one on rows.
    #[test]
    fn low_rank_products_are_the_dense_ones() {
        for device in cpu_devices() {
            let (n, r, m) = (9, 3, 4);
            let normal = Distribution::Normal(0.0, 1.0);
            let u = Tensor::<2>::random([n, r], normal, &device);
            let coef = Tensor::<2>::from_floats([[0.5, -0.25, 2.0, 0.75]], &device);
            let c = coef.clone().narrow(1, 0, r);
            let dense = u.clone().matmul((u.clone() * c).transpose())
                + Tensor::<2>::eye(n, &device).mul_scalar(0.75);
            let v = Tensor::<2>::random([n, m], normal, &device);
            let w = Tensor::<2>::random([m, n], normal, &device);
            let scale = dense.clone().abs().max().into_scalar::<f32>();
            let left = left_mul(&u, Some(&coef), v.clone()) - dense.clone().matmul(v.clone());
            let right = right_mul(w.clone(), &u, Some(&coef)) - w.matmul(dense.clone());
            // Both sides at once, with a right inverse of its own (side 4, rank 2).
            let x = Tensor::<2>::random([4, 2], normal, &device);
            let coef_x = Tensor::<2>::from_floats([[1.5, 0.25, 0.5]], &device);
            let e = coef_x.clone().narrow(1, 0, 2);
            let dense_x = x.clone().matmul((x.clone() * e).transpose())
                + Tensor::<2>::eye(4, &device).mul_scalar(0.5);
            let both = both_mul(&u, &coef, v.clone(), &x, &coef_x)
                - dense.clone().matmul(v).matmul(dense_x);
            // The left inverse on rows: `A⁻¹ Xᵀ D` (5 rows, `X` `[5, 9]`, `D` `[5, 4]`).
            let rows = Tensor::<2>::random([5, n], normal, &device);
            let d = Tensor::<2>::random([5, m], normal, &device);
            let on_rows = left_rows_mul(&u, &coef, rows.clone(), d.clone())
                - dense.matmul(rows.transpose().matmul(d));
            for err in [left, right, both, on_rows] {
                let err = err.abs().max().into_scalar::<f32>() / scale;
                assert!(err < 1e-5, "relative error {err:e}");
            }
        }
    }

    /// A Kronecker factor wider than `4 · rank` gets a low-rank inverse, a narrower one a
    /// dense inverse; a change of the rank setting recomputes the inverses before their period
    /// is up.
    #[test]
    fn the_rank_decides_each_factors_form_and_a_new_rank_inverts_again() {
        for device in cpu_devices() {
            let normal = Distribution::Normal(0.0, 1.0);
            let block = BlockFactors::Weight {
                input: Tensor::random([6, 1, 30], normal, &device),
                output_grad: Tensor::random([6, 1, 9], normal, &device),
            };
            let id = ParamId::new();
            let mut o = KfacOptions {
                decay: 0.9,
                inverse_period: 3,
                damping: 0.5,
                block_limit: 2048,
                rank: None,
            };
            let dense = update(None, id, &block, &o).unwrap();
            assert!(dense.left_coef.is_none() && dense.right_coef.is_none());
            o.rank = Some(4);
            let low = update(Some(&dense), id, &block, &o).unwrap();
            assert_eq!(low.left_inv.as_ref().map(|u| u.dims()), Some([30, 4]));
            assert_eq!(low.left_coef.as_ref().map(|c| c.dims()), Some([1, 5]));
            assert!(low.right_coef.is_none(), "9 is not wider than 16");
            o.rank = None;
            let again = update(Some(&low), id, &block, &o).unwrap();
            assert_eq!(again.left_inv.as_ref().map(|u| u.dims()), Some([30, 30]));
        }
    }
}
