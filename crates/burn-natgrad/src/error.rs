//! Errors reported by burn-natgrad.
//!
//! Configuration errors are returned before training starts
//! ([`NaturalGradientConfig::try_build`](crate::NaturalGradientConfig::try_build));
//! misuse detected inside a training step (gradients without captured factors, parameters the
//! capture missed) is reported with the same messages, as a panic when the calling API cannot
//! return a `Result` (Burn's `TrainStep`), or as an `Err` from the `try_*` functions.

use core::fmt;

/// Everything that can go wrong when configuring or running the natural-gradient optimizer.
#[derive(Debug, Clone, PartialEq)]
pub enum NatGradError {
    /// A configuration value is out of range or not finite.
    InvalidConfig {
        /// The configuration field, e.g. `damping`.
        field: &'static str,
        /// What is wrong with it and what is accepted.
        reason: String,
    },
    /// The gradients handed to the optimizer carry no per-example factors.
    MissingFactors,
    /// Some parameters received gradients but no per-example factors were captured for them.
    UncapturedParameters {
        /// Module paths (or ids) of the parameters without factors.
        params: Vec<String>,
    },
    /// Captured parameters that also received a gradient from a use outside the capture (e.g. a
    /// weight read directly besides its `Capture::linear` use): their gradient would be wrong.
    MixedUse {
        /// Module paths of those parameters.
        params: Vec<String>,
    },
    /// Too many steps in a row were skipped (see
    /// [`NaturalGradientConfig::max_consecutive_skips`](crate::NaturalGradientConfig)).
    TooManySkips {
        /// Steps skipped in a row.
        count: u64,
        /// Why the last one was skipped.
        reason: String,
    },
    /// [`NaturalGradient::step`](crate::NaturalGradient::step) was handed a `ModuleOptimizer`
    /// that is not its own (e.g. Adam's), which would apply its own rule to the directions.
    ForeignOptimizer,
    /// [`classification_step`](crate::classification_step) found no live `NaturalGradient`
    /// created on this thread.
    NoNaturalGradient,
    /// [`natural_gradient_optimize!`](crate::natural_gradient_optimize) stepped a
    /// `NaturalGradient` other than the one [`classification_step`](crate::classification_step)
    /// captured the batch for.
    CapturedForAnother,
    /// The captured factors are inconsistent (mismatched example counts or shapes).
    InconsistentFactors(String),
    /// Input given to the capture or to the loss does not match what it expects.
    InvalidInput(String),
    /// The per-tensor optimizer received gradients that did not go through the natural-gradient
    /// step.
    NotPreconditioned,
    /// The `ModuleOptimizer` steps some of the step's parameters with another optimizer
    /// (`ModuleOptimizer::with_group`), which would apply its own rule to their
    /// natural-gradient steps.
    ForeignGroups {
        /// Parameters another optimizer steps.
        foreign: usize,
        /// Parameters of the step.
        of: usize,
    },
    /// The `ModuleLearningRate` gives the step's parameters different rates
    /// (`ModuleLrScheduler::with_group`): the trust region and the damping's quadratic model
    /// are computed for one rate.
    GroupLearningRates {
        /// The distinct rates, with a parameter that has each.
        rates: Vec<(f64, String)>,
    },
}

impl fmt::Display for NatGradError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatGradError::InvalidConfig { field, reason } => {
                write!(f, "invalid NaturalGradientConfig: `{field}` {reason}")
            }
            NatGradError::MissingFactors => write!(
                f,
                "natural gradient: the gradients carry no per-example factors. Build them in \
                 `TrainStep::step` with `NaturalGradient::capture` + `NaturalGradient::classification` \
                 (or `per_example_classification`) and pass that `GradientsParams` unchanged to \
                 `NaturalGradient::step`. Gradient accumulation (`.grads_accumulation(..)`) and \
                 multi-device training drop or sum these factors and are not supported: remove \
                 them and train on one device."
            ),
            NatGradError::UncapturedParameters { params } => write!(
                f,
                "natural gradient: these parameters have gradients but no captured per-example \
                 factors: [{}]. Use the drop-in layers of `burn_natgrad::nn` (Linear, Conv2d, \
                 Embedding, LayerNorm, BatchNorm, GroupNorm, RmsNorm) or route each layer \
                 through its rule (`Capture::linear`, `conv2d`, `embedding`, `layer_norm`, \
                 `batch_norm`, `group_norm`, `rms_norm`) in the forward pass, use `per_example_classification` (exact, slower) for other layers, \
                 freeze these parameters, or move them by the damped gradient with \
                 `NaturalGradientConfig::with_uncovered(UncoveredPolicy::DampedGradient)`.",
                params.join(", ")
            ),
            NatGradError::MixedUse { params } => write!(
                f,
                "natural gradient: these captured parameters are also used outside the capture, \
                 so their gradient would miss that use: [{}]. Route every use of a layer \
                 through its `Capture` rule (uses are merged), or freeze the parameter.",
                params.join(", ")
            ),
            NatGradError::TooManySkips { count, reason } => write!(
                f,
                "natural gradient: {count} steps in a row were skipped (the last: {reason}); \
                 training stopped (weights and momentum hold their last finite values). Check the \
                 data, the learning rate (schedule) and the damping, or raise \
                 `NaturalGradientConfig::max_consecutive_skips`."
            ),
            NatGradError::ForeignOptimizer => write!(
                f,
                "natural gradient: `NaturalGradient::step` was given a ModuleOptimizer that is not \
                 its own (another optimizer, e.g. Adam, would apply its own rule to the \
                 natural-gradient directions); pass `natgrad.module_optimizer()` (or the \
                 `ModuleOptimizer` from `NaturalGradientConfig::init`). No weight was changed."
            ),
            NatGradError::NoNaturalGradient => write!(
                f,
                "natural gradient: `burn_natgrad::classification_step` found no NaturalGradient \
                 on this thread: create it with `NaturalGradientConfig::init` (or `build`) on the \
                 thread that trains, and keep it (or its ModuleOptimizer) alive while training. \
                 A Learner with several devices runs `step` on one thread per device: \
                 multi-device training is not supported yet; train on one device"
            ),
            NatGradError::CapturedForAnother => write!(
                f,
                "natural gradient: the batch was captured for another NaturalGradient than the                  one the ModuleOptimizer belongs to (`classification_step` uses the one created                  last on this thread): with several alive, keep each in its model and call its                  own `train_step`, with `natural_gradient_optimize!(field)`. No weight was                  changed."
            ),
            NatGradError::InconsistentFactors(msg) => {
                write!(f, "natural gradient: inconsistent per-example factors: {msg}")
            }
            NatGradError::InvalidInput(msg) => write!(f, "natural gradient: {msg}"),
            NatGradError::ForeignGroups { foreign, of } => write!(
                f,
                "natural gradient: the ModuleOptimizer steps {foreign} of the step's {of} \
                 parameters with another optimizer (a `ModuleOptimizer::with_group`), which \
                 would apply its own rule to their natural-gradient steps. Use \
                 `natgrad.module_optimizer()` without groups of other optimizers; to keep a \
                 parameter out of the natural gradient, freeze it or leave it to the \
                 `uncovered` policy. No weight was changed."
            ),
            NatGradError::GroupLearningRates { rates } => {
                let rates: Vec<String> = rates
                    .iter()
                    .map(|(lr, path)| format!("{lr} (`{path}`)"))
                    .collect();
                write!(
                    f,
                    "natural gradient: the learning rate gives the step's parameters different \
                     rates ({}), but the trust region and the damping's model hold for one rate \
                     for all: use one learning rate (no `ModuleLrScheduler::with_group`). No \
                     weight was changed.",
                    rates.join(", ")
                )
            }
            NatGradError::NotPreconditioned => write!(
                f,
                "natural gradient: the ModuleOptimizer received raw gradients. Call \
                 `NaturalGradient::step` from `TrainStep::optimize` (with the ModuleOptimizer of \
                 that same NaturalGradient, `NaturalGradient::module_optimizer`); multi-device \
                 training (`optimize_multi`) is not supported: train on one device."
            ),
        }
    }
}

impl std::error::Error for NatGradError {}
