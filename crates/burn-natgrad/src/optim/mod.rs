//! The optimizer: [`NaturalGradient`](optimizer::NaturalGradient) and its configuration, the
//! step it forms (the solve, the applied step with weight decay and momentum, the trust region,
//! the skip rules, the damping), and its place in Burn.
//!
//! # How it sits in Burn
//!
//! Burn's `Optimizer` is per-tensor: `ModuleOptimizer::step` hands it one parameter at a time,
//! without the model, and the `Learner` calls `TrainStep::step` (which sees the model and the
//! batch) and `TrainStep::optimize` (which sees the model and the gradients) separately. The
//! natural gradient needs the whole model's factors at once, so:
//!
//! * the step is formed whole in [`precondition`](optimizer::NaturalGradient::precondition),
//!   and the per-tensor part ([`per_tensor`]) only applies `θ − lr·u` to each parameter and
//!   keeps its state for Burn's record ([`NaturalGradientState`](crate::NaturalGradientState));
//! * the factors travel from `step` to `optimize` inside Burn's `GradientsParams`, under
//!   derived ids (`factors/codec.rs`);
//! * four thread-locals carry what Burn's signatures do not. In [`glue`]: `CURRENT`, the
//!   `NaturalGradient` created last on the thread, which `classification_step` uses (the
//!   Learner runs a single-device training on the thread that launched it), and `CAPTURED`,
//!   whom the thread's last batch was captured for, which `optimize` checks. In [`per_tensor`]:
//!   `PROBE`, a mode in which every per-tensor part only counts the parameters it is handed
//!   (so that stepping a copy of a `ModuleOptimizer` tells whose it is, and whether a group of
//!   another optimizer takes some of the parameters), with `FOUND` to hand the one reached back;
//!   and `READ`, a mode in which it hands over the states of a loaded record instead of
//!   stepping ([`resume_from`](optimizer::NaturalGradient::resume_from)). The capture's own
//!   thread-local, the active capture of the drop-in layers, is in `capture`.
//!
//! Files: [`config`] and [`validate`] (the configuration and its checks), [`optimizer`] (the
//! optimizer, its shared state, `step`, `apply`, `resume_from`), [`precondition`] (the solve
//! and the skip rules), [`applied`] (the applied step and the trust region), [`damping`] (the
//! damping in force and its adaptation), [`uncovered`] (parameters no rule covers),
//! [`per_tensor`] and [`glue`] (Burn's `Optimizer` and `TrainStep`).

pub(crate) mod applied;
pub(crate) mod config;
pub(crate) mod damping;
pub(crate) mod glue;
pub(crate) mod optimizer;
pub(crate) mod per_tensor;
pub(crate) mod precondition;
pub(crate) mod uncovered;
pub(crate) mod validate;
