//! The LayerNorm rule: `y = x̂ ⊙ γ + β` over the last axis, `x̂` the normalised input.
//!
//! Factors: those of a scale and shift ([`scale_shift`](super::scale_shift)), `x̂` and `Δ` as
//! `[N, T, d]`. `x̂` is recomputed by the layer's own forward pass with `γ = 1` and no `β`, so
//! its `ε` (private to Burn's `LayerNorm`) is the layer's.

use burn::module::Param;
use burn::nn::LayerNorm;
use burn::tensor::Tensor;

use super::scale_shift::{scale_shift, Features};
use super::trainable;
use crate::capture::Capture;

impl Capture {
    /// `layer.forward(input)` for a LayerNorm over the last axis of `[N, …, d]` input, recording
    /// the normalised input and adding a zero probe leaf to its output. As for
    /// [`linear`](Self::linear): `γ` and `β` enter the graph as constants, a frozen one gets no
    /// factors, a layer with neither trainable is not recorded.
    ///
    /// # Panics
    /// If the capture is enabled and `input` has rank 1.
    pub fn layer_norm<const D: usize>(&mut self, layer: &LayerNorm, input: Tensor<D>) -> Tensor<D> {
        if !self.is_enabled() {
            return layer.forward(input);
        }
        assert!(D >= 2, "Capture::layer_norm needs an example dimension");
        // A batch on the plain device (as Burn's data loaders give it) joins the graph here.
        let input = input.autodiff();
        let (gamma, beta) = trainable(&layer.gamma, &layer.beta);
        if gamma.is_none() && beta.is_none() {
            return layer.forward(input);
        }
        // The layer's own normalisation, with γ = 1 and no β: x̂ with the layer's ε.
        let mut normaliser = layer.clone();
        normaliser.gamma =
            Param::from_tensor(layer.gamma.val().ones_like().detach()).set_require_grad(false);
        normaliser.beta = None;
        let normalised = normaliser.forward(input);
        scale_shift(
            self,
            normalised,
            Some(&layer.gamma),
            layer.beta.as_ref(),
            Features::Last,
        )
    }
}
