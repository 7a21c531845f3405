//! The KFAC direction of a weight block from its factors, without forming its gradient first.
//!
//! A weight's minibatch gradient is `g = Xᵀ Δ` (`X` `[R, a]` its inputs, `Δ` `[R, b]` its
//! output gradients times the gradient weight, `R = P·T` rows), so its KFAC direction
//! `A⁻¹ g G⁻¹` is also `(A⁻¹ Xᵀ)(Δ G⁻¹)`: each inverse may act on the `R` rows instead of the
//! `a × b` gradient. Applying `A⁻¹` costs `a² · min(b, R)` multiply-adds that way, `G⁻¹`
//! `b² · min(a, R)`, plus the product `R a b` either way (the gradient's own). For the guide
//! CNN's first Linear layer (`a = 1024`, `b = 512`, `R = 64`) that is 117 M multiply-adds
//! instead of 838 M: the same direction, up to rounding.
//!
//! With a low-rank left inverse `U diag(c) Uᵀ + sI` the direction is also
//! `[Xᵀ | U] · [s·D ; c∘(Uᵀ Xᵀ D)]` with `D = Δ G⁻¹`: the gradient's own product with `r` more
//! terms, in place of the gradient and then two skinny products and several passes over the
//! `a × b` result ([`RowsForm::Fused`]; the MLP's first layer at batch 128 with rank 4).
//!
//! Blocks whose rows outnumber both sides (an MLP's last layer, a convolution's `T` output
//! positions) keep the gradient-first product of [`direction`](super::direction). Used by the
//! steps that reuse the factors ([`reuse`](super::reuse)), whose Linear layers record their rows
//! for it; captured steps keep the gradient-first product, so that runs with factors at every
//! step reproduce the documented ones digit for digit (`lab/kfac.md`, "The direction from the
//! rows").

use burn::tensor::Tensor;

use super::inverse::factor_rank;
use super::{KfacState, Kind};
use crate::factors::{fold_rows, Block, BlockFactors};

/// `A⁻¹ g G⁻¹` of `block` from its rows, when its gradient is implicit (`g = U_dᵀ (w·1)` with
/// the gradient weight `w`, see [`Factors::gradient_weight`](crate::factors::Factors)) and its
/// state is a full Kronecker pair: as `A⁻¹ Xᵀ (Δ G⁻¹)` in one product when [`rows_form`] says
/// [`RowsForm::Fused`] for `rank` (the optimizer's
/// [`KfacInverse::LowRank`](crate::KfacInverse::LowRank)) and the left inverse is low-rank,
/// otherwise `(A⁻¹ Xᵀ)(Δ G⁻¹)` with each inverse on the smaller side when the rows are fewer
/// than one side of its view; `None` otherwise (the caller then forms the gradient and applies
/// [`direction`](super::direction)).
pub(crate) fn factored_direction(
    state: &KfacState,
    block: &Block,
    w: &Tensor<1>,
    rank: Option<usize>,
) -> Option<Tensor<2>> {
    if block.grad.is_some() {
        return None;
    }
    let (Some(Kind::Kronecker), Some(a_inv)) = (state.kind(), &state.left_inv) else {
        return None;
    };
    let rows = block.data.as_ref().map_or(&block.factors, |d| &d.factors);
    let BlockFactors::Weight { input, output_grad } = rows else {
        return None;
    };
    let [p, t, a] = input.dims();
    let b = output_grad.dims()[2];
    let r = p * t;
    if a_inv.dims()[0] != a || state.right_inv.dims()[0] != b {
        return None;
    }
    let fused = rows_form(r, a, b, rank) == Some(RowsForm::Fused) && state.left_coef.is_some();
    if !fused && r >= a && r >= b {
        return None;
    }
    let x = input.clone().reshape([r, a]);
    // Rows that share an input row (the sampled Fisher's copies) are summed first.
    let weighted = output_grad.clone() * w.clone().reshape([1, 1, 1]);
    let delta = fold_rows(weighted, p).reshape([r, b]);
    if fused {
        return state.left_rows_mul(x, state.right_mul(delta));
    }
    let x = x.transpose();
    let x = if r < b { state.left_mul(x) } else { x };
    let delta = if r < a { state.right_mul(delta) } else { delta };
    let d = x.matmul(delta);
    let d = if r < b { d } else { state.left_mul(d) };
    Some(if r < a { d } else { state.right_mul(d) })
}

/// How a step that reuses KFAC's factors forms a Linear layer's direction from its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowsForm {
    /// `(A⁻¹ Xᵀ)(Δ G⁻¹)`, each inverse on the smaller of its two sides.
    Factored,
    /// `A⁻¹ Xᵀ (Δ G⁻¹)` with a low-rank `A⁻¹` joined to the product `Xᵀ (Δ G⁻¹)`
    /// ([`KfacState::left_rows_mul`]).
    Fused,
}

/// Whether (and how) a step that reuses KFAC's factors should record a Linear layer's `rows`
/// (`X`, `Δ`) for its `a × b` weight: always with dense inverses (`rank` `None`; their products
/// are what the rows spare, and [`factored_direction`] falls back when they spare nothing), and
/// with low-rank ones ([`KfacInverse::LowRank`](crate::KfacInverse::LowRank)) when the rows at
/// least halve the multiply-adds of the products with the inverses ([`RowsForm::Factored`]), or
/// else when the left inverse is low-rank and joining it to the rows' product costs less than
/// applying both inverses to the gradient ([`RowsForm::Fused`]), counting a pass over a tensor
/// as one multiply-add per element: the gradient-first product reads or writes its `a × b`
/// operand and result about eight times (its two projections, the rebuild, the scaled copy and
/// the sum), the fused one copies `X` once. On the MLP 784-128-10 at batch 128 with rank 4
/// that is 1.2 M against 2.4 M for the first layer (fused), 3.8 M against 2.4 M at batch 512,
/// and 125 k against 33 k for the last layer (both gradient-first).
pub(crate) fn rows_form(rows: usize, a: usize, b: usize, rank: Option<usize>) -> Option<RowsForm> {
    let Some(r) = rank else {
        return Some(RowsForm::Factored);
    };
    // Multiply-adds of a product of the side-`n` inverse with `m` vectors.
    let cost = |n: usize, m: usize| match factor_rank(n, Some(r)) {
        Some(r) => 2 * n * r * m,
        None => n * n * m,
    };
    let gradient = cost(a, b) + cost(b, a);
    let from_rows = cost(a, rows.min(b)) + cost(b, rows.min(a));
    if 2 * from_rows <= gradient {
        return Some(RowsForm::Factored);
    }
    let left = factor_rank(a, Some(r))?;
    // `X U`, its product with `Δ G⁻¹`, the `r` more terms of the product, `G⁻¹` on the rows,
    // the copy of `X` (read and written) and the passes over the `R × b` rows.
    let fused = left * a * rows + left * rows * b + a * left * b + cost(b, rows) + 2 * rows * a;
    let fused = fused + 3 * rows * b;
    (fused <= gradient + 8 * a * b).then_some(RowsForm::Fused)
}

/// KFAC's decision, handed to the capture of a step that reuses its factors, of which Linear
/// layers record their rows: those whose direction [`rows_form`] computes from them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowsPolicy {
    /// The rank of the low-rank inverses; `None`: dense.
    rank: Option<usize>,
}

impl RowsPolicy {
    /// The policy for inverses of `rank` (`None`: dense).
    pub(crate) fn new(rank: Option<usize>) -> Self {
        Self { rank }
    }

    /// Whether a Linear layer of `rows` rows and an `a × b` weight records them.
    pub(crate) fn pays(&self, rows: usize, a: usize, b: usize) -> bool {
        rows_form(rows, a, b, self.rank).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curvature::kfac::{direction, update, KfacOptions};
    use crate::factors::{uniform_weights, DataRows};
    use crate::testing::devices::cpu_devices;
    use burn::module::ParamId;
    use burn::tensor::Distribution;

    fn block(factors: BlockFactors, data: Option<BlockFactors>) -> Block {
        let [a, b] = factors.view_dims();
        Block {
            id: ParamId::new(),
            path: "fc.weight".into(),
            group: "fc".into(),
            dims: vec![a, b],
            grad: None,
            factors,
            data: data.map(|factors| DataRows {
                factors,
                shares_input: false,
            }),
        }
    }

    fn weight(
        p: usize,
        m: usize,
        t: usize,
        a: usize,
        b: usize,
        device: &burn::tensor::Device,
    ) -> BlockFactors {
        let normal = Distribution::Normal(0.0, 1.0);
        BlockFactors::Weight {
            input: Tensor::random([p, t, a], normal, device),
            output_grad: Tensor::random([m, t, b], normal, device),
        }
    }

    fn max_rel(a: Tensor<2>, b: Tensor<2>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>();
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Whichever side acts on the rows first, and with the left inverse joined to the rows'
    /// product, the direction is the gradient-first one: for rows fewer than both sides, than
    /// one of them, with weight sharing (`T = 2`), with periodic inputs (two copies sharing one
    /// input row) and with separate data rows.
    #[test]
    fn the_factored_direction_is_the_gradient_first_one() {
        for device in cpu_devices() {
            // (P, M, T, a, b): rows 6 < both; 12 < a only; 12 < b only; periodic; T = 2; and
            // two where rank 4 joins the left inverse to the product (rows 20 = b < a; 10 · 2).
            for (p, m, t, a, b) in [
                (6, 6, 1, 20, 9),
                (12, 12, 1, 20, 9),
                (12, 12, 1, 9, 20),
                (3, 6, 1, 20, 9),
                (4, 4, 2, 20, 9),
                (20, 20, 1, 40, 20),
                (10, 10, 2, 40, 20),
            ] {
                let fisher = weight(p, m, t, a, b, &device);
                // Dense inverses, and low-rank ones for the side of 20 (wider than 4 · 4).
                for rank in [None, Some(4)] {
                    let options = KfacOptions {
                        decay: 0.9,
                        inverse_period: 1,
                        damping: 0.3,
                        block_limit: 2048,
                        rank,
                    };
                    let state = update(None, ParamId::new(), &fisher, &options).unwrap();
                    assert_eq!(
                        state.left_coef.is_some() || state.right_coef.is_some(),
                        rank.is_some()
                    );
                    let w = Tensor::<1>::from_floats([0.7], &device);
                    for data in [None, Some(weight(p, p, t, a, b, &device))] {
                        let blk = block(fisher.clone(), data.clone());
                        let rows = data.unwrap_or_else(|| fisher.clone());
                        let g = rows.back(&uniform_weights(rows.rows(), &w));
                        let expected = direction(&state, g);
                        let d =
                            factored_direction(&state, &blk, &w, rank).expect("rows below a side");
                        let err = max_rel(d, expected);
                        assert!(
                            err < 1e-4,
                            "{p} {m} {t} {a} {b} {rank:?}: relative error {err:e}"
                        );
                    }
                }
            }
        }
    }

    /// Dense inverses always take the rows; low-rank ones where the rows halve their products
    /// (the guide CNN's first Linear layer, 1024 → 512 at batch 64), or where a low-rank left
    /// inverse joins the rows' product for less (the MLP's first layer, 784 → 128, at batch 128,
    /// not at 512; never its last, 128 → 10).
    #[test]
    fn the_rows_are_recorded_where_they_pay() {
        use RowsForm::{Factored, Fused};
        assert_eq!(rows_form(128, 784, 128, None), Some(Factored));
        assert_eq!(rows_form(128, 128, 10, None), Some(Factored));
        assert_eq!(rows_form(128, 784, 128, Some(4)), Some(Fused));
        assert_eq!(rows_form(128, 784, 128, Some(16)), Some(Fused));
        assert_eq!(rows_form(512, 784, 128, Some(4)), None);
        assert_eq!(rows_form(512, 784, 128, Some(16)), None);
        assert_eq!(rows_form(128, 128, 10, Some(4)), None);
        assert_eq!(rows_form(128, 128, 10, Some(16)), None);
        assert_eq!(rows_form(64, 1024, 512, Some(64)), Some(Factored));
        // Low-rank A (784 > 4 · 32), dense G (128): the rows spare most of G's product.
        assert_eq!(rows_form(16, 784, 128, Some(32)), Some(Factored));
        assert_eq!(rows_form(128, 784, 128, Some(32)), Some(Factored));
        assert_eq!(rows_form(1024, 784, 128, Some(32)), None);
        // The cases of the tests below and of the factor-period integration test.
        assert_eq!(rows_form(20, 40, 20, Some(4)), Some(Fused));
        assert_eq!(rows_form(8, 164, 10, Some(40)), Some(Fused));
        assert_eq!(rows_form(8, 164, 2, Some(40)), None);
        let policy = RowsPolicy::new(Some(4));
        assert!(policy.pays(20, 40, 20) && !policy.pays(512, 784, 128));
    }

    /// Rows at least as many as both sides, or an explicit gradient, keep the gradient-first
    /// product.
    #[test]
    fn many_rows_or_an_explicit_gradient_are_left_to_the_gradient_first_product() {
        for device in cpu_devices() {
            let options = KfacOptions {
                decay: 0.9,
                inverse_period: 1,
                damping: 0.3,
                block_limit: 2048,
                rank: None,
            };
            let w = Tensor::<1>::from_floats([1.0], &device);
            let many = weight(30, 30, 1, 20, 9, &device);
            let state = update(None, ParamId::new(), &many, &options).unwrap();
            assert!(factored_direction(&state, &block(many, None), &w, None).is_none());
            let few = weight(4, 4, 1, 20, 9, &device);
            let mut explicit = block(few, None);
            explicit.grad = Some(Tensor::zeros([20, 9], &device));
            assert!(factored_direction(&state, &explicit, &w, None).is_none());
        }
    }
}
