//! Layer rules: one file per layer kind, each the same small set of operations.
//!
//! A rule (modelled on ASDL's `operations/` and kfac-jax's per-layer curvature blocks):
//!
//! 1. runs its layer inside [`Capture`](crate::Capture) with the layer's parameters as graph
//!    constants (the backward pass computes no gradient for them) and a probe leaf at the
//!    layer's output (a zero leaf added to it, or the output itself when it carries no
//!    gradient: [`probed`]), recording what the factors need (the layer input, or its patches);
//! 2. after the backward pass, turns the probe's gradient into the **factor format** every rule
//!    speaks, the one curvlinops normalises layers to: inputs `[N, T, in]` and output gradients
//!    `[N, T, out]`, `N` examples (rows), `T` weight-sharing positions (a sequence's steps, a
//!    convolution's output pixels), with per-example gradient `Σ_t inputₙₜᵀ output_gradₙₜ`;
//! 3. hands each trainable parameter its [`BlockFactors`], whose matrix view is the parameter's
//!    shape read row-major as `[shape[0], rest]`: factors for Linear's `[in, out]` weight,
//!    explicit per-example rows for a convolution's `[out, in/groups, kh, kw]` (cheaper than its
//!    `(N·T)²` Gram; for KFAC beyond its block limit, its two factors, output gradients
//!    first: KFC) and for the norms' `γ`, `β` (LayerNorm, BatchNorm, GroupNorm, RmsNorm), ids
//!    and output gradients for an embedding table (its one-hot input never formed), a bias's
//!    `Σ_t output_gradₙₜ`.
//!
//! The Gram, projection and back-projection algebra is shared ([`factors`](crate::factors));
//! solvers see blocks, never layers. Adding a layer kind is one file here plus its test
//! against the per-example loop ([`per_example_classification`](crate::per_example_classification)).

pub(crate) mod batch_norm;
pub(crate) mod conv2d;
pub(crate) mod embedding;
pub(crate) mod group_norm;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod rms_norm;
pub(crate) mod scale_shift;

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Gradients, Tensor};

use crate::error::NatGradError;
use crate::factors::BlockFactors;

/// `param` as a constant of the graph: cut from it and not requiring a gradient, so that the
/// backward pass computes none for it. (`Tensor::detach` alone keeps `require_grad`, and autodiff
/// would still compute, then drop, the weight gradient: the product `Xᵀ Δ`.)
pub(crate) fn constant<const D: usize>(param: Tensor<D>) -> Tensor<D> {
    param.detach().set_require_grad(false)
}

/// The ids of a layer's trainable parameters (with `require_grad`): frozen ones get no factors.
pub(crate) fn trainable<const D: usize>(
    weight: &Param<Tensor<D>>,
    bias: &Option<Param<Tensor<1>>>,
) -> (Option<ParamId>, Option<ParamId>) {
    let weight = weight.val().is_require_grad().then_some(weight.id);
    let bias = bias
        .as_ref()
        .filter(|b| b.val().is_require_grad())
        .map(|b| b.id);
    (weight, bias)
}

/// Panics with a message saying what to change unless the layer's `param` is on an autodiff
/// device.
pub(crate) fn require_autodiff<const D: usize>(param: &Tensor<D>, what: &str) {
    assert!(
        param.is_autodiff(),
        "{}",
        NatGradError::InvalidInput(format!(
            "Capture::{what} needs the model on an autodiff device: build it on, or move it to, \
             `device.autodiff()`"
        ))
    );
}

/// A zero leaf of `shape` that requires a gradient: added to a layer's output, its gradient
/// after the backward pass is the gradient at that output.
pub(crate) fn probe<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::zeros(shape, device).require_grad()
}

/// A layer's `output` with a probe (see [`probe`]) of shape `dims` (the output's elements, in
/// the rule's layout): `(probe, output)`, the probe's gradient after the backward pass being
/// the gradient at the output. An output that carries no gradient (the layer's input derives
/// from the data alone, its parameters enter as constants: a network's first layer) is made
/// the leaf itself instead of adding a zero leaf to it: the same values and gradient, without
/// the zeros and the sum.
pub(crate) fn probed<const D: usize, const P: usize>(
    output: Tensor<D>,
    dims: [usize; P],
) -> (Tensor<P>, Tensor<D>) {
    let shape = output.shape();
    if output.is_tracked() {
        let probe = probe(dims, &output.device());
        (probe.clone(), output + probe.reshape(shape))
    } else {
        let probe = output.reshape(dims).require_grad();
        (probe.clone(), probe.reshape(shape))
    }
}

/// Per-example rows `[N, F]` of `[N, T, F]`, summed over the `T` positions; without a
/// sequence (`T = 1`) the rows themselves, reshaped (a reduction over a dimension of one would
/// copy them).
pub(crate) fn sum_positions(rows: Tensor<3>) -> Tensor<2> {
    let [n, t, f] = rows.dims();
    let rows = if t == 1 { rows } else { rows.sum_dim(1) };
    rows.reshape([n, f])
}

/// What a rule recorded for one use of its layer in the forward pass.
#[derive(Clone, Debug)]
pub(crate) enum Recorded {
    /// A Linear layer.
    Linear(linear::LinearUse),
    /// A 2-D convolution.
    Conv2d(conv2d::Conv2dUse),
    /// An embedding table.
    Embedding(embedding::EmbeddingUse),
    /// A LayerNorm, BatchNorm, GroupNorm or RmsNorm: a scale (and shift) of a normalised input.
    ScaleShift(scale_shift::ScaleShiftUse),
}

impl Recorded {
    /// The factors of each trainable parameter of this use, or `None` when its probe got no
    /// gradient (the layer's output did not reach the loss).
    /// With `kronecker` (KFAC's block limit), a convolution with more weights keeps its
    /// Kronecker factors instead of materialising its per-example gradients.
    pub(crate) fn blocks(
        self,
        grads: &Gradients,
        kronecker: Option<usize>,
    ) -> Option<Vec<(ParamId, BlockFactors)>> {
        match self {
            Recorded::Linear(u) => u.blocks(grads),
            Recorded::Conv2d(u) => u.blocks(grads, kronecker),
            Recorded::Embedding(u) => u.blocks(grads),
            Recorded::ScaleShift(u) => u.blocks(grads),
        }
    }
}
