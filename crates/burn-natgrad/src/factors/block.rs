//! The per-example factors of one parameter tensor and the three products every solver needs.
//!
//! For a Linear layer `z = x W + b` the per-example gradient of example `m` is the outer product
//! `u_m = Σ_t x_mt δ_mtᵀ` of the layer input and the gradient at the layer output (Goodfellow,
//! "Efficient Per-Example Gradient Computations", 2015). A block keeps those two factors instead
//! of the `[M, in·out]` matrix of per-example gradients, and offers, without forming it:
//!
//! * the Gram matrix `U Uᵀ` (`[M, M]`), `(X Xᵀ) ⊙ (Δ Δᵀ)` for a weight;
//! * the projection `U v` (`[M, 1]`) of a parameter-shaped vector;
//! * the back-projection `Uᵀ α` (parameter-shaped) of a sample-space vector.
//!
//! Layers whose per-example gradients are cheaper to materialise (a convolution, whose `T` is
//! its number of output positions) give explicit rows ([`BlockFactors::Dense`]).

use burn::tensor::{Device, Tensor};

use super::rows::{
    expand_rows, flatten, self_gram, slice_periodic, sum_over_t, tiled, weight_back,
};
use super::{gather, DataRows};

/// Per-example factors of one parameter tensor, scaled so that its Fisher block is `UᵀU`.
// Two tensor handles against one: not worth a Box on this cold path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BlockFactors {
    /// A Linear weight `[in, out]`: `input` is `[P, T, in]`, `output_grad` is `[M, T, out]`, and
    /// the per-example gradient is `u_m = Σ_t input[m mod P, t]ᵀ output_grad[m, t]`. `P` divides
    /// `M`; it is smaller than `M` when the rows are copies of the batch that shared the layer's
    /// input (the sampled Fisher's), and then `X Xᵀ` is computed once for all copies. The first
    /// factor indexes the view's rows and the second its columns: a convolution's `[out,
    /// C·kh·kw]` weight in KFAC's form has its output gradients first and its patches second.
    Weight {
        /// Layer inputs, `[P, T, in]`.
        input: Tensor<3>,
        /// Gradients at the layer output, `[M, T, out]`.
        output_grad: Tensor<3>,
    },
    /// A Linear bias `[out]`: the per-example gradient is the output gradient summed over `T`,
    /// `[M, out]`.
    Bias {
        /// `Σ_t output_grad[m, t]`, `[M, out]`.
        output_grad: Tensor<2>,
    },
    /// An embedding table `[vocab, d]` read at integer ids: the per-example gradient is
    /// `Σ_t e(ids[m, t]) ⊗ output_grad[m, t]` (see the `gather` products), never formed.
    Gather {
        /// The ids, `[M, T]`, stored as floats (exact below 2²⁴).
        ids: Tensor<2>,
        /// Gradients at the layer output, `[M, T, d]`.
        output_grad: Tensor<3>,
        /// Rows of the table (0 until the collection reads the parameter's shape).
        vocab: usize,
    },
    /// Any parameter: explicit per-example gradients, flattened, `[M, numel]` (the generic
    /// per-example loop produces these).
    Dense {
        /// One flattened per-example gradient per row.
        rows: Tensor<2>,
    },
}

impl BlockFactors {
    /// The factors with the parameter's shape filled in where the factors alone do not carry
    /// it (a gather block's vocabulary, `dims[0]`).
    pub(crate) fn with_shape(self, dims: &[usize]) -> Self {
        match self {
            BlockFactors::Gather {
                ids, output_grad, ..
            } => BlockFactors::Gather {
                ids,
                output_grad,
                vocab: dims[0],
            },
            other => other,
        }
    }

    /// The device the factors live on.
    pub fn device(&self) -> Device {
        match self {
            BlockFactors::Weight { output_grad, .. } | BlockFactors::Gather { output_grad, .. } => {
                output_grad.device()
            }
            BlockFactors::Bias { output_grad } => output_grad.device(),
            BlockFactors::Dense { rows } => rows.device(),
        }
    }

    /// Number of rows `M` (examples times Fisher samples).
    pub fn rows(&self) -> usize {
        match self {
            BlockFactors::Weight { output_grad, .. } | BlockFactors::Gather { output_grad, .. } => {
                output_grad.dims()[0]
            }
            BlockFactors::Bias { output_grad } => output_grad.dims()[0],
            BlockFactors::Dense { rows } => rows.dims()[0],
        }
    }

    /// The shape of the matrix view this block works on: `[in, out]` for a weight, `[1, n]`
    /// otherwise.
    pub fn view_dims(&self) -> [usize; 2] {
        match self {
            BlockFactors::Weight { input, output_grad } => [input.dims()[2], output_grad.dims()[2]],
            BlockFactors::Bias { output_grad } => [1, output_grad.dims()[1]],
            BlockFactors::Gather {
                output_grad, vocab, ..
            } => [*vocab, output_grad.dims()[2]],
            BlockFactors::Dense { rows } => [1, rows.dims()[1]],
        }
    }

    /// Multiplies the factors by `scale` (the square root of the Fisher normalisation).
    pub(crate) fn scaled(self, scale: f64) -> Self {
        match self {
            BlockFactors::Weight { input, output_grad } => BlockFactors::Weight {
                input,
                output_grad: output_grad.mul_scalar(scale),
            },
            BlockFactors::Bias { output_grad } => BlockFactors::Bias {
                output_grad: output_grad.mul_scalar(scale),
            },
            BlockFactors::Gather {
                ids,
                output_grad,
                vocab,
            } => BlockFactors::Gather {
                ids,
                output_grad: output_grad.mul_scalar(scale),
                vocab,
            },
            BlockFactors::Dense { rows } => BlockFactors::Dense {
                rows: rows.mul_scalar(scale),
            },
        }
    }

    /// Keeps rows `start..end` (used to split the data copy from the sampled copies).
    pub(crate) fn slice_rows(self, start: usize, end: usize) -> Self {
        match self {
            BlockFactors::Weight { input, output_grad } => BlockFactors::Weight {
                input: slice_periodic(&input, output_grad.dims()[0], start, end),
                output_grad: output_grad.slice(start..end),
            },
            BlockFactors::Bias { output_grad } => BlockFactors::Bias {
                output_grad: output_grad.slice(start..end),
            },
            BlockFactors::Gather {
                ids,
                output_grad,
                vocab,
            } => BlockFactors::Gather {
                ids: ids.slice(start..end),
                output_grad: output_grad.slice(start..end),
                vocab,
            },
            BlockFactors::Dense { rows } => BlockFactors::Dense {
                rows: rows.slice(start..end),
            },
        }
    }

    /// The `[M, M]` Gram matrix `U Uᵀ` of the per-example gradients.
    pub fn gram(&self) -> Tensor<2> {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                let (p, m, t, x, g) = flatten(input, output_grad);
                let xx = tiled(self_gram(x), p, m, m);
                sum_over_t(xx * g.clone().matmul(g.transpose()), m, m, t)
            }
            BlockFactors::Bias { output_grad: b } => b.clone().matmul(b.clone().transpose()),
            BlockFactors::Gather {
                ids, output_grad, ..
            } => gather::cross(ids, output_grad, ids, output_grad),
            BlockFactors::Dense { rows } => rows.clone().matmul(rows.clone().transpose()),
        }
    }

    /// `U v` for a vector `v` in the block's matrix view: `[M, 1]`.
    pub fn project(&self, v: &Tensor<2>) -> Tensor<2> {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                let (_, m, t, x, g) = flatten(input, output_grad);
                let per_row = (expand_rows(&x.matmul(v.clone()), m * t) * g).sum_dim(1);
                if t == 1 {
                    per_row
                } else {
                    per_row.reshape([m, t]).sum_dim(1)
                }
            }
            BlockFactors::Gather {
                ids, output_grad, ..
            } => gather::project(ids, output_grad, v),
            BlockFactors::Bias { output_grad: rows } | BlockFactors::Dense { rows } => {
                rows.clone().matmul(v.clone().transpose())
            }
        }
    }

    /// `Uᵀ α` for a sample-space vector `α` (`[M, 1]`), in the block's matrix view.
    pub fn back(&self, alpha: &Tensor<2>) -> Tensor<2> {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                let m = output_grad.dims()[0];
                weight_back(
                    input,
                    output_grad.clone() * alpha.clone().reshape([m, 1, 1]),
                )
            }
            BlockFactors::Gather {
                ids,
                output_grad,
                vocab,
            } => gather::back(ids, output_grad, *vocab, alpha),
            BlockFactors::Bias { output_grad: rows } | BlockFactors::Dense { rows } => {
                alpha.clone().transpose().matmul(rows.clone())
            }
        }
    }

    /// The per-example gradients as an explicit `[M, numel]` matrix, rows flattened in the
    /// block's matrix view. This is the `N×P` matrix the solvers avoid: for tests and oracles.
    pub fn dense_rows(&self) -> Tensor<2> {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                let [m, _, d_out] = output_grad.dims();
                let d_in = input.dims()[2];
                expand_rows(input, m)
                    .swap_dims(1, 2)
                    .matmul(output_grad.clone())
                    .reshape([m, d_in * d_out])
            }
            BlockFactors::Gather {
                ids,
                output_grad,
                vocab,
            } => gather::dense_rows(ids, output_grad, *vocab),
            BlockFactors::Bias { output_grad: rows } | BlockFactors::Dense { rows } => rows.clone(),
        }
    }

    /// The cross Gram `U U_dᵀ` (`[M, N]`) of a bias or dense block's rows with its data rows
    /// (weights: see
    /// [`Block::gram_and_implicit_projection`](super::Block::gram_and_implicit_projection),
    /// which shares `X Xᵀ`).
    pub(crate) fn cross_gram(&self, data: &DataRows) -> Tensor<2> {
        match (self, &data.factors) {
            (BlockFactors::Bias { output_grad: a }, BlockFactors::Bias { output_grad: b })
            | (BlockFactors::Dense { rows: a }, BlockFactors::Dense { rows: b }) => {
                a.clone().matmul(b.clone().transpose())
            }
            (
                BlockFactors::Gather {
                    ids, output_grad, ..
                },
                BlockFactors::Gather {
                    ids: ids2,
                    output_grad: output_grad2,
                    ..
                },
            ) => gather::cross(ids, output_grad, ids2, output_grad2),
            _ => unreachable!("weights are handled by Block::gram_and_projection"),
        }
    }
}
