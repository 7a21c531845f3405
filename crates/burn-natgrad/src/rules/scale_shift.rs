//! The factors LayerNorm and BatchNorm share: a per-feature scale and shift, `y = x̂ ⊙ γ + β`,
//! of a normalised input `x̂` (kfac-jax's `ScaleAndShift` curvature block).
//!
//! Factors: `x̂` and the probe's gradient `Δ`, both `[N, T, d]` (`d` the normalised features,
//! `T` the positions sharing `γ` and `β`); the per-example gradients are `Σ_t x̂ₙₜ ⊙ Δₙₜ` for `γ`
//! and `Σ_t Δₙₜ` for `β`, `[N, d]` each, kept as explicit rows (they are as small as the
//! layer's output).

use burn::module::ParamId;
use burn::tensor::{Gradients, Tensor};

use crate::factors::BlockFactors;

/// One use of a scale-and-shift layer.
#[derive(Clone, Debug)]
pub(crate) struct ScaleShiftUse {
    /// `γ`, when trainable.
    pub(crate) gamma: Option<ParamId>,
    /// `β`, when the layer has one and it is trainable.
    pub(crate) beta: Option<ParamId>,
    /// The normalised input, without autodiff, `[N, T, d]`.
    pub(crate) normalised: Tensor<3>,
    /// The probe leaf, `[N, T, d]`.
    pub(crate) probe: Tensor<3>,
}

impl ScaleShiftUse {
    pub(crate) fn blocks(self, grads: &Gradients) -> Option<Vec<(ParamId, BlockFactors)>> {
        let delta = self.probe.grad(grads)?;
        let [n, _, d] = delta.dims();
        let mut blocks = Vec::new();
        if let Some(gamma) = self.gamma {
            let rows = (self.normalised * delta.clone()).sum_dim(1).reshape([n, d]);
            blocks.push((gamma, BlockFactors::Dense { rows }));
        }
        if let Some(beta) = self.beta {
            let rows = delta.sum_dim(1).reshape([n, d]);
            blocks.push((beta, BlockFactors::Dense { rows }));
        }
        Some(blocks)
    }
}
