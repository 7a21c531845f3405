//! The GroupNorm rule (Wu & He, "Group Normalization", ECCV 2018): `y = x̂ ⊙ γ + β` per channel,
//! axis 1 of `[N, C, …]`, `x̂` normalised over each example's groups of channels.
//!
//! Factors: those of a scale and shift ([`scale_shift`](super::scale_shift)), `x̂` and `Δ` as
//! `[N, T, C]`, `T` the positions after the channel axis. `x̂` is recomputed by the layer's own
//! forward pass without its affine part, so its `ε` and arithmetic are the layer's. The
//! statistics are each example's own, so the layer is per-example: every row is exact (unlike
//! BatchNorm's, [`batch_norm`](super::batch_norm)).

use burn::nn::GroupNorm;
use burn::tensor::Tensor;

use super::scale_shift::{scale_shift, Features};
use crate::capture::Capture;

impl Capture {
    /// `layer.forward(input)` for a GroupNorm over `[N, C, …]` input, recording the normalised
    /// input and adding a zero probe leaf to its output. As for [`linear`](Self::linear): `γ`
    /// and `β` enter the graph as constants, a frozen one gets no factors, a layer without
    /// trainable affine parameters is not recorded.
    ///
    /// # Panics
    /// If the capture is enabled and `input` has rank below 3.
    pub fn group_norm<const D: usize>(&mut self, layer: &GroupNorm, input: Tensor<D>) -> Tensor<D> {
        let trainable = |p: &Option<burn::module::Param<Tensor<1>>>| {
            p.as_ref().is_some_and(|p| p.val().is_require_grad())
        };
        if !self.is_enabled() || !(trainable(&layer.gamma) || trainable(&layer.beta)) {
            return layer.forward(input);
        }
        assert!(
            D >= 3,
            "Capture::group_norm needs examples, channels and positions"
        );
        // A batch on the plain device (as Burn's data loaders give it) joins the graph here.
        let input = input.autodiff();
        // The layer's own normalisation without its affine part.
        let mut normaliser = layer.clone();
        normaliser.gamma = None;
        normaliser.beta = None;
        normaliser.affine = false;
        let normalised = normaliser.forward(input);
        scale_shift(
            self,
            normalised,
            layer.gamma.as_ref(),
            layer.beta.as_ref(),
            Features::Channels,
        )
    }
}
