#![warn(missing_docs)]
//! Natural-gradient descent for [Burn](https://burn.dev).
//!
//! Natural gradient descent replaces the gradient `g` by `(F + λI)⁻¹ g`, where `F` is the Fisher
//! information of the model's output distribution, so that steps are measured in distribution
//! space rather than parameter space (Amari, "Natural Gradient Works Efficiently in Learning",
//! 1998). This crate:
//!
//! * captures **per-example gradient factors** of Linear, Conv2d, Embedding, LayerNorm,
//!   BatchNorm, GroupNorm and RmsNorm layers in one batch backward pass ([`Capture`], one rule
//!   per layer kind), with an exact per-example loop for any other model
//!   ([`per_example_classification`]), and an explicit policy for parameters no rule covers
//!   ([`UncoveredPolicy`]);
//! * forms the **empirical** or **model-sampled** Fisher ([`FisherKind`]), coupled across all
//!   parameters or block-diagonal per layer, without ever materialising `N × P` or `P × P`,
//!   on the whole batch or on a curvature batch of its first `m` examples
//!   ([`NaturalGradientConfig::curvature_batch`]);
//! * solves the damped system exactly in sample space (Woodbury/Gram) or by conjugate gradient
//!   in sample or parameter space ([`SolverKind`]), or inverts a Kronecker-factored (KFAC)
//!   approximation of it built from the same factors ([`CurvatureKind`]), with a fixed or a
//!   Levenberg–Marquardt-adapted damping ([`AdaptiveDampingConfig`]);
//! * applies a KL trust region, momentum and weight decay, and plugs into Burn's
//!   `ModuleOptimizer`, `Learner` and checkpoints ([`NaturalGradient`]): a model of drop-in
//!   layers ([`nn`]) needs one line in `TrainStep::step` ([`classification_step`]) and one for
//!   `optimize` ([`natural_gradient_optimize!`]).
//!
//! The modules are described, with a picture, in `docs/architecture.md`.

mod applied;
mod capture;
mod cholesky;
mod classification;
mod config;
mod damping;
mod error;
mod factors;
mod fisher;
mod glue;
mod kfac;
mod low_rank;
pub mod nn;
mod nystrom;
mod optimizer;
mod per_example;
mod per_tensor;
mod precondition;
mod rules;
mod solver;
#[cfg(test)]
mod test_devices;
pub mod testing;
mod uncovered;
mod validate;

// Burn's `#[derive(RecordState)]` names these at the crate root (`crate::StateSink`, …).
pub(crate) use burn::optim::{join_path, RecordState, StateSink, StateSource};

pub use capture::{Capture, CapturedFactors};
pub use classification::NaturalGradientOutput;
pub use config::{AdaptiveDampingConfig, CurvatureKind, NaturalGradientConfig};
pub use damping::DampingAdaptation;
pub use error::NatGradError;
pub use fisher::FisherKind;
#[doc(hidden)]
pub use glue::__private;
pub use glue::{classification_step, NaturalGradientField};
pub use kfac::{KfacState, NaturalGradientState};
pub use optimizer::{NaturalGradient, StepStats};
pub use per_example::per_example_classification;
pub use precondition::Preconditioned;
pub use solver::SolverKind;
pub use uncovered::UncoveredPolicy;
