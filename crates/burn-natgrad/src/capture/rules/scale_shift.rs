//! The factors the normalisation rules share (LayerNorm, BatchNorm, GroupNorm, RmsNorm): a
//! per-feature scale and shift, `y = x̂ ⊙ γ + β`, of a normalised input `x̂` (kfac-jax's
//! `ScaleAndShift` curvature block).
//!
//! Factors: `x̂` and the probe's gradient `Δ`, both `[N, T, d]` (`d` the normalised features,
//! `T` the positions sharing `γ` and `β`); the per-example gradients are `Σ_t x̂ₙₜ ⊙ Δₙₜ` for `γ`
//! and `Σ_t Δₙₜ` for `β`, `[N, d]` each, kept as explicit rows (they are as small as the
//! layer's output).

use burn::module::{Param, ParamId};
use burn::tensor::{Gradients, Tensor};

use super::{constant, probe, sum_positions, Recorded};
use crate::capture::Capture;
use crate::factors::BlockFactors;

/// Which axis of a normalised input holds the features `γ` and `β` scale and shift.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Features {
    /// The last axis (LayerNorm, RmsNorm): `[N, …, d]`, `T` the axes between.
    Last,
    /// Axis 1 (BatchNorm, GroupNorm): `[N, C, …]`, `T` the axes after it.
    Channels,
}

/// `normalised ⊙ γ + β` (either optional) along `features`, with the parameters as graph
/// constants and a zero probe leaf added, recorded into `capture` with the trainable ones' ids
/// (the rule has checked that there is one).
pub(crate) fn scale_shift<const D: usize>(
    capture: &mut Capture,
    normalised: Tensor<D>,
    gamma: Option<&Param<Tensor<1>>>,
    beta: Option<&Param<Tensor<1>>>,
    features: Features,
) -> Tensor<D> {
    let dims = normalised.dims();
    let (axis, after) = match features {
        Features::Last => (D - 1, 1..D - 1),
        Features::Channels => (1, 2..D),
    };
    let (n, d) = (dims[0], dims[axis]);
    let t: usize = dims[after].iter().product();
    let mut shape = [1; D];
    shape[axis] = d;
    let mut output = normalised.clone();
    if let Some(g) = gamma {
        output = output * constant(g.val()).reshape(shape);
    }
    if let Some(b) = beta {
        output = output + constant(b.val()).reshape(shape);
    }
    let probe = probe([n, t, d], &output.device());
    let (probe_view, normalised) = match features {
        Features::Last => (
            probe.clone().reshape(dims),
            normalised.inner().reshape([n, t, d]),
        ),
        Features::Channels => (
            probe.clone().swap_dims(1, 2).reshape(dims),
            normalised.inner().reshape([n, d, t]).swap_dims(1, 2),
        ),
    };
    let trainable =
        |p: Option<&Param<Tensor<1>>>| p.filter(|p| p.val().is_require_grad()).map(|p| p.id);
    capture.records.push(Recorded::ScaleShift(ScaleShiftUse {
        gamma: trainable(gamma),
        beta: trainable(beta),
        normalised,
        probe,
    }));
    output + probe_view
}

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
        let mut blocks = Vec::new();
        if let Some(gamma) = self.gamma {
            let rows = sum_positions(self.normalised * delta.clone());
            blocks.push((gamma, BlockFactors::Dense { rows }));
        }
        if let Some(beta) = self.beta {
            let rows = sum_positions(delta);
            blocks.push((beta, BlockFactors::Dense { rows }));
        }
        Some(blocks)
    }
}
