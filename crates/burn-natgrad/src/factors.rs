//! Per-example gradient factors of each parameter tensor, and how they travel inside Burn's
//! [`GradientsParams`].
//!
//! For a Linear layer `z = x W + b` the per-example gradient of example `m` is the outer product
//! `u_m = Σ_t x_mt δ_mtᵀ` of the layer input and the gradient at the layer output (Goodfellow,
//! "Efficient Per-Example Gradient Computations", 2015). A block keeps those two factors instead
//! of the `[M, in·out]` matrix of per-example gradients, and offers the three products every
//! solver needs, without ever forming that matrix:
//!
//! * the Gram matrix `U Uᵀ` (`[M, M]`), `(X Xᵀ) ⊙ (Δ Δᵀ)` for a weight;
//! * the projection `U v` (`[M, 1]`) of a parameter-shaped vector;
//! * the back-projection `Uᵀ α` (parameter-shaped) of a sample-space vector.
//!
//! Factors are stored pre-scaled so that the Fisher block is exactly `UᵀU`
//! (see [`FisherKind`](crate::FisherKind)).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::NatGradError;

const TAG_INPUT: u64 = 0x6e67_5f69_6e70_7574; // "ng_input"
const TAG_OUTPUT_GRAD: u64 = 0x6e67_5f64_656c_7461; // "ng_delta"
const TAG_BIAS: u64 = 0x6e67_5f62_6961_7300; // "ng_bias"
const TAG_ROWS: u64 = 0x6e67_5f72_6f77_7300; // "ng_rows"
const TAG_GRADIENT_WEIGHT: u64 = 0x6e67_5f67_7765_6967; // "ng_gweig"
const TAG_DATA_INPUT: u64 = 0x6e67_5f64_696e_7075; // "ng_dinpu"
const TAG_DATA_OUTPUT_GRAD: u64 = 0x6e67_5f64_6465_6c74; // "ng_ddelt"
const TAG_DATA_BIAS: u64 = 0x6e67_5f64_6269_6173; // "ng_dbias"
const TAG_DATA_ROWS: u64 = 0x6e67_5f64_726f_7773; // "ng_drows"
const TAG_DATA_SHARED_INPUT: u64 = 0x6e67_5f64_7368_6172; // "ng_dshar"

/// `input` (`[P, …]`, `P` dividing `rows`) with one row per example: row `m` is `input[m mod
/// P]`.
pub(crate) fn expand_rows<const D: usize>(input: &Tensor<D>, rows: usize) -> Tensor<D> {
    let p = input.dims()[0];
    if p == rows {
        input.clone()
    } else {
        input.clone().repeat_dim(0, rows / p)
    }
}

/// Rows `start..end` of the `rows`-row view of a periodic `input` (see [`expand_rows`]): kept
/// as they are when the range covers whole periods.
pub(crate) fn slice_periodic(
    input: &Tensor<3>,
    rows: usize,
    start: usize,
    end: usize,
) -> Tensor<3> {
    let p = input.dims()[0];
    if p == rows {
        input.clone().slice(start..end)
    } else if start.is_multiple_of(p) && end.is_multiple_of(p) {
        input.clone()
    } else {
        expand_rows(input, rows).slice(start..end)
    }
}

/// Sums `[M·T, M'·T]` over both `T`s: `[M, M']`.
fn sum_over_t(k: Tensor<2>, m: usize, m2: usize, t: usize) -> Tensor<2> {
    if t == 1 {
        k
    } else {
        k.reshape([m, t, m2, t])
            .sum_dim(3)
            .sum_dim(1)
            .reshape([m, m2])
    }
}

/// The sample-space vector `w·1` (`[m, 1]`) whose back-projection `Uᵀ(w·1)` is the implicit
/// gradient.
pub(crate) fn uniform_weights(m: usize, w: &Tensor<1>) -> Tensor<2> {
    Tensor::<2>::ones([m, 1], &w.device()) * w.clone().reshape([1, 1])
}

/// Where the implicit-gradient weight `w` is registered: see [`Factors::gradient_weight`].
pub(crate) fn gradient_weight_id() -> ParamId {
    derived_id(ParamId::from(0), TAG_GRADIENT_WEIGHT)
}

/// The id under which a factor of parameter `id` is registered in a [`GradientsParams`].
///
/// A SplitMix64 mix of the parameter id and a tag: distinct from every parameter id and from the
/// other tags with overwhelming probability, and stable across runs.
pub(crate) fn derived_id(id: ParamId, tag: u64) -> ParamId {
    let mut z = id.val() ^ tag;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ParamId::from(z ^ (z >> 31))
}

/// Per-example factors of one parameter tensor, scaled so that its Fisher block is `UᵀU`.
// Two tensor handles against one: not worth a Box on this cold path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BlockFactors {
    /// A Linear weight `[in, out]`: `input` is `[P, T, in]`, `output_grad` is `[M, T, out]`, and
    /// the per-example gradient is `u_m = Σ_t input[m mod P, t]ᵀ output_grad[m, t]`. `P` divides
    /// `M`; it is smaller than `M` when the rows are copies of the batch that shared the layer's
    /// input (the sampled Fisher's), and then `X Xᵀ` is computed once for all copies.
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
    /// Any parameter: explicit per-example gradients, flattened, `[M, numel]` (the generic
    /// per-example loop produces these).
    Dense {
        /// One flattened per-example gradient per row.
        rows: Tensor<2>,
    },
}

/// A weight block's factors flattened over examples and sequence: `(P, M, T, X [P·T, in],
/// Δ [M·T, out])`.
fn flatten(
    input: &Tensor<3>,
    output_grad: &Tensor<3>,
) -> (usize, usize, usize, Tensor<2>, Tensor<2>) {
    let [p, t, d_in] = input.dims();
    let [m, _, d_out] = output_grad.dims();
    (
        p,
        m,
        t,
        input.clone().reshape([p * t, d_in]),
        output_grad.clone().reshape([m * t, d_out]),
    )
}

/// `weighted` (`[M, T, out]`) summed over the rows that share an input row of a period-`P`
/// input (rows `i`, `i + P`, …): `[P, T, out]`.
fn fold_rows(weighted: Tensor<3>, p: usize) -> Tensor<3> {
    let [m, t, d_out] = weighted.dims();
    if m > p {
        weighted
            .reshape([m / p, p * t * d_out])
            .sum_dim(0)
            .reshape([p, t, d_out])
    } else {
        weighted
    }
}

/// `Σ_m input[m mod P]ᵀ weighted[m]` (`[in, out]`) for `weighted` `[M, T, out]`: the rows that
/// share an input row are summed first, so the product is one `[in, P·T] × [P·T, out]` matmul.
fn weight_back(input: &Tensor<3>, weighted: Tensor<3>) -> Tensor<2> {
    let [p, t, d_in] = input.dims();
    let d_out = weighted.dims()[2];
    input
        .clone()
        .reshape([p * t, d_in])
        .transpose()
        .matmul(fold_rows(weighted, p).reshape([p * t, d_out]))
}

/// `X Xᵀ` for `X` `[R, d]`. (Computing it by halves, `X₁X₁ᵀ`, `X₂X₁ᵀ`, `X₂X₂ᵀ`, saves a
/// quarter of the multiply-adds but measured slower on flex at R = 512: smaller matmuls and the
/// concatenation cost more than they save.)
fn self_gram(x: Tensor<2>) -> Tensor<2> {
    x.clone().matmul(x.transpose())
}

/// `X Xᵀ` (`[P·T, P·T]`) tiled to `[rows·T, cols·T]` (both multiples of `P`).
fn tiled(xx: Tensor<2>, p: usize, rows: usize, cols: usize) -> Tensor<2> {
    let xx = if rows > p {
        xx.repeat_dim(0, rows / p)
    } else {
        xx
    };
    if cols > p {
        xx.repeat_dim(1, cols / p)
    } else {
        xx
    }
}

impl BlockFactors {
    /// Number of rows `M` (examples times Fisher samples).
    pub fn rows(&self) -> usize {
        match self {
            BlockFactors::Weight { output_grad, .. } => output_grad.dims()[0],
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
            BlockFactors::Bias { output_grad: rows } | BlockFactors::Dense { rows } => rows.clone(),
        }
    }

    /// Registers the factors of parameter `id` in `grads` under derived ids.
    pub(crate) fn register(&self, id: ParamId, grads: &mut GradientsParams) {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                grads.register(derived_id(id, TAG_INPUT), input.clone());
                grads.register(derived_id(id, TAG_OUTPUT_GRAD), output_grad.clone());
            }
            BlockFactors::Bias { output_grad } => {
                grads.register(derived_id(id, TAG_BIAS), output_grad.clone())
            }
            BlockFactors::Dense { rows } => grads.register(derived_id(id, TAG_ROWS), rows.clone()),
        }
    }

    /// Looks up the factors of parameter `id` in `grads`.
    pub(crate) fn lookup(id: ParamId, grads: &GradientsParams) -> Option<Self> {
        if let (Some(input), Some(output_grad)) = (
            grads.get::<3>(derived_id(id, TAG_INPUT)),
            grads.get::<3>(derived_id(id, TAG_OUTPUT_GRAD)),
        ) {
            return Some(BlockFactors::Weight { input, output_grad });
        }
        if let Some(output_grad) = grads.get::<2>(derived_id(id, TAG_BIAS)) {
            return Some(BlockFactors::Bias { output_grad });
        }
        grads
            .get::<2>(derived_id(id, TAG_ROWS))
            .map(|rows| BlockFactors::Dense { rows })
    }

    /// The cross Gram `U U_dᵀ` (`[M, N]`) of a bias or dense block's rows with its data rows
    /// (weights: see [`Block::gram_and_implicit_projection`], which shares `X Xᵀ`).
    fn cross_gram(&self, data: &DataRows) -> Tensor<2> {
        match (self, &data.factors) {
            (BlockFactors::Bias { output_grad: a }, BlockFactors::Bias { output_grad: b })
            | (BlockFactors::Dense { rows: a }, BlockFactors::Dense { rows: b }) => {
                a.clone().matmul(b.clone().transpose())
            }
            _ => unreachable!("weights are handled by Block::gram_and_projection"),
        }
    }
}

/// The data rows of a block whose Fisher rows are not the data's (the sampled Fisher, whose
/// rows are labels drawn from the model, or a curvature batch, whose rows are the first `m` of
/// the data's): the minibatch gradient is `U_dᵀ (w·1)` with these rows `U_d` (see
/// [`Factors::gradient_weight`]).
#[derive(Clone, Debug)]
pub struct DataRows {
    /// The data rows' factors, of the same kind as the block's Fisher rows, scaled alike.
    pub factors: BlockFactors,
    /// For a weight: the Fisher rows' input (`[P, T, in]`) is the first `P ≤ N` rows of the
    /// data rows' input (`[N, T, in]`), so that `X_F X_dᵀ` serves both Gram products and one
    /// matmul both back-projections.
    pub shares_input: bool,
}

impl DataRows {
    /// Registers the data rows of parameter `id` in `grads` under derived ids (a weight's input
    /// under a tag of its own when the Fisher rows' input is a prefix of it).
    pub(crate) fn register(&self, id: ParamId, grads: &mut GradientsParams) {
        match &self.factors {
            BlockFactors::Weight { input, output_grad } => {
                let tag = if self.shares_input {
                    TAG_DATA_SHARED_INPUT
                } else {
                    TAG_DATA_INPUT
                };
                grads.register(derived_id(id, tag), input.clone());
                grads.register(derived_id(id, TAG_DATA_OUTPUT_GRAD), output_grad.clone());
            }
            BlockFactors::Bias { output_grad } => {
                grads.register(derived_id(id, TAG_DATA_BIAS), output_grad.clone())
            }
            BlockFactors::Dense { rows } => {
                grads.register(derived_id(id, TAG_DATA_ROWS), rows.clone())
            }
        }
    }

    /// Looks up the data rows of parameter `id`, whose Fisher rows are `fisher`.
    pub(crate) fn lookup(
        id: ParamId,
        grads: &GradientsParams,
        fisher: &BlockFactors,
    ) -> Option<Self> {
        match fisher {
            BlockFactors::Weight { .. } => {
                let output_grad = grads.get::<3>(derived_id(id, TAG_DATA_OUTPUT_GRAD))?;
                let (input, shares_input) =
                    match grads.get::<3>(derived_id(id, TAG_DATA_SHARED_INPUT)) {
                        Some(input) => (input, true),
                        None => (grads.get::<3>(derived_id(id, TAG_DATA_INPUT))?, false),
                    };
                Some(DataRows {
                    factors: BlockFactors::Weight { input, output_grad },
                    shares_input,
                })
            }
            BlockFactors::Bias { .. } => {
                grads
                    .get::<2>(derived_id(id, TAG_DATA_BIAS))
                    .map(|output_grad| DataRows {
                        factors: BlockFactors::Bias { output_grad },
                        shares_input: false,
                    })
            }
            BlockFactors::Dense { .. } => {
                grads
                    .get::<2>(derived_id(id, TAG_DATA_ROWS))
                    .map(|rows| DataRows {
                        factors: BlockFactors::Dense { rows },
                        shares_input: false,
                    })
            }
        }
    }
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
    /// implicit, `U_dᵀ (w·1)` (see [`Factors::gradient_weight`]).
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

/// All blocks of a model found in a [`GradientsParams`], in module order.
#[derive(Clone, Debug)]
pub struct Factors {
    /// One block per trainable parameter tensor.
    pub blocks: Vec<Block>,
    /// The gradient, when left implicit, is `g = U_dᵀ (w·1)` with the scalar `w` (`[1]`): `U_d`
    /// are the data rows, which for the empirical Fisher on the whole batch are the Fisher rows
    /// `U` themselves.
    /// Then `U g = K (w·1)` (or the cross Gram `U U_dᵀ (w·1)`) and `(F + λI)⁻¹ g = (U_dᵀ (w·1) −
    /// Uᵀβ) / λ`, which spares the gradient's product per layer (autodiff never computed the
    /// weight gradients at all).
    pub gradient_weight: Option<Tensor<1>>,
}

impl Factors {
    /// Collects, for every parameter of `module`, its gradient and captured factors.
    ///
    /// Errors: no factors at all ([`NatGradError::MissingFactors`]), parameters with gradients but
    /// no factors ([`NatGradError::UncapturedParameters`]), or blocks whose row counts differ.
    pub fn from_grads<M: Module>(
        module: &M,
        grads: &GradientsParams,
    ) -> Result<Self, NatGradError> {
        let mut collector = Collector {
            grads,
            path: Vec::new(),
            blocks: Vec::new(),
            uncaptured: Vec::new(),
            orphans: Vec::new(),
            implicit: false,
        };
        let gradient_weight = grads.get::<1>(gradient_weight_id());
        collector.implicit = gradient_weight.is_some();
        module.visit(&mut collector);
        let Collector {
            blocks,
            uncaptured,
            orphans,
            ..
        } = collector;
        if blocks.is_empty() {
            return Err(NatGradError::MissingFactors);
        }
        if !uncaptured.is_empty() {
            return Err(NatGradError::UncapturedParameters { params: uncaptured });
        }
        if !orphans.is_empty() {
            return Err(NatGradError::InconsistentFactors(format!(
                "factors without a gradient for [{}]",
                orphans.join(", ")
            )));
        }
        let m = blocks[0].factors.rows();
        if let Some(b) = blocks.iter().find(|b| b.factors.rows() != m) {
            return Err(NatGradError::InconsistentFactors(format!(
                "`{}` has {} rows, `{}` has {m}",
                b.path,
                b.factors.rows(),
                blocks[0].path
            )));
        }
        for b in &blocks {
            if let BlockFactors::Weight { input, .. } = &b.factors {
                if m % input.dims()[0] != 0 {
                    return Err(NatGradError::InconsistentFactors(format!(
                        "`{}` has {} input rows, which do not divide its {m} rows",
                        b.path,
                        input.dims()[0]
                    )));
                }
            }
        }
        if let Some(first) = blocks.iter().find_map(|b| b.data.as_ref()) {
            let n = first.factors.rows();
            for b in &blocks {
                let Some(data) = &b.data else {
                    return Err(NatGradError::InconsistentFactors(format!(
                        "`{}` has no data rows but other parameters do",
                        b.path
                    )));
                };
                let shared_ok = match (&b.factors, &data.factors) {
                    (
                        BlockFactors::Weight { input, .. },
                        BlockFactors::Weight { input: d_input, .. },
                    ) if data.shares_input => {
                        let p = input.dims()[0];
                        d_input.dims()[0] == n && p <= n && input.dims()[1..] == d_input.dims()[1..]
                    }
                    _ => true,
                };
                if data.factors.rows() != n || !shared_ok {
                    return Err(NatGradError::InconsistentFactors(format!(
                        "the data rows of `{}` do not match those of the other parameters",
                        b.path
                    )));
                }
            }
        }
        Ok(Factors {
            blocks,
            gradient_weight,
        })
    }

    /// The minibatch gradient of block `i`, in its matrix view (computed from the factors when
    /// it is implicit).
    pub fn gradient(&self, i: usize) -> Tensor<2> {
        let block = &self.blocks[i];
        match (&block.grad, &self.gradient_weight) {
            (Some(g), _) => g.clone(),
            (None, Some(w)) => block.implicit_gradient(w),
            (None, None) => unreachable!("from_grads keeps only blocks with a gradient"),
        }
    }

    /// Number of rows `M` shared by all blocks.
    pub fn rows(&self) -> usize {
        self.blocks[0].factors.rows()
    }

    /// Total number of parameters covered.
    pub fn num_params(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.dims.iter().product::<usize>())
            .sum()
    }

    /// Splits the blocks by module (layer), in module order, for the block-diagonal Fisher.
    pub fn by_group(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            match groups.iter_mut().find(|(g, _)| *g == b.group) {
                Some((_, members)) => members.push(i),
                None => groups.push((b.group.clone(), vec![i])),
            }
        }
        groups.into_iter().map(|(_, m)| m).collect()
    }
}

struct Collector<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    blocks: Vec<Block>,
    uncaptured: Vec<String>,
    orphans: Vec<String>,
    /// Blocks with factors but no explicit gradient use the implicit one.
    implicit: bool,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = if self.path.is_empty() {
            format!("param {}", param.id)
        } else {
            self.path.join(".")
        };
        let group = self.path[..self.path.len().saturating_sub(1)].join(".");
        let grad = self.grads.get::<D>(param.id);
        let factors = BlockFactors::lookup(param.id, self.grads);
        match (grad, factors) {
            (Some(_), None) => self.uncaptured.push(path),
            (None, None) => {}
            (None, Some(_)) if !self.implicit => self.orphans.push(path),
            (grad, Some(factors)) => {
                let view = factors.view_dims();
                let dims = param.val().dims().to_vec();
                let numel: usize = dims.iter().product();
                if numel != view[0] * view[1] {
                    self.orphans
                        .push(format!("{path} (shape {dims:?} vs factors {view:?})"));
                    return;
                }
                let data = DataRows::lookup(param.id, self.grads, &factors);
                self.blocks.push(Block {
                    id: param.id,
                    path,
                    group,
                    dims,
                    grad: grad.map(|g| g.reshape(view)),
                    factors,
                    data,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_devices::cpu_devices;
    use burn::tensor::Distribution;

    fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// A weight block whose `P = 3` input rows serve `M = 6` rows (two copies, `T = 2`) gives
    /// the products of the same block with the input repeated.
    #[test]
    fn periodic_input_equals_repeated_input() {
        for device in cpu_devices() {
            let input = Tensor::<3>::random([3, 2, 4], Distribution::Normal(0.0, 1.0), &device);
            let output_grad =
                Tensor::<3>::random([6, 2, 5], Distribution::Normal(0.0, 1.0), &device);
            let periodic = BlockFactors::Weight {
                input: input.clone(),
                output_grad: output_grad.clone(),
            };
            let full = BlockFactors::Weight {
                input: Tensor::cat(vec![input.clone(), input], 0),
                output_grad,
            };
            let v = Tensor::<2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device);
            let alpha = Tensor::<2>::random([6, 1], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(periodic.rows(), 6);
            assert!(max_diff(periodic.gram(), full.gram()) < 1e-4);
            assert!(max_diff(periodic.project(&v), full.project(&v)) < 1e-4);
            assert!(max_diff(periodic.back(&alpha), full.back(&alpha)) < 1e-4);
            assert!(max_diff(periodic.dense_rows(), full.dense_rows()) < 1e-4);
            let (a, b) = (periodic.slice_rows(3, 6), full.slice_rows(3, 6));
            assert!(max_diff(a.gram(), b.gram()) < 1e-4);
            assert!(matches!(a, BlockFactors::Weight { ref input, .. } if input.dims()[0] == 3));
        }
    }
}
