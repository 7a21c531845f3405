//! A parameter's block as the solvers see it: its gradient, its Fisher rows and, when they
//! differ, its data rows (the sampled Fisher, a curvature batch), with the products that couple
//! the two.

use burn::module::ParamId;
use burn::tensor::Tensor;

use super::rows::{
    expand_rows, flatten, fold_rows, self_gram, sum_over_t, tiled, uniform_weights, weight_back,
};
use super::BlockFactors;

/// The data rows of a block whose Fisher rows are not the data's (the sampled Fisher, whose
/// rows are labels drawn from the model, or a curvature batch, whose rows are the first `m` of
/// the data's): the minibatch gradient is `U_dᵀ (w·1)` with these rows `U_d` (see
/// [`Factors::gradient_weight`](super::Factors::gradient_weight)).
#[derive(Clone, Debug)]
pub struct DataRows {
    /// The data rows' factors, of the same kind as the block's Fisher rows, scaled alike.
    pub factors: BlockFactors,
    /// For a weight: the Fisher rows' input (`[P, T, in]`) is the first `P ≤ N` rows of the
    /// data rows' input (`[N, T, in]`), so that `X_F X_dᵀ` serves both Gram products and one
    /// matmul both back-projections.
    pub shares_input: bool,
}

/// One parameter tensor: its gradient and its per-example factors, in the block's matrix view.
#[derive(Clone, Debug)]
pub struct Block {
    /// The parameter.
    pub id: ParamId,
    /// Its module path, e.g. `fc1.weight`.
    pub path: String,
    /// The module it belongs to (its path without the last component): the unit of the
    /// block-diagonal approximation.
    pub group: String,
    /// The parameter's own shape.
    pub dims: Vec<usize>,
    /// The minibatch gradient in the matrix view, when registered explicitly; `None` when it is
    /// implicit, `U_dᵀ (w·1)` (see [`Factors::gradient_weight`](super::Factors::gradient_weight)).
    pub grad: Option<Tensor<2>>,
    /// The per-example factors: the rows of the Fisher `UᵀU`.
    pub factors: BlockFactors,
    /// The data rows, when they differ from the Fisher rows (the sampled Fisher) and the
    /// gradient is implicit.
    pub data: Option<DataRows>,
}

impl Block {
    /// The implicit gradient `U_dᵀ (w·1)` (`U_d`: the data rows, or the Fisher rows when the
    /// block has no separate data rows), in the block's matrix view.
    pub fn implicit_gradient(&self, w: &Tensor<1>) -> Tensor<2> {
        let rows = match &self.data {
            Some(data) => &data.factors,
            None => &self.factors,
        };
        rows.back(&uniform_weights(rows.rows(), w))
    }

    /// `U (U_dᵀ 1)` (`[M, 1]`): the Fisher rows' projection of the implicit gradient with unit
    /// weight, together with the Gram `U Uᵀ` (`[M, M]`); for a weight whose data rows share the
    /// input, `X Xᵀ` serves both.
    #[cfg(any(test, feature = "testing"))]
    pub fn gram_and_implicit_projection(&self) -> (Tensor<2>, Tensor<2>) {
        self.gram_and_projection(false)
    }

    /// [`gram_and_implicit_projection`](Self::gram_and_implicit_projection); with `with_bias`,
    /// a weight block (`T = 1`) also covers its Linear's bias, whose per-example gradients are
    /// the weight's output gradients: `(X Xᵀ + 1) ⊙ (Δ Δᵀ)`, one `Δ Δᵀ` for both.
    pub(crate) fn gram_and_projection(&self, with_bias: bool) -> (Tensor<2>, Tensor<2>) {
        let BlockFactors::Weight { input, output_grad } = &self.factors else {
            let k = self.factors.gram();
            let b = match &self.data {
                None => k.clone().sum_dim(1),
                Some(data) => self.factors.cross_gram(data).sum_dim(1),
            };
            return (k, b);
        };
        let (p, m, t, x, g) = flatten(input, output_grad);
        debug_assert!(
            !with_bias || t == 1,
            "a bias shares Δ with its weight only when T = 1"
        );
        let plus = |xx: Tensor<2>| if with_bias { xx.add_scalar(1.0) } else { xx };
        // Data rows on more input rows than the Fisher's, which are their first `P` (a curvature
        // batch): `X_F X_dᵀ` is computed once, and `X_F X_Fᵀ` is its first `P·T` columns.
        let prefix_cross = match &self.data {
            Some(DataRows {
                factors: BlockFactors::Weight { input: d_input, .. },
                shares_input: true,
            }) if d_input.dims()[0] > p => {
                let [pd, _, d_in] = d_input.dims();
                let xd = d_input.clone().reshape([pd * t, d_in]);
                Some(plus(x.clone().matmul(xd.transpose())))
            }
            _ => None,
        };
        let xx = match &prefix_cross {
            Some(cross) => cross.clone().slice([0..p * t, 0..p * t]),
            None => plus(self_gram(x.clone())),
        };
        let k = sum_over_t(
            tiled(xx.clone(), p, m, m) * g.clone().matmul(g.clone().transpose()),
            m,
            m,
            t,
        );
        let b = match &self.data {
            None => k.clone().sum_dim(1),
            Some(data) => {
                let BlockFactors::Weight {
                    input: d_input,
                    output_grad: d_grad,
                } = &data.factors
                else {
                    unreachable!("Factors::from_grads pairs data rows of the same kind")
                };
                let (_, n, _, _, gd) = flatten(d_input, d_grad);
                let xc = if let Some(cross) = prefix_cross {
                    expand_rows(&cross, m * t)
                } else if data.shares_input {
                    tiled(xx, p, m, n)
                } else {
                    let d_in = x.dims()[1];
                    let x = expand_rows(input, m).reshape([m * t, d_in]);
                    let xd = expand_rows(d_input, n).reshape([n * t, d_in]);
                    plus(x.matmul(xd.transpose()))
                };
                sum_over_t(xc * g.matmul(gd.transpose()), m, n, t).sum_dim(1)
            }
        };
        (k, b)
    }

    /// `U_dᵀ a + Uᵀ f`, in the block's matrix view, for the data-row coefficients `a` (`[N,
    /// 1]`) and the Fisher-row coefficients `f` (`[M, 1]`); without separate data rows, `Uᵀ (a +
    /// f)`. One matmul for a weight whose data rows share the input.
    pub fn back_data_and_fisher(&self, a: &Tensor<2>, f: &Tensor<2>) -> Tensor<2> {
        match &self.data {
            None => self.factors.back(&(a.clone() + f.clone())),
            Some(data) => match (&self.factors, &data.factors) {
                (
                    BlockFactors::Weight { input, output_grad },
                    BlockFactors::Weight {
                        input: d_input,
                        output_grad: d_grad,
                    },
                ) if data.shares_input => {
                    let m = output_grad.dims()[0];
                    let n = d_grad.dims()[0];
                    let p = input.dims()[0];
                    let weighted_data = d_grad.clone() * a.clone().reshape([n, 1, 1]);
                    // The Fisher rows use the first `P` data inputs: fold them onto those `P`
                    // rows, add them to the data's, and multiply once by `X_dᵀ`.
                    let folded = fold_rows(output_grad.clone() * f.clone().reshape([m, 1, 1]), p);
                    let weighted = if p == n {
                        weighted_data + folded
                    } else {
                        Tensor::cat(
                            vec![
                                weighted_data.clone().slice(0..p) + folded,
                                weighted_data.slice(p..n),
                            ],
                            0,
                        )
                    };
                    weight_back(d_input, weighted)
                }
                _ => data.factors.back(a) + self.factors.back(f),
            },
        }
    }
}
