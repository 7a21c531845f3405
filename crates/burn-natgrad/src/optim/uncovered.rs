//! The policy for trainable parameters that no layer rule covers: refused (the default), or
//! moved by the damped or a scaled gradient, their Fisher block taken as zero.

use burn::config::Config;

/// What the optimizer does with a trainable parameter that has a gradient but no per-example
/// factors: a parameter of a layer no rule covers (e.g. a PReLU's), or one the forward pass
/// did not route through the [`Capture`](crate::Capture) (a Burn layer called directly).
#[derive(Config, Debug, PartialEq, Copy)]
pub enum UncoveredPolicy {
    /// Refuse the step with
    /// [`NatGradError::UncapturedParameters`](crate::NatGradError::UncapturedParameters), naming
    /// them (the default).
    Refuse,
    /// Take their Fisher block as zero: they move by the damped gradient `g / λ` (with the same
    /// momentum, weight decay and learning rate as the others), and add nothing to `dᵀFd`.
    /// With damping `λ` this is SGD at learning rate `lr / λ` for those parameters.
    DampedGradient,
    /// Their Fisher block is taken as zero and they move by `scale · g`: SGD at learning rate
    /// `lr · scale` for those parameters (with the same momentum and weight decay), whatever the
    /// damping. For layers whose good SGD step is far from `lr / λ` (a normalisation's scale
    /// and shift next to a natural gradient at `lr = λ`).
    ScaledGradient {
        /// The factor `scale > 0` of the gradient.
        scale: f64,
    },
}

impl UncoveredPolicy {
    /// Whether uncovered parameters are moved rather than refused.
    pub fn moves(&self) -> bool {
        !matches!(self, UncoveredPolicy::Refuse)
    }

    /// The factor of the gradient that moves an uncovered parameter, at damping `damping`.
    pub(crate) fn scale(&self, damping: f64) -> f64 {
        match self {
            UncoveredPolicy::Refuse => 0.0,
            UncoveredPolicy::DampedGradient => 1.0 / damping,
            UncoveredPolicy::ScaledGradient { scale } => *scale,
        }
    }
}
