//! Checking a [`NaturalGradientConfig`] before training: every bad value or combination gets
//! an error naming the field and what it accepts.

use crate::curvature::full::Solver;
use crate::curvature::kfac::{KfacConfig, KfacInverse};
use crate::error::NatGradError;
use crate::fisher::FisherKind;
use crate::optim::config::{Curvature, NaturalGradientConfig};
use crate::optim::uncovered::UncoveredPolicy;

fn check_positive(field: &'static str, value: f64) -> Result<(), NatGradError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(NatGradError::InvalidConfig {
            field,
            reason: format!("must be a finite number > 0, got {value}"),
        });
    }
    Ok(())
}

impl NaturalGradientConfig {
    /// Checks every value; the error names the field and what it accepts.
    pub fn validate(&self) -> Result<(), NatGradError> {
        check_positive("damping", self.damping)?;
        if let Some(kl) = self.kl_max {
            check_positive("kl_max", kl)?;
        }
        if let FisherKind::Exact { classes } = self.fisher {
            if classes < 2 {
                return Err(NatGradError::InvalidConfig {
                    field: "fisher",
                    reason: format!(
                        "Exact {{ classes }} needs the softmax's width, at least 2, got {classes}"
                    ),
                });
            }
        }
        if let FisherKind::Sampled { samples: 0 } = self.fisher {
            return Err(NatGradError::InvalidConfig {
                field: "fisher",
                reason: "Sampled { samples } needs at least one sample per example, got 0".into(),
            });
        }
        match &self.curvature {
            Curvature::Kfac(k) => self.validate_kfac(k)?,
            Curvature::Full(f) => {
                if let Solver::CgSample(cg) | Solver::CgParam(cg) = &f.solver {
                    if cg.max_iters == 0 {
                        return Err(NatGradError::InvalidConfig {
                            field: "curvature.solver.max_iters",
                            reason: "must be at least 1 for a conjugate-gradient solver, got 0"
                                .into(),
                        });
                    }
                    check_positive("curvature.solver.tolerance", cg.tolerance)?;
                }
            }
        }
        if let Some(a) = &self.adaptive_damping {
            let invalid =
                |field, reason: String| Err(NatGradError::InvalidConfig { field, reason });
            if a.period == 0 {
                return invalid(
                    "adaptive_damping.period",
                    "must be at least 1 step, got 0".into(),
                );
            }
            check_positive("adaptive_damping.min", a.min)?;
            check_positive("adaptive_damping.max", a.max)?;
            if a.min > a.max {
                return invalid(
                    "adaptive_damping",
                    format!("bounds reversed: min {} > max {}", a.min, a.max),
                );
            }
            if !(a.min..=a.max).contains(&self.damping) {
                return invalid(
                    "damping",
                    format!(
                        "the starting damping {} lies outside the adaptive bounds [{}, {}]",
                        self.damping, a.min, a.max
                    ),
                );
            }
            if !(a.decay > 0.0 && a.decay < 1.0) {
                return invalid(
                    "adaptive_damping.decay",
                    format!("must lie in (0, 1), got {}", a.decay),
                );
            }
        }
        if let UncoveredPolicy::ScaledGradient { scale } = self.uncovered {
            check_positive("uncovered.scale", scale)?;
        }
        if self.max_consecutive_skips == Some(0) {
            return Err(NatGradError::InvalidConfig {
                field: "max_consecutive_skips",
                reason: "must be at least 1 (None: never stop), got 0".into(),
            });
        }
        if self.curvature_batch == Some(0) {
            return Err(NatGradError::InvalidConfig {
                field: "curvature_batch",
                reason: "must be at least 1 example (None: the whole batch), got 0".into(),
            });
        }
        if let Some(m) = &self.momentum {
            for (field, v) in [
                ("momentum.momentum", m.momentum),
                ("momentum.dampening", m.dampening),
            ] {
                if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                    return Err(NatGradError::InvalidConfig {
                        field,
                        reason: format!("must lie in [0, 1], got {v}"),
                    });
                }
            }
        }
        if let Some(w) = &self.weight_decay {
            if !w.penalty.is_finite() || w.penalty < 0.0 {
                return Err(NatGradError::InvalidConfig {
                    field: "weight_decay.penalty",
                    reason: format!("must be a finite number >= 0, got {}", w.penalty),
                });
            }
        }
        Ok(())
    }

    /// KFAC's own settings, and the one combination with the others that cannot work.
    fn validate_kfac(&self, k: &KfacConfig) -> Result<(), NatGradError> {
        let invalid = |field, reason: String| Err(NatGradError::InvalidConfig { field, reason });
        if !k.factor_decay.is_finite() || !(0.0..1.0).contains(&k.factor_decay) {
            return invalid(
                "curvature.factor_decay",
                format!("must lie in [0, 1), got {}", k.factor_decay),
            );
        }
        if k.factor_update_steps == 0 {
            return invalid(
                "curvature.factor_update_steps",
                "must be at least 1 step, got 0".into(),
            );
        }
        if k.inv_update_steps == 0 || !k.inv_update_steps.is_multiple_of(k.factor_update_steps) {
            return invalid(
                "curvature.inv_update_steps",
                format!(
                    "must be a multiple of factor_update_steps ({}), since inverses are formed \
                     when the factors are updated, got {}",
                    k.factor_update_steps, k.inv_update_steps
                ),
            );
        }
        if let KfacInverse::LowRank { rank: 0 } = k.inverse {
            return invalid(
                "curvature.inverse.rank",
                "must be at least 1 eigenpair, got 0 (KfacInverse::Dense keeps every inverse \
                 dense)"
                    .into(),
            );
        }
        if k.factor_update_steps > 1 && self.adaptive_damping.is_some() {
            return invalid(
                "curvature.factor_update_steps",
                format!(
                    "is {}, but a period above 1 cannot be combined with adaptive damping, whose \
                     rule needs the batch's own Fisher at every adapted step: leave it at 1",
                    k.factor_update_steps
                ),
            );
        }
        Ok(())
    }
}
