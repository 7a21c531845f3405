//! The Linear rule: `z = x W + b` with `W` `[in, out]`.
//!
//! Factors: the layer input `[N, T, in]` and the probe's gradient `[N, T, out]`; the
//! per-example weight gradient is `Σ_t xₙₜᵀ Δₙₜ` and the bias's `Σ_t Δₙₜ` (Goodfellow,
//! "Efficient Per-Example Gradient Computations", 2015).

use burn::module::ParamId;
use burn::nn::Linear;
use burn::tensor::{Gradients, Tensor};

use super::{constant, probed, sum_positions, trainable, Recorded};
use crate::capture::{Capture, Mode};
use crate::error::NatGradError;
use crate::factors::BlockFactors;

/// One use of a Linear layer.
#[derive(Clone, Debug)]
pub(crate) struct LinearUse {
    /// The weight, when trainable.
    weight: Option<ParamId>,
    /// The bias, when the layer has one and it is trainable.
    bias: Option<ParamId>,
    /// Layer input, without autodiff, `[P, T, in]`: `P = N`, or `N / copies` for a layer
    /// computed once for all copies of the batch (see [`Capture::linear`]).
    input: Tensor<3>,
    /// The probe leaf, `[N, T, out]`.
    probe: Tensor<3>,
}

impl LinearUse {
    pub(crate) fn blocks(self, grads: &Gradients) -> Option<Vec<(ParamId, BlockFactors)>> {
        let output_grad = self.probe.grad(grads)?;
        let mut blocks = Vec::new();
        if let Some(bias) = self.bias {
            let rows = sum_positions(output_grad.clone());
            blocks.push((bias, BlockFactors::Bias { output_grad: rows }));
        }
        if let Some(weight) = self.weight {
            let block = BlockFactors::Weight {
                input: self.input,
                output_grad,
            };
            blocks.insert(0, (weight, block));
        }
        Some(blocks)
    }
}

impl Capture {
    /// `layer.forward(input)`, recording the layer input and putting a probe leaf at its output
    /// (a zero leaf added to it, or the output itself when its input carries no gradient). The
    /// layer's parameters enter the graph as constants: the backward pass computes no
    /// gradient for them (their gradients come from the factors). A frozen parameter (without
    /// `require_grad`) gets no factors and is left alone; a layer with neither parameter
    /// trainable is not recorded. `input` is `[N, in]` or `[N, …, in]`: dimension 0 indexes the
    /// examples, the middle dimensions (a sequence) are summed over in the per-example gradient.
    ///
    /// For the sampled Fisher the batch is followed by `k` copies of its first `m` examples
    /// ([`NaturalGradient::capture`] makes such a capture): a layer whose input carries no
    /// gradient (it derives from the data alone, e.g. the first layer) is then computed once, on
    /// the batch, and the copies' rows of its output are copies of the batch's, so every copy
    /// shares that forward pass. With whole copies (`m = N`) its factors also keep one input row
    /// per example. (If something random, such as dropout on the raw input, made the copies'
    /// inputs differ, all copies use the batch's.)
    ///
    /// A capture of a step that reuses KFAC's factors ([`Capture::reuses_factors`]) records
    /// here too, though it is disabled: the reusing step's direction for this layer is cheaper
    /// from its rows than from its gradient. With low-rank inverses
    /// ([`KfacInverse::LowRank`](crate::KfacInverse::LowRank)) only where the rows at least
    /// halve the products with the inverses, or a low-rank input-side inverse joins the rows'
    /// product for less than the products with the gradient (`kfac::rows_form`); otherwise
    /// the layer runs plainly and its direction comes from its gradient.
    ///
    /// # Panics
    /// If the capture is enabled or reuses KFAC's factors, and `input` has rank 1 (no example
    /// dimension).
    ///
    /// [`NaturalGradient::capture`]: crate::NaturalGradient::capture
    pub fn linear<const D: usize>(&mut self, layer: &Linear, input: Tensor<D>) -> Tensor<D> {
        // A step that reuses KFAC's factors records its Linear layers too: their direction
        // `(A⁻¹ Xᵀ)(Δ G⁻¹)` from the rows is cheaper than from the gradient when the batch is
        // smaller than a side of the weight, or a low-rank `A⁻¹` joins the product
        // (`kfac/factored.rs`).
        if matches!(self.mode, Mode::Disabled) {
            return layer.forward(input);
        }
        assert!(
            D >= 2,
            "{}",
            NatGradError::InvalidInput(
                "Capture::linear needs an input of rank >= 2 whose first dimension indexes the \
                 examples"
                    .into()
            )
        );
        // A batch on the plain device (as Burn's data loaders give it) joins the graph here.
        let input = input.autodiff();
        let (weight, bias) = trainable(&layer.weight, &layer.bias);
        if weight.is_none() && bias.is_none() {
            // A frozen layer has nothing to precondition.
            return layer.forward(input);
        }
        let dims = input.dims();
        let n = dims[0];
        let d_in = dims[D - 1];
        let t: usize = dims[1..D - 1].iter().product();
        if let Mode::Reuse(policy) = self.mode {
            if !policy.pays(n * t, d_in, layer.weight.dims()[1]) {
                return layer.forward(input);
            }
        }
        // A layer whose input carries no gradient (it derives from the data alone) sees in each
        // stacked copy the rows of the batch it copies: it is computed once, on the batch, and
        // the copies' output rows are copied. This spares the sampled Fisher `k` copies of
        // (typically) its widest matmul. With whole copies the factors also keep one input row
        // per example (`X Xᵀ` is then shared by the copies).
        let shared = self.stack.filter(|s| s.rows() == n && !input.is_tracked());
        let computed = match shared {
            Some(s) => input.clone().narrow(0, 0, s.batch),
            None => input.clone(),
        };
        // The parameters enter as constants: autodiff then skips the weight-gradient matmuls,
        // which the factors replace (the minibatch gradient is `Σᵢ xᵢᵀΔᵢ`).
        let output = burn::tensor::module::linear(
            computed.clone(),
            constant(layer.weight.val()),
            layer.bias.as_ref().map(|b| constant(b.val())),
        );
        let (output, input) = match shared {
            Some(s) if s.curvature == s.batch => (output.repeat_dim(0, s.samples + 1), computed),
            Some(s) => {
                let copies = output
                    .clone()
                    .narrow(0, 0, s.curvature)
                    .repeat_dim(0, s.samples);
                (Tensor::cat(vec![output, copies], 0), input)
            }
            None => (output, input),
        };
        let rows = input.dims()[0];
        let d_out = output.dims()[D - 1];
        let (probe, output) = probed(output, [n, t, d_out]);
        self.records.push(Recorded::Linear(LinearUse {
            weight,
            bias,
            input: input.inner().reshape([rows, t, d_in]),
            probe,
        }));
        output
    }
}
