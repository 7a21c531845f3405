//! The natural-gradient optimizer: its shared state, how a preconditioned step is applied, and
//! the per-tensor part that plugs into Burn's [`ModuleOptimizer`].
//!
//! One step (Amari 1998; Martens 2020):
//!
//! 1. `d = (F + λI)⁻¹ g` with Tikhonov damping `λ`, `F` coupled across all captured parameters
//!    (or block-diagonal per layer), solved by a [`Solver`](crate::Solver)
//!    ([`NaturalGradient::precondition`]);
//! 2. the applied step `u`: `d` with weight decay and momentum, as Burn's SGD forms them
//!    ([`applied`](crate::optim::applied));
//! 3. KL trust region: since `KL(p_θ ‖ p_{θ − ηu}) ≈ ½ η² uᵀFu`, `u` is rescaled so that
//!    `½ η² uᵀFu ≤ kl_max` (the natural-gradient step size rule of Pascanu & Bengio, "Revisiting
//!    Natural Gradient for Deep Networks", 2014, and of TRPO);
//! 4. the per-tensor part ([`NaturalGradient`] as a Burn
//!    [`Optimizer`](burn::optim::Optimizer)) applies the learning rate and keeps the velocity
//!    and the KFAC state in each parameter's state, so that [`ModuleOptimizer`]'s records and
//!    the Learner's checkpoints keep working ([`NaturalGradient::apply`]).
//!
//! Every parameter a step moves gets the same learning rate: a [`ModuleLearningRate`] whose
//! groups give the step's parameters different rates is refused, since the trust region and
//! the damping's quadratic model are computed for one rate.
//!
//! A learning rate, direction or residual that is not finite skips the step: the weights and
//! the momentum are left untouched, a warning is logged and [`StepStats::skipped`] counts it;
//! after [`max_consecutive_skips`](crate::NaturalGradientConfig::max_consecutive_skips) in a row
//! training stops with an error saying what was not finite.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{Module, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};

use crate::curvature::kfac::state::{zero_grads, ParamOrder};
use crate::curvature::kfac::KfacState;
use crate::error::NatGradError;
use crate::optim::config::NaturalGradientConfig;
use crate::optim::damping::LastStep;
use crate::optim::per_tensor::READ;
use crate::optim::precondition::Preconditioned;

/// Counters of the coupled step, shared by all clones of one [`NaturalGradient`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Steps applied.
    pub steps: u64,
    /// Steps skipped (a learning rate, direction or residual that was not finite).
    pub skipped: u64,
    /// Applied KFAC steps that reused the factors in force instead of updating them (see
    /// [`factor_update_steps`](crate::KfacConfig::factor_update_steps)).
    pub reused: u64,
    /// Steps skipped in a row, up to the last one.
    pub consecutive_skipped: u64,
    /// Why the last skipped step was skipped.
    pub last_skip_reason: Option<String>,
    /// Predicted KL divergence `½ lr² uᵀFu` of the last applied step `lr·u` (momentum, weight
    /// decay and the trust region included); NaN where `uᵀFu` was not needed and would have
    /// cost a product (see [`Preconditioned::quadratic`]).
    pub last_kl: f64,
    /// Trust-region factor of the last applied step (1 when it did not bind).
    pub last_scale: f64,
    /// Conjugate-gradient iterations of the last step (0 for the direct solve).
    pub last_cg_iters: usize,
    /// Final CG relative residual of the last step (0 for the direct solve).
    pub last_residual: f64,
}

/// Natural-gradient descent for Burn: `θ ← θ − η (F + λI)⁻¹ g` with the empirical or sampled
/// Fisher `F` of a softmax classifier, built from per-example factors captured in one backward
/// pass (Amari, "Natural Gradient Works Efficiently in Learning", 1998).
///
/// It has two faces:
/// * the coupled step ([`capture`](Self::capture), [`classification`](Self::classification),
///   [`step`](Self::step)), which needs all parameters at once;
/// * Burn's per-tensor [`Optimizer`](burn::optim::Optimizer) (momentum, weight decay, learning
///   rate), which [`ModuleOptimizer`] wraps, so records and checkpoints are Burn's own.
///
/// Clones share their [`StepStats`], and the state a step continues from: the momentum's
/// velocities, KFAC's factors and the adaptive damping's `λ`, which the per-tensor part also
/// writes into each parameter's state of the [`ModuleOptimizer`] for its record. So one
/// `NaturalGradient` steps one `ModuleOptimizer` at a time; a run continued from a record is
/// a `NaturalGradient` whose `ModuleOptimizer` loaded it ([`resume_from`](Self::resume_from)
/// reads it back; [`step`](Self::step) does on its first call).
#[derive(Clone)]
pub struct NaturalGradient {
    pub(crate) config: NaturalGradientConfig,
    pub(crate) shared: Arc<Mutex<Shared>>,
}

/// State shared by the clones of one [`NaturalGradient`]: the counters, how many
/// preconditioned directions the per-tensor part may still consume and, with KFAC, every
/// block's state (also kept, for the record, in the per-tensor states), the parameters the
/// per-tensor part steps next, in order, and whether the state was read back from the
/// `ModuleOptimizer` (a resumed run).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) stats: StepStats,
    pub(crate) pending: usize,
    pub(crate) kfac: HashMap<ParamId, KfacState>,
    pub(crate) order: VecDeque<(ParamId, Vec<usize>)>,
    pub(crate) resumed: bool,
    /// The adaptive damping's current `λ` (`None`: the configured one).
    pub(crate) damping: Option<f64>,
    /// What the adaptive damping needs of the last applied step.
    pub(crate) last_step: Option<LastStep>,
    /// With momentum: each parameter's velocity, flattened (also kept, for the record, in the
    /// per-tensor states).
    pub(crate) velocity: HashMap<ParamId, burn::tensor::Tensor<1>>,
    /// Steps applied, those of the recorded run this one resumed included (with adaptive
    /// damping, whose schedule it is).
    pub(crate) applied: u64,
}

impl core::fmt::Debug for NaturalGradient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NaturalGradient")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl NaturalGradient {
    pub(crate) fn new(config: NaturalGradientConfig) -> Self {
        let ng = Self {
            config,
            shared: Arc::new(Mutex::new(Shared::default())),
        };
        crate::optim::glue::register(&ng);
        ng
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &NaturalGradientConfig {
        &self.config
    }

    /// A snapshot of the step counters.
    pub fn stats(&self) -> StepStats {
        self.lock().stats.clone()
    }

    /// The KFAC state of a parameter, as of the last applied step.
    pub(crate) fn kfac_state(&self, id: ParamId) -> Option<KfacState> {
        self.lock().kfac.get(&id).cloned()
    }

    /// Identifies the shared state of this optimizer and its clones.
    pub(crate) fn address(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The per-tensor part wrapped in Burn's [`ModuleOptimizer`]. It accepts only directions
    /// from this `NaturalGradient` (or its clones): raw gradients make it panic with
    /// [`NatGradError::NotPreconditioned`].
    pub fn module_optimizer(&self) -> ModuleOptimizer {
        ModuleOptimizer::from(self.clone())
    }

    /// With [`Curvature::Kfac`](crate::Curvature::Kfac), momentum or adaptive damping: reads the KFAC state, the
    /// velocities, the damping and the step count back from `optim`'s per-parameter states (a
    /// `ModuleOptimizer` loaded from a record or checkpoint), so that the moving averages, the
    /// momentum and the damping continue where the recorded run stopped. [`step`](Self::step)
    /// does it on its first call (so the Learner's resumed runs need nothing more); call it
    /// yourself before [`precondition`](Self::precondition) when you load another record into
    /// the same optimizer, or use `precondition` and `apply` directly. Returns how many
    /// parameters had a recorded KFAC state or velocity.
    ///
    /// # Panics
    /// If a recorded state belongs to another parameter than the one it is stored under, or if
    /// `optim` steps some of `module`'s parameters with another optimizer (a `with_group`).
    pub fn resume_from<M: Module>(&self, optim: &ModuleOptimizer, module: &M) -> usize {
        let mut order = ParamOrder {
            grads: None,
            order: Vec::new(),
        };
        module.visit(&mut order);
        /// Clears the reading mode even if the optimizer panics.
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                READ.with(|r| r.borrow_mut().take());
            }
        }
        READ.with(|r| *r.borrow_mut() = Some((self.address(), Vec::new())));
        let _clear = Clear;
        let _ = optim.clone().step(0.0, module.clone(), zero_grads(module));
        let read = READ
            .with(|r| r.borrow_mut().take())
            .map_or_else(Vec::new, |(_, v)| v);
        if read.len() != order.order.len() {
            panic!(
                "{}",
                NatGradError::ForeignGroups {
                    foreign: order.order.len() - read.len(),
                    of: order.order.len(),
                }
            );
        }
        let mut shared = self.lock();
        shared.resumed = true;
        let mut found = 0;
        for ((id, _), recorded) in order.order.into_iter().zip(read) {
            if self.config.adaptive_damping.is_some() {
                if recorded.damping.is_some() {
                    shared.damping = recorded.damping;
                }
                if let Some(steps) = recorded.steps {
                    shared.applied = steps;
                }
            }
            if let (Some(v), Some(_)) = (recorded.velocity, &self.config.momentum) {
                shared.velocity.insert(id, v);
                if recorded.kfac.is_none() {
                    found += 1;
                }
            }
            if let Some(state) = recorded.kfac {
                assert_eq!(
                    state.param,
                    id.val(),
                    "natural gradient: the recorded KFAC state of parameter {} was handed to \
                     parameter {id}: the record does not belong to this model",
                    state.param
                );
                shared.kfac.insert(id, state);
                found += 1;
            }
        }
        found
    }

    fn resume_once<M: Module>(&self, optim: &ModuleOptimizer, module: &M) {
        let kfac = self.config.curvature.as_kfac().is_some();
        let stateful =
            kfac || self.config.adaptive_damping.is_some() || self.config.momentum.is_some();
        if stateful && !self.lock().resumed {
            self.resume_from(optim, module);
        }
    }

    /// Applies a [`precondition`](Self::precondition)ed step with `optim`, at the learning
    /// rate it was preconditioned for (the trust region and the damping's model were computed
    /// for it), and counts it in [`stats`](Self::stats); a step to skip returns the module
    /// unchanged and is counted as skipped.
    ///
    /// # Panics
    /// Before any weight moves, if `optim` does not step every parameter of the step with this
    /// optimizer's per-tensor part (another optimizer, or a `with_group` of another optimizer,
    /// see [`owns`](Self::owns)), or if `optim` holds a recorded state that the step did not
    /// use (see [`resume_from`](Self::resume_from)); or when [`max_consecutive_skips`] steps in
    /// a row were skipped, with the reason of the last. Call [`owns`](Self::owns) first to
    /// handle the first case without losing the module.
    ///
    /// [`max_consecutive_skips`]: crate::NaturalGradientConfig::max_consecutive_skips
    pub fn apply<M: Module>(
        &self,
        optim: &mut ModuleOptimizer,
        module: M,
        pre: Preconditioned,
    ) -> M {
        let lr = pre.lr;
        let Some(directions) = pre.directions else {
            let reason = pre.skip_reason.unwrap_or_else(|| "no directions".into());
            let mut shared = self.lock();
            let stats = &mut shared.stats;
            stats.skipped += 1;
            stats.consecutive_skipped += 1;
            stats.last_skip_reason = Some(reason.clone());
            log::warn!(
                "natural gradient: step skipped, weights and momentum unchanged: {reason} ({} \
                 skipped so far, {} in a row)",
                stats.skipped,
                stats.consecutive_skipped
            );
            if let Some(limit) = self.config.max_consecutive_skips {
                if stats.consecutive_skipped >= limit as u64 {
                    let count = stats.consecutive_skipped;
                    drop(shared);
                    panic!("{}", NatGradError::TooManySkips { count, reason });
                }
            }
            return module;
        };
        // Checked here, not trusted: `Preconditioned`'s public fields may have been edited.
        assert!(
            lr.is_finite() && lr > 0.0,
            "natural gradient: `apply` was handed a step for the learning rate {lr}, not a finite \
             number > 0; no weight was changed"
        );
        if let Err(e) = self.check_owner(optim, &module, &directions, &pre.params) {
            panic!("{e}");
        }
        let resumed = self.lock().resumed;
        assert!(
            resumed || self.resume_from(optim, &module) == 0,
            "natural gradient: `optim` holds a recorded state (KFAC factors or momentum) that \
             this step did not use: call `resume_from(optim, module)` before `precondition` \
             (`step` does); no weight was changed"
        );
        {
            let mut order = ParamOrder {
                grads: Some(&directions),
                order: Vec::new(),
            };
            module.visit(&mut order);
            let mut shared = self.lock();
            shared.order = order.order.into();
            for state in pre.kfac {
                shared.kfac.insert(ParamId::from(state.param), state);
            }
            for (id, v) in pre.velocities {
                shared.velocity.insert(id, v);
            }
            shared.applied += 1;
            let applied = shared.applied;
            let stats = &mut shared.stats;
            stats.steps += 1;
            stats.reused += u64::from(pre.reused);
            stats.consecutive_skipped = 0;
            stats.last_scale = pre.scale;
            stats.last_kl = 0.5 * lr * lr * pre.quadratic * pre.scale * pre.scale;
            stats.last_cg_iters = pre.cg_iters;
            stats.last_residual = pre.residual;
            shared.pending = pre.count;
            if let (Some(a), Some((gradient_dot, norm_sq))) =
                (&self.config.adaptive_damping, pre.predicted)
            {
                shared.last_step = Some(LastStep {
                    lr,
                    scale: pre.scale,
                    gradient_dot,
                    norm_sq,
                    quadratic: pre.quadratic,
                    damping: pre.damping,
                    due: applied.is_multiple_of(a.period as u64),
                });
            }
        }
        /// Forgets the directions not consumed, even if the step panics, so that raw gradients
        /// afterwards are still refused.
        struct Consumed<'a>(&'a NaturalGradient);
        impl Drop for Consumed<'_> {
            fn drop(&mut self) {
                let mut shared = self.0.lock();
                shared.pending = 0;
                shared.order.clear();
            }
        }
        let _consumed = Consumed(self);
        optim.step(lr, module, directions)
    }

    /// One natural-gradient step: [`precondition`](Self::precondition), then
    /// [`apply`](Self::apply) with `optim`, which must be this optimizer's
    /// [`module_optimizer`](Self::module_optimizer). A skipped step returns the module
    /// unchanged. Call it from `TrainStep::optimize`, or from a custom loop.
    ///
    /// # Panics
    /// With a message saying what to change and before any weight moves: if `grads` carry no
    /// factors (e.g. gradient accumulation or multi-device training was enabled) or miss some
    /// parameters, if `lr` gives the step's parameters different rates, if `optim` is another
    /// optimizer's or has groups of another optimizer; and after too many skipped steps in a
    /// row. Use [`precondition`](Self::precondition) and [`owns`](Self::owns) to handle the
    /// first three as errors.
    pub fn step<M: Module>(
        &self,
        optim: &mut ModuleOptimizer,
        lr: impl Into<ModuleLearningRate>,
        module: M,
        grads: GradientsParams,
    ) -> M {
        let lr = lr.into();
        self.resume_once(optim, &module);
        let pre = self
            .precondition(&module, lr, &grads)
            .unwrap_or_else(|e| panic!("{e}"));
        self.apply(optim, module, pre)
    }
}
