//! Per-example gradient factors of each parameter tensor, and how they travel inside Burn's
//! [`GradientsParams`].
//!
//! One concern a file: [`block`] holds the factors of one parameter and their products,
//! `rows` the index algebra of periodic rows, `data_rows` a block with its data rows, `codec`
//! how factors are registered in a `GradientsParams`; this file collects a model's blocks and
//! checks them. Factors are stored pre-scaled so that the Fisher block is exactly `UᵀU` (see
//! [`FisherKind`](crate::FisherKind)).

mod block;
mod codec;
mod data_rows;
mod gather;
pub mod products;
mod rows;

pub use block::BlockFactors;
pub(crate) use codec::{gradient_weight_id, reuse_marker_id};
pub use data_rows::{Block, DataRows};
pub(crate) use rows::{expand_rows, fold_rows, uniform_weights};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::NatGradError;
use crate::optim::uncovered::UncoveredPolicy;

/// A parameter with a gradient but no factors, moved by the damped gradient `g / λ` under
/// [`UncoveredPolicy::DampedGradient`]: its Fisher block is taken as zero.
#[derive(Clone, Debug)]
pub struct Uncovered {
    /// The parameter.
    pub id: ParamId,
    /// Its module path.
    pub path: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// Its minibatch gradient, flattened to `[1, numel]`.
    pub grad: Tensor<2>,
}

/// All blocks of a model found in a [`GradientsParams`], in module order.
#[derive(Clone, Debug)]
pub struct Factors {
    /// One block per trainable parameter tensor with captured factors.
    pub blocks: Vec<Block>,
    /// Parameters with a gradient but no factors (only under
    /// [`UncoveredPolicy::DampedGradient`]; the default refuses them).
    pub uncovered: Vec<Uncovered>,
    /// The gradient, when left implicit, is `g = U_dᵀ (w·1)` with the scalar `w` (`[1]`): `U_d`
    /// are the data rows, which for the empirical Fisher on the whole batch are the Fisher rows
    /// `U` themselves.
    /// Then `U g = K (w·1)` (or the cross Gram `U U_dᵀ (w·1)`) and `(F + λI)⁻¹ g = (U_dᵀ (w·1) −
    /// Uᵀβ) / λ`, which spares the gradient's product per layer (autodiff never computed the
    /// weight gradients at all).
    pub gradient_weight: Option<Tensor<1>>,
}

impl Factors {
    /// Collects, for every parameter of `module`, its gradient and captured factors, refusing
    /// parameters without factors (see [`collect`](Self::collect)).
    #[cfg(any(test, feature = "testing"))]
    pub fn from_grads<M: Module>(
        module: &M,
        grads: &GradientsParams,
    ) -> Result<Self, NatGradError> {
        Self::collect(module, grads, UncoveredPolicy::Refuse)
    }

    /// Collects, for every parameter of `module`, its gradient and captured factors;
    /// parameters with a gradient but no factors are refused or kept as [`Uncovered`], as
    /// `policy` says.
    ///
    /// Errors: no factors at all ([`NatGradError::MissingFactors`]), parameters with gradients but
    /// no factors under [`UncoveredPolicy::Refuse`] ([`NatGradError::UncapturedParameters`]),
    /// captured parameters that also received a gradient from a use outside the capture
    /// ([`NatGradError::MixedUse`]), factors whose view is not the parameter's shape, or blocks
    /// whose row counts differ.
    pub fn collect<M: Module>(
        module: &M,
        grads: &GradientsParams,
        policy: UncoveredPolicy,
    ) -> Result<Self, NatGradError> {
        let gradient_weight = grads.get::<1>(gradient_weight_id());
        let mut collector = Collector::new(grads, gradient_weight.is_some());
        module.visit(&mut collector);
        let Collector {
            blocks,
            uncovered,
            mixed,
            orphans,
            ..
        } = collector;
        if blocks.is_empty() {
            return Err(NatGradError::MissingFactors);
        }
        if !mixed.is_empty() {
            return Err(NatGradError::MixedUse { params: mixed });
        }
        if !uncovered.is_empty() && !policy.moves() {
            return Err(NatGradError::UncapturedParameters {
                params: uncovered.into_iter().map(|u| u.path).collect(),
            });
        }
        if !orphans.is_empty() {
            return Err(NatGradError::InconsistentFactors(format!(
                "factors without a gradient for [{}]",
                orphans.join(", ")
            )));
        }
        check_rows(&blocks)?;
        Ok(Factors {
            blocks,
            uncovered,
            gradient_weight,
        })
    }

    /// The gradients of a step that reuses KFAC's factors: the blocks of the layers it
    /// recorded (its Linear layers, with their implicit gradient) and every other parameter
    /// with a gradient as [`Uncovered`], in module order; no block at all is no error here.
    /// Errors: a recorded parameter also used outside the capture, or factors that do not fit
    /// their parameter.
    pub(crate) fn reused<M: Module>(
        module: &M,
        grads: &GradientsParams,
    ) -> Result<Self, NatGradError> {
        let gradient_weight = grads.get::<1>(gradient_weight_id());
        let mut collector = Collector::new(grads, gradient_weight.is_some());
        module.visit(&mut collector);
        if !collector.mixed.is_empty() {
            return Err(NatGradError::MixedUse {
                params: collector.mixed,
            });
        }
        if !collector.orphans.is_empty() {
            return Err(NatGradError::InconsistentFactors(format!(
                "factors without a gradient for [{}]",
                collector.orphans.join(", ")
            )));
        }
        if !collector.blocks.is_empty() {
            check_rows(&collector.blocks)?;
        }
        Ok(Factors {
            blocks: collector.blocks,
            uncovered: collector.uncovered,
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
            (None, None) => unreachable!("collect keeps only blocks with a gradient"),
        }
    }

    /// Number of rows `M` shared by all blocks.
    #[cfg(any(test, feature = "testing"))]
    pub fn rows(&self) -> usize {
        self.blocks[0].factors.rows()
    }

    /// Total number of parameters covered.
    #[cfg(any(test, feature = "testing"))]
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

/// Every block has the same number of rows, a weight's input rows divide them, and the data
/// rows (when there are) agree across blocks.
fn check_rows(blocks: &[Block]) -> Result<(), NatGradError> {
    let inconsistent = |msg: String| Err(NatGradError::InconsistentFactors(msg));
    let m = blocks[0].factors.rows();
    if let Some(b) = blocks.iter().find(|b| b.factors.rows() != m) {
        let (path, rows, first) = (&b.path, b.factors.rows(), &blocks[0].path);
        return inconsistent(format!("`{path}` has {rows} rows, `{first}` has {m}"));
    }
    for b in blocks {
        if let BlockFactors::Weight { input, .. } = &b.factors {
            if !m.is_multiple_of(input.dims()[0]) {
                let p = input.dims()[0];
                return inconsistent(format!(
                    "`{}` has {p} input rows, which do not divide its {m} rows",
                    b.path
                ));
            }
        }
    }
    let Some(first) = blocks.iter().find_map(|b| b.data.as_ref()) else {
        return Ok(());
    };
    let n = first.factors.rows();
    for b in blocks {
        let Some(data) = &b.data else {
            return inconsistent(format!(
                "`{}` has no data rows but other parameters do",
                b.path
            ));
        };
        let shared_ok = match (&b.factors, &data.factors) {
            (BlockFactors::Weight { input, .. }, BlockFactors::Weight { input: d_input, .. })
                if data.shares_input =>
            {
                let p = input.dims()[0];
                d_input.dims()[0] == n && p <= n && input.dims()[1..] == d_input.dims()[1..]
            }
            _ => true,
        };
        if data.factors.rows() != n || !shared_ok {
            return inconsistent(format!(
                "the data rows of `{}` do not match those of the other parameters",
                b.path
            ));
        }
    }
    Ok(())
}

/// Whether the block's matrix view is the parameter's shape read row-major as `[dims[0],
/// rest]` (a weight: Linear `[in, out]`, or a layer whose rows are its first axis), `[1, n]` for
/// a rank-1 bias, or the flattened parameter for explicit rows. A bare element count would let
/// a layer rule hand over a transposed or permuted view unnoticed.
fn view_matches(factors: &BlockFactors, dims: &[usize]) -> bool {
    let numel: usize = dims.iter().product();
    let [a, b] = factors.view_dims();
    match factors {
        BlockFactors::Weight { .. } | BlockFactors::Gather { .. } => {
            dims.len() >= 2 && a == dims[0] && a * b == numel
        }
        BlockFactors::Bias { .. } => dims.len() == 1 && a == 1 && b == dims[0],
        BlockFactors::Dense { .. } => a * b == numel,
    }
}

struct Collector<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    blocks: Vec<Block>,
    uncovered: Vec<Uncovered>,
    /// Captured parameters that also have an explicit gradient while the gradient is implicit:
    /// a use outside the capture.
    mixed: Vec<String>,
    orphans: Vec<String>,
    /// Blocks with factors but no explicit gradient use the implicit one.
    implicit: bool,
}

impl<'a> Collector<'a> {
    fn new(grads: &'a GradientsParams, implicit: bool) -> Self {
        Self {
            grads,
            path: Vec::new(),
            blocks: Vec::new(),
            uncovered: Vec::new(),
            mixed: Vec::new(),
            orphans: Vec::new(),
            implicit,
        }
    }
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
        let dims = param.val().dims().to_vec();
        match (grad, factors) {
            (Some(grad), None) => {
                let numel = dims.iter().product();
                self.uncovered.push(Uncovered {
                    id: param.id,
                    path,
                    dims,
                    grad: grad.reshape([1, numel]),
                });
            }
            (None, None) => {}
            (None, Some(_)) if !self.implicit => self.orphans.push(path),
            (Some(_), Some(_)) if self.implicit => self.mixed.push(path),
            (grad, Some(factors)) => {
                let factors = factors.with_shape(&dims);
                if !view_matches(&factors, &dims) {
                    let view = factors.view_dims();
                    self.orphans
                        .push(format!("{path} (shape {dims:?} vs factors {view:?})"));
                    return;
                }
                let view = factors.view_dims();
                let data = DataRows::lookup(param.id, self.grads, &factors).map(|d| DataRows {
                    factors: d.factors.with_shape(&dims),
                    ..d
                });
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
    use crate::testing::devices::cpu_devices;
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
