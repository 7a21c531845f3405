//! Checking a [`NaturalGradientConfig`] before training: every bad value or combination gets
//! an error naming the field and what it accepts.

use crate::config::{CurvatureKind, NaturalGradientConfig};
use crate::error::NatGradError;
use crate::fisher::FisherKind;
use crate::solver::SolverKind;
use crate::uncovered::UncoveredPolicy;

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
        if let CurvatureKind::Kfac {
            decay,
            inverse_period,
        } = self.curvature
        {
            if !decay.is_finite() || !(0.0..1.0).contains(&decay) {
                return Err(NatGradError::InvalidConfig {
                    field: "curvature.decay",
                    reason: format!("must lie in [0, 1), got {decay}"),
                });
            }
            if inverse_period == 0 {
                return Err(NatGradError::InvalidConfig {
                    field: "curvature.inverse_period",
                    reason: "must be at least 1 step, got 0".into(),
                });
            }
            if self.solver != SolverKind::Gram {
                return Err(NatGradError::InvalidConfig {
                    field: "solver",
                    reason: format!(
                        "{:?} does not apply to KFAC, which inverts its Kronecker factors \
                         itself: leave the solver at its default (Gram) or use \
                         CurvatureKind::Full",
                        self.solver
                    ),
                });
            }
        }
        if self.kfac_factor_period == 0 {
            return Err(NatGradError::InvalidConfig {
                field: "kfac_factor_period",
                reason: "must be at least 1 step, got 0".into(),
            });
        }
        if self.kfac_factor_period > 1 {
            let reason = if !matches!(self.curvature, CurvatureKind::Kfac { .. }) {
                Some("applies only to CurvatureKind::Kfac: the Gram solve needs every batch's rows")
            } else if self.adaptive_damping.is_some() {
                Some(
                    "cannot be combined with adaptive damping, whose rule needs the batch's own \
                     Fisher at every adapted step: leave it at 1",
                )
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(NatGradError::InvalidConfig {
                    field: "kfac_factor_period",
                    reason: format!(
                        "is {}, but a period above 1 {reason}",
                        self.kfac_factor_period
                    ),
                });
            }
        }
        match (self.kfac_rank, &self.curvature) {
            (Some(0), _) => {
                return Err(NatGradError::InvalidConfig {
                    field: "kfac_rank",
                    reason: "must be at least 1 eigenpair, got 0 (None keeps every inverse dense)"
                        .into(),
                })
            }
            (Some(r), CurvatureKind::Full) => {
                return Err(NatGradError::InvalidConfig {
                    field: "kfac_rank",
                    reason: format!(
                        "is {r}, but applies only to CurvatureKind::Kfac: the Gram solve \
                         inverts no factors"
                    ),
                })
            }
            _ => {}
        }
        if self.kfac_sketch {
            let reason = if !matches!(self.curvature, CurvatureKind::Kfac { .. }) {
                Some("applies only to CurvatureKind::Kfac".to_string())
            } else if self.kfac_rank.is_none() {
                Some(
                    "sketches the factors that get a low-rank inverse, and kfac_rank is None \
                     (every inverse dense): set kfac_rank"
                        .into(),
                )
            } else if self.kl_max.is_some() && self.kfac_factor_period > 1 {
                Some(format!(
                    "cannot be combined with kl_max and a kfac_factor_period above 1 (here {}): \
                     the steps that reuse the factors measure dᵀFd with the input factor itself",
                    self.kfac_factor_period
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(NatGradError::InvalidConfig {
                    field: "kfac_sketch",
                    reason,
                });
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
        if self.solver != SolverKind::Gram {
            if self.cg_max_iters == 0 {
                return Err(NatGradError::InvalidConfig {
                    field: "cg_max_iters",
                    reason: "must be at least 1 for a conjugate-gradient solver, got 0".into(),
                });
            }
            check_positive("cg_tolerance", self.cg_tolerance)?;
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
}
