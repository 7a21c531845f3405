//! The RmsNorm rule (Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019):
//! `y = x̂ ⊙ γ` over the last axis, `x̂ = x / rms(x)`.
//!
//! Factors: those of a scale ([`scale_shift`](super::scale_shift), no shift), `x̂` and `Δ` as
//! `[N, T, d]`. `x̂` is recomputed by the layer's own forward pass with `γ = 1`, so its `ε` and
//! its arithmetic are the layer's. The layer is per-example: every row is exact.

use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

use super::scale_shift::{scale_shift, Features};
use crate::capture::Capture;

impl Capture {
    /// `layer.forward(input)` for an RmsNorm over the last axis of `[N, …, d]` input, recording
    /// the normalised input and adding a zero probe leaf to its output. As for
    /// [`linear`](Self::linear): `γ` enters the graph as a constant, and a frozen `γ` is not
    /// recorded.
    ///
    /// # Panics
    /// If the capture is enabled and `input` has rank 1.
    pub fn rms_norm<const D: usize>(&mut self, layer: &RmsNorm, input: Tensor<D>) -> Tensor<D> {
        if !self.is_enabled() || !layer.gamma.val().is_require_grad() {
            return layer.forward(input);
        }
        assert!(D >= 2, "Capture::rms_norm needs an example dimension");
        // A batch on the plain device (as Burn's data loaders give it) joins the graph here.
        let input = input.autodiff();
        // The layer's own normalisation with γ = 1: x̂ with the layer's ε.
        let mut normaliser = layer.clone();
        normaliser.gamma =
            Param::from_tensor(layer.gamma.val().ones_like().detach()).set_require_grad(false);
        let normalised = normaliser.forward(input);
        scale_shift(self, normalised, Some(&layer.gamma), None, Features::Last)
    }
}
