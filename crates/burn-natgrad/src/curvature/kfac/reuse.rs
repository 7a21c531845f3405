//! KFAC steps that reuse the factors in force, with a
//! [`factor_update_steps`](crate::KfacConfig::factor_update_steps) above 1 (the `TCov`
//! of KFAC-PyTorch, `alecwangcq/KFAC-Pytorch`): between two factor updates a step forms no
//! Fisher rows. The model's layers run plainly except its Linear layers, which record their
//! input and output gradient; one backward pass gives the gradient `g` of the data loss (the
//! sampled or exact Fisher's copies are not formed at all), and each block's direction is
//! `A⁻¹ g G⁻¹` with the damped inverses of the last update, a Linear layer's as
//! `(A⁻¹ Xᵀ)(Δ G⁻¹)` when its batch is smaller than a side of its weight
//! ([`factored`](super::factored)); the factors, their moving averages and the inverse schedule
//! are left as they are. Until the averages hold their time constant's worth of batches
//! ([`warm_up`]), every step updates them.
//!
//! The gradients of such a step carry a marker instead of factors, so that
//! [`NaturalGradient::precondition`] knows them from a model that was not captured (which is
//! refused). With a trust region, `dᵀFd` is the Kronecker approximation's own,
//! `Σ ⟨d, A d G⟩` with the averaged factors, since there are no rows of the batch's Fisher.

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor};

use super::factored::factored_direction;
use super::{direction, KfacState};
use crate::capture::Capture;
use crate::curvature::kfac::Kind;
use crate::error::NatGradError;
use crate::factors::{gradient_weight_id, reuse_marker_id, Factors};
use crate::fisher::classification::{user_loss, NaturalGradientOutput, UserLoss};
use crate::fisher::{check_targets, cross_entropy_rows};
use crate::optim::applied::{Entry, Fresh};
use crate::optim::optimizer::NaturalGradient;
use crate::optim::precondition::{one_rate, Preconditioned};

/// `vec(d)ᵀ (A ⊗ G) vec(d)` of a block's averaged (undamped) factors: the Kronecker
/// approximation of `dᵀFd`.
pub(crate) fn quadratic(state: &KfacState, d: &Tensor<2>) -> Tensor<1> {
    let fd = match (state.kind(), &state.left) {
        (Some(Kind::Kronecker), Some(a)) => a.clone().matmul(d.clone()).matmul(state.right.clone()),
        (Some(Kind::Gather), Some(a)) => (d.clone() * a.clone()).matmul(state.right.clone()),
        (Some(Kind::Full), None) => d.clone().matmul(state.right.clone()),
        (Some(Kind::Diagonal), None) => d.clone() * state.right.clone(),
        _ => unreachable!("update builds consistent states"),
    };
    (fd * d.clone()).sum()
}

/// How many batches the moving averages hold before the factor period starts: their time
/// constant `⌈1 / (1 − ε)⌉` (20 at the default decay 0.95; 1 for ε = 0). Until then every step
/// updates the factors, so that no inverse of a few batches' factors (dominated by the first
/// batch's, rank `N`) serves a whole period: with factors every 10 steps from the first, the
/// guide CNN without BatchNorm diverged within 40 steps at its tuned `lr 0.3, λ 0.5`.
pub(crate) fn warm_up(decay: f64) -> u64 {
    // Less a rounding margin, so that 1 / (1 − 0.95) is 20, not 21.
    (1.0 / (1.0 - decay) - 1e-9).ceil().max(1.0) as u64
}

impl NaturalGradient {
    /// Whether the next step updates KFAC's factors (and so captures): always, unless
    /// [`factor_update_steps`](crate::KfacConfig::factor_update_steps) is above 1, the
    /// optimizer's moving averages hold `⌈1 / (1 − decay)⌉` batches (the warm-up), and fewer
    /// than `period − 1` steps have reused them since their last update.
    /// [`capture`](Self::capture) and [`train_step`](Self::train_step) ask it.
    ///
    /// A run resumed from a record holds no factors until [`resume_from`](Self::resume_from)
    /// (which the first [`step`](Self::step) calls) reads them back, so its first step
    /// captures; [`precondition`](Self::precondition) then reuses the recorded factors where the
    /// recorded schedule says so, and the schedule continues as in a run that never stopped.
    pub fn factors_due(&self) -> bool {
        let Some(k) = self.config.curvature.as_kfac() else {
            return true;
        };
        let (period, decay) = (k.factor_update_steps as u64, k.factor_decay);
        if period <= 1 {
            return true;
        }
        let warm = warm_up(decay);
        let shared = self.lock();
        shared.kfac.is_empty()
            || shared
                .kfac
                .values()
                .any(|s| s.updates() < warm || s.reused() + 1 >= period)
    }

    /// Whether captured gradients are to be preconditioned as a step that reuses the factors:
    /// they were captured before [`resume_from`](Self::resume_from) read a recorded state whose
    /// schedule says reuse (the first step of a resumed run).
    pub(crate) fn reuse_after_resume(&self) -> bool {
        self.config.factor_period() > 1 && !self.factors_due()
    }

    /// The classification step of a step that reuses the factors: the data loss (plain
    /// cross-entropy, or the user's), one backward pass, the recorded Linear layers' rows (with
    /// gradient weight 1: the loss is already the batch mean), and the marker.
    pub(crate) fn plain_classification<M: Module>(
        &self,
        model: &M,
        capture: Capture,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        loss: Option<UserLoss<'_>>,
    ) -> Result<NaturalGradientOutput, NatGradError> {
        let [rows, classes] = logits.dims();
        check_targets(rows, classes, &targets, |n| n)?;
        let loss = match loss {
            Some(loss) => user_loss(loss, logits.clone(), targets)?,
            None => cross_entropy_rows(logits.clone(), targets).mean(),
        };
        let gradients = loss.backward();
        let layers = capture.into_factors(&gradients)?;
        let mut grads = GradientsParams::from_grads(gradients, model);
        let device = logits.device();
        if !layers.blocks.is_empty() {
            grads.register(gradient_weight_id(), Tensor::<1>::ones([1], &device));
        }
        for (id, block) in layers.blocks {
            block.register(id, &mut grads);
        }
        grads.register(reuse_marker_id(), Tensor::<1>::zeros([1], &device));
        Ok(NaturalGradientOutput {
            loss: loss.inner(),
            logits: logits.inner(),
            grads,
        })
    }

    /// [`precondition`](Self::precondition) of a step that reuses the factors: every parameter
    /// with a KFAC state gets `A⁻¹ g G⁻¹` from its inverses in force, the others the uncovered
    /// policy; the states come back with one more reuse counted. Also for captured gradients
    /// ([`reuse_after_resume`](Self::reuse_after_resume)), whose rows it does not use.
    pub(crate) fn precondition_reused<M: Module>(
        &self,
        module: &M,
        lr: &ModuleLearningRate,
        grads: &GradientsParams,
    ) -> Result<Preconditioned, NatGradError> {
        let c = &self.config;
        let Some(kfac) = c.curvature.as_kfac() else {
            return Err(NatGradError::InvalidInput(
                "these gradients come from a step that reuses KFAC's factors, but this optimizer \
                 does not use KFAC: precondition them with the NaturalGradient whose `capture` or \
                 `train_step` made them"
                    .into(),
            ));
        };
        let damping = self.damping();
        let factors = Factors::reused(module, grads)?;
        // The recorded Linear layers (their gradient implicit), then every other parameter.
        let params: Vec<(ParamId, &str, &[usize])> = factors
            .blocks
            .iter()
            .map(|b| (b.id, b.path.as_str(), b.dims.as_slice()))
            .chain(
                factors
                    .uncovered
                    .iter()
                    .map(|u| (u.id, u.path.as_str(), u.dims.as_slice())),
            )
            .collect();
        let recorded = factors.blocks.len();
        let gradient = |i: usize| -> Tensor<2> {
            if i < recorded {
                factors.gradient(i)
            } else {
                factors.uncovered[i - recorded].grad.clone()
            }
        };
        let states: Vec<Option<KfacState>> = {
            let shared = self.lock();
            params
                .iter()
                .map(|(id, ..)| shared.kfac.get(id).cloned())
                .collect()
        };
        if states.iter().all(Option::is_none) {
            return Err(NatGradError::InvalidInput(
                "these gradients come from a step that reuses KFAC's factors, but this optimizer \
                 holds none for the model's parameters: they were made by another \
                 NaturalGradient, or for another model"
                    .into(),
            ));
        }
        let missing: Vec<String> = params
            .iter()
            .zip(&states)
            .filter(|(_, s)| s.is_none())
            .map(|((_, path, _), _)| path.to_string())
            .collect();
        if !missing.is_empty() && !c.uncovered.moves() {
            return Err(NatGradError::UncapturedParameters { params: missing });
        }
        let lr = match one_rate(lr, params.iter().map(|(id, path, _)| (*id, *path)))? {
            Ok(lr) => lr,
            Err(skip) => return Ok(skip),
        };
        let uncovered_scale = c.uncovered.scale(damping);
        // The parameters with a KFAC state first (the curvature's), then the others.
        let mut covered: Vec<(Entry, KfacState, usize)> = Vec::new();
        let mut outside: Vec<(Entry, usize)> = Vec::new();
        for (i, ((id, path, dims), state)) in params.into_iter().zip(states).enumerate() {
            let numel = dims.iter().product::<usize>();
            let Some(state) = state else {
                let g = gradient(i).reshape([1, numel]);
                let d = g.mul_scalar(uncovered_scale);
                let dims = dims.to_vec();
                outside.push((Entry { id, dims, d }, i));
                continue;
            };
            let view = state.view();
            if view[0] * view[1] != numel {
                return Err(NatGradError::InconsistentFactors(format!(
                    "`{path}` has shape {dims:?} but its KFAC factors act on a {view:?} view"
                )));
            }
            let factored = match (&factors.gradient_weight, factors.blocks.get(i)) {
                (Some(w), Some(block)) => factored_direction(&state, block, w, kfac.rank()),
                _ => None,
            };
            let d = factored.unwrap_or_else(|| direction(&state, gradient(i).reshape(view)));
            let dims = dims.to_vec();
            covered.push((Entry { id, dims, d }, state, i));
        }
        let count = covered.len();
        let order: Vec<usize> = covered
            .iter()
            .map(|(.., i)| *i)
            .chain(outside.iter().map(|(_, i)| *i))
            .collect();
        let mut kfac = Vec::with_capacity(count);
        let mut entries = Vec::with_capacity(order.len());
        for (entry, state, _) in covered {
            entries.push(entry);
            kfac.push(state);
        }
        entries.extend(outside.into_iter().map(|(e, _)| e));
        let views: Vec<[usize; 2]> = entries.iter().map(|e| e.d.dims()).collect();
        let fresh = Fresh {
            entries,
            covered: count,
            fresh_quadratic: None,
            quadratic: Box::new(|u: &[Tensor<2>]| {
                kfac.iter()
                    .zip(u)
                    .map(|(state, u)| quadratic(state, u))
                    .reduce(|a, b| a + b)
                    .expect("at least one block")
            }),
            gradient: Box::new(|i: usize| gradient(order[i]).reshape(views[i])),
            extra: None,
        };
        let formed = match self.form_step(module, lr, fresh) {
            Ok(formed) => formed,
            Err(e) => {
                let (reason, q, residual) = e;
                let reason = format!("{reason} (on a step that reuses KFAC's factors)");
                return Ok(Preconditioned::not_finite(lr, (reason, q, residual), 0));
            }
        };
        let kfac = kfac
            .into_iter()
            .map(|state| KfacState {
                reused: Some(state.reused() + 1),
                ..state
            })
            .collect();
        Ok(formed.into_preconditioned(lr, 0, kfac, damping, true))
    }
}

#[cfg(test)]
mod tests {
    use super::warm_up;

    /// The warm-up is the moving average's time constant, rounded up, at least one batch.
    #[test]
    fn the_warm_up_is_the_averages_time_constant() {
        assert_eq!(warm_up(0.95), 20);
        assert_eq!(warm_up(0.9), 10);
        assert_eq!(warm_up(0.7), 4);
        assert_eq!(warm_up(0.0), 1);
    }
}
