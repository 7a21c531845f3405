//! The Conv2d rule: a convolution is a Linear layer applied to every patch of its input
//! (Grosse & Martens, "A Kronecker-factored approximate Fisher matrix for convolution layers",
//! 2016).
//!
//! Factors: the input's patches `Uₙ` (`unfold4d`, `[N, T, C·kh·kw]` with `T = H'·W'` output
//! positions, rows ordered `c·kh·kw + i·kw + j`) and the probe's gradient `Δₙ` (`[N, T, out]`);
//! the per-example weight gradient is `Δₙᵀ Uₙ`, `[out, C·kh·kw]`, which is the weight
//! `[out, C, kh, kw]` read row-major. With `groups = g`, output channels `j·out/g ..` see input
//! channels `j·C/g ..` only: the product is taken per group. For the Gram solve the per-example
//! gradients are materialised (`N × out·C/g·kh·kw`): a convolution's exact Gram
//! `Σ_{t,s}(uₙₜ·uₘₛ)(δₙₜ·δₘₛ)` would cost `(N·T)²` memory. For KFAC, a one-group
//! convolution with more weights than its block limit
//! ([`block_limit`](crate::KfacConfig::block_limit)) keeps the two factors
//! instead, as a [`BlockFactors::Weight`] whose first factor is `Δ` (`[N, T, out]`, the view's
//! rows) and second the patches: KFAC then forms KFC's `Σ δδᵀ ⊗ Σ uuᵀ` ("expand") instead of
//! the `numel²` block it could not hold. Padding (`Valid`, `Explicit`, `Same`, asymmetric with an even kernel),
//! stride and dilation are those of the layer's own forward pass.

use burn::module::ParamId;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::module::{conv2d, unfold4d};
use burn::tensor::ops::{ConvOptions, PadMode, UnfoldOptions};
use burn::tensor::{Gradients, Tensor};

use super::{constant, probed, trainable, Recorded};
use crate::capture::Capture;
use crate::factors::BlockFactors;

/// One use of a Conv2d layer.
#[derive(Clone, Debug)]
pub(crate) struct Conv2dUse {
    /// The weight, when trainable.
    weight: Option<ParamId>,
    /// The bias, when the layer has one and it is trainable.
    bias: Option<ParamId>,
    /// The input's patches, without autodiff, `[N, T, C·kh·kw]`.
    patches: Tensor<3>,
    /// The probe leaf, `[N, out, H', W']`.
    probe: Tensor<4>,
    /// The layer's groups.
    groups: usize,
}

impl Conv2dUse {
    /// The blocks of this use; with `kronecker` (KFAC's block limit) a one-group weight with
    /// more entries keeps its factors (see the module documentation), otherwise its per-example
    /// gradients are materialised.
    pub(crate) fn blocks(
        self,
        grads: &Gradients,
        kronecker: Option<usize>,
    ) -> Option<Vec<(ParamId, BlockFactors)>> {
        let grad = self.probe.grad(grads)?;
        let [n, out, oh, ow] = grad.dims();
        let t = oh * ow;
        // Δₙ transposed, `[N, out, T]`.
        let delta = grad.reshape([n, out, t]);
        let mut blocks = Vec::new();
        if let Some(weight) = self.weight {
            let g = self.groups;
            let numel = out * self.patches.dims()[2] / g;
            let factors = if g == 1 && kronecker.is_some_and(|limit| numel > limit) {
                // The view `[out, C·kh·kw]` is `Σ_t δₜᵀ uₜ`: Δ is the left factor.
                BlockFactors::Weight {
                    input: delta.clone().swap_dims(1, 2),
                    output_grad: self.patches,
                }
            } else {
                let ckk = self.patches.dims()[2];
                let (og, cg) = (out / g, ckk / g);
                let per_example = delta
                    .clone()
                    .reshape([n, g, og, t])
                    .matmul(self.patches.reshape([n, t, g, cg]).swap_dims(1, 2))
                    .reshape([n, out * cg]);
                BlockFactors::Dense { rows: per_example }
            };
            blocks.push((weight, factors));
        }
        if let Some(bias) = self.bias {
            let rows = delta.sum_dim(2).reshape([n, out]);
            blocks.push((bias, BlockFactors::Bias { output_grad: rows }));
        }
        Some(blocks)
    }
}

/// `((top, bottom), (left, right))` as the layer's own forward pass pads an `h × w` input (Burn
/// 0.22's `PaddingConfig2d::calculate_padding_2d_pairs`, which is crate-private): `Same` pads
/// `(out − 1)·stride + kernel − size` in all, the extra pixel of an odd total at the end.
fn padding(layer: &Conv2d, h: usize, w: usize) -> ((usize, usize), (usize, usize)) {
    let same = |kernel: usize, stride: usize, size: usize| {
        let out = size.div_ceil(stride);
        let total = if out > 0 {
            ((out - 1) * stride + kernel).saturating_sub(size)
        } else {
            0
        };
        (total / 2, total - total / 2)
    };
    match &layer.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (
            same(layer.kernel_size[0], layer.stride[0], h),
            same(layer.kernel_size[1], layer.stride[1], w),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((*top, *bottom), (*left, *right)),
    }
}

impl Capture {
    /// `layer.forward(input)` for a 2-D convolution on `[N, C, H, W]` input, recording the
    /// input's patches and a probe leaf at its output `[N, out, H', W']`. As for
    /// [`linear`](Self::linear): the parameters enter the graph as constants, a frozen parameter
    /// gets no factors, a layer with neither parameter trainable is not recorded. Every
    /// stride, dilation, group count and padding of Burn's `Conv2d` is handled (see the module
    /// documentation for the factors).
    /// An input on a plain device (as Burn's data loaders give a batch) joins the graph.
    pub fn conv2d(&mut self, layer: &Conv2d, input: Tensor<4>) -> Tensor<4> {
        if !self.is_enabled() {
            return layer.forward(input);
        }
        // A batch on the plain device (as Burn's data loaders give it) joins the graph here.
        let input = input.autodiff();
        let (weight, bias) = trainable(&layer.weight, &layer.bias);
        if weight.is_none() && bias.is_none() {
            return layer.forward(input);
        }
        let [_, _, h, w] = input.dims();
        let (rows, cols) = padding(layer, h, w);
        let options =
            ConvOptions::new_with_padding(layer.stride, [rows, cols], layer.dilation, layer.groups);
        let output = conv2d(
            input.clone(),
            constant(layer.weight.val()),
            layer.bias.as_ref().map(|b| constant(b.val())),
            options,
        );
        let dims = output.dims();
        let (probe, output) = probed(output, dims);
        // The patches, padded as the forward pass pads (possibly asymmetrically), then unfolded
        // without padding.
        let x = input.inner();
        let x = if rows == (0, 0) && cols == (0, 0) {
            x
        } else {
            x.pad([rows, cols], PadMode::Constant(0.0))
        };
        let patches = unfold4d(
            x,
            layer.kernel_size,
            UnfoldOptions::new(layer.stride, [0, 0], layer.dilation),
        )
        .swap_dims(1, 2);
        let [_, _, oh, ow] = output.dims();
        debug_assert_eq!(patches.dims()[1], oh * ow, "one patch per output position");
        self.records.push(Recorded::Conv2d(Conv2dUse {
            weight,
            bias,
            patches,
            probe,
            groups: layer.groups,
        }));
        output
    }
}
