//! The damping `λ` in force, and its Levenberg–Marquardt adaptation (Martens & Grosse,
//! "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", 2015, §6.5; see
//! [`AdaptiveDampingConfig`]).

use crate::optim::config::AdaptiveDampingConfig;
use crate::optim::optimizer::NaturalGradient;

/// What the adaptation needs of the last applied step: the learning rate, trust-region factor
/// and damping it was applied with, `gᵀd`, `‖d‖²`, `dᵀFd` of its direction, and whether an
/// adaptation is due after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastStep {
    pub lr: f64,
    pub scale: f64,
    pub gradient_dot: f64,
    pub norm_sq: f64,
    pub quadratic: f64,
    pub damping: f64,
    pub due: bool,
}

impl LastStep {
    /// `q(δ) − q(0) = gᵀδ + ½ δᵀ(F + λI)δ` for the applied step `δ = −lr·scale·d`.
    pub fn predicted_change(&self) -> f64 {
        let t = self.lr * self.scale;
        -t * self.gradient_dot + 0.5 * t * t * (self.quadratic + self.damping * self.norm_sq)
    }
}

/// The Levenberg–Marquardt rule: `λ ω` when `ρ > 3/4`, `λ / ω` when `ρ < 1/4`, else `λ`, with `ω
/// = decay^period`, kept within the bounds.
pub(crate) fn levenberg_marquardt(damping: f64, rho: f64, c: &AdaptiveDampingConfig) -> f64 {
    let omega = c.decay.powi(c.period as i32);
    let next = if rho > 0.75 {
        damping * omega
    } else if rho < 0.25 {
        damping / omega
    } else {
        damping
    };
    next.clamp(c.min, c.max)
}

/// One adaptation of the damping: the reduction ratio `ρ` (actual over predicted change of the
/// loss) and the damping it set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DampingAdaptation {
    /// `ρ = (h(θ + δ) − h(θ)) / (q(δ) − q(0))`.
    pub rho: f64,
    /// The damping in force from now on.
    pub damping: f64,
}

impl NaturalGradient {
    /// The damping `λ` the next step is solved with: the configured one, or where the adaptive
    /// damping has moved it.
    pub fn damping(&self) -> f64 {
        self.lock().damping.unwrap_or(self.config.damping)
    }

    /// Whether [`adapt_damping`](Self::adapt_damping) wants the loss after the last applied step:
    /// adaptive damping is on and the step was the `period`-th since the last adaptation. The
    /// loop then runs one more forward pass, on the same batch with the updated model.
    pub fn adaptation_due(&self) -> bool {
        self.config.adaptive_damping.is_some() && self.lock().last_step.is_some_and(|last| last.due)
    }

    /// Adapts the damping from the loss on the last step's batch before it (`loss_before`, as
    /// [`classification`](Self::classification) reported it) and after it (`loss_after`, the
    /// updated model on the same batch). Returns the ratio and the new damping, or `None` when no
    /// adaptation was due, adaptive damping is off, or the losses or the prediction are not
    /// usable (not finite, or a predicted change that is not a decrease); then `λ` stays.
    pub fn adapt_damping(&self, loss_before: f64, loss_after: f64) -> Option<DampingAdaptation> {
        let config = self.config.adaptive_damping.as_ref()?;
        let mut shared = self.lock();
        let last = shared.last_step.take().filter(|l| l.due)?;
        let damping = shared.damping.unwrap_or(self.config.damping);
        let predicted = last.predicted_change();
        let actual = loss_after - loss_before;
        if !(predicted < 0.0 && predicted.is_finite() && actual.is_finite()) {
            return None;
        }
        let rho = actual / predicted;
        let next = levenberg_marquardt(damping, rho, config);
        shared.damping = Some(next);
        log::debug!("natural gradient: ρ = {rho}, damping {damping} → {next}");
        Some(DampingAdaptation { rho, damping: next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_moves_the_damping_by_the_reduction_ratio() {
        let c = AdaptiveDampingConfig::new()
            .with_period(2)
            .with_min(0.1)
            .with_max(10.0);
        let omega = 0.95f64.powi(2);
        // A good prediction trusts the model more, a bad one less, in between nothing moves.
        assert!((levenberg_marquardt(1.0, 0.9, &c) - omega).abs() < 1e-12);
        assert!((levenberg_marquardt(1.0, 0.1, &c) - 1.0 / omega).abs() < 1e-12);
        assert!((levenberg_marquardt(1.0, -2.0, &c) - 1.0 / omega).abs() < 1e-12);
        assert_eq!(levenberg_marquardt(1.0, 0.5, &c), 1.0);
        // The bounds hold.
        assert_eq!(levenberg_marquardt(0.1, 0.9, &c), 0.1);
        assert_eq!(levenberg_marquardt(10.0, 0.0, &c), 10.0);
    }

    #[test]
    fn the_predicted_change_is_the_damped_quadratic_model() {
        let last = LastStep {
            lr: 0.5,
            scale: 0.8,
            gradient_dot: 3.0,
            norm_sq: 2.0,
            quadratic: 4.0,
            damping: 0.5,
            due: true,
        };
        // t = 0.4: −0.4·3 + ½·0.16·(4 + 0.5·2) = −1.2 + 0.4.
        assert!((last.predicted_change() - (-0.8)).abs() < 1e-12);
    }
}
