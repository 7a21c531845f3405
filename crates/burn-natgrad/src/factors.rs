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
    /// A Linear weight `[in, out]`: `input` is `[M, T, in]`, `output_grad` is `[M, T, out]`, and
    /// the per-example gradient is `u_m = Σ_t input[m, t]ᵀ output_grad[m, t]`.
    Weight {
        /// Layer inputs, `[M, T, in]`.
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

/// A weight block's factors flattened over examples and sequence: `(M, T, X [M·T, in],
/// Δ [M·T, out])`.
fn flatten(input: &Tensor<3>, output_grad: &Tensor<3>) -> (usize, usize, Tensor<2>, Tensor<2>) {
    let [m, t, d_in] = input.dims();
    let d_out = output_grad.dims()[2];
    (
        m,
        t,
        input.clone().reshape([m * t, d_in]),
        output_grad.clone().reshape([m * t, d_out]),
    )
}

impl BlockFactors {
    /// Number of rows `M` (examples times Fisher samples).
    pub fn rows(&self) -> usize {
        match self {
            BlockFactors::Weight { input, .. } => input.dims()[0],
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
                input: input.slice(start..end),
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
                let (m, t, x, g) = flatten(input, output_grad);
                let k = x.clone().matmul(x.transpose()) * g.clone().matmul(g.transpose());
                if t == 1 {
                    k
                } else {
                    k.reshape([m, t, m, t])
                        .sum_dim(3)
                        .sum_dim(1)
                        .reshape([m, m])
                }
            }
            BlockFactors::Bias { output_grad: b } => b.clone().matmul(b.clone().transpose()),
            BlockFactors::Dense { rows } => rows.clone().matmul(rows.clone().transpose()),
        }
    }

    /// `U v` for a vector `v` in the block's matrix view: `[M, 1]`.
    pub fn project(&self, v: &Tensor<2>) -> Tensor<2> {
        match self {
            BlockFactors::Weight { input, output_grad } => {
                let (m, t, x, g) = flatten(input, output_grad);
                let per_row = (x.matmul(v.clone()) * g).sum_dim(1);
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
                let m = input.dims()[0];
                let weighted = output_grad.clone() * alpha.clone().reshape([m, 1, 1]);
                let (_, _, x, g) = flatten(input, &weighted);
                x.transpose().matmul(g)
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
                let [m, _, d_in] = input.dims();
                let d_out = output_grad.dims()[2];
                input
                    .clone()
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
    /// implicit, `Uᵀ (w·1)` (see [`Factors::gradient_weight`]).
    pub grad: Option<Tensor<2>>,
    /// The per-example factors.
    pub factors: BlockFactors,
}

/// All blocks of a model found in a [`GradientsParams`], in module order.
#[derive(Clone, Debug)]
pub struct Factors {
    /// One block per trainable parameter tensor.
    pub blocks: Vec<Block>,
    /// For the empirical Fisher the gradient lies in the span of the factors: `g = Uᵀ (w·1)`
    /// with the scalar `w` (`[1]`), here when the gradients were left implicit. Then
    /// `U g = K (w·1)` and `(F + λI)⁻¹ g = Uᵀ (w·1 − β) / λ`, which spares one product per layer
    /// (and autodiff never computed the weight gradients at all).
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
            (None, Some(w)) => block
                .factors
                .back(&uniform_weights(block.factors.rows(), w)),
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
                self.blocks.push(Block {
                    id: param.id,
                    path,
                    group,
                    dims,
                    grad: grad.map(|g| g.reshape(view)),
                    factors,
                });
            }
        }
    }
}
