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
//!   in sample or parameter space ([`Solver`]), or inverts a Kronecker-factored (KFAC)
//!   approximation of it built from the same factors ([`KfacConfig`]), with a fixed or a
//!   Levenberg–Marquardt-adapted damping ([`AdaptiveDampingConfig`]);
//! * applies a KL trust region, momentum and weight decay, and plugs into Burn's
//!   `ModuleOptimizer`, `Learner` and checkpoints ([`NaturalGradient`]): a model of drop-in
//!   layers ([`nn`]) needs one line in `TrainStep::step` ([`classification_step`]) and one for
//!   `optimize` ([`natural_gradient_optimize!`]).
//!
//! The modules, from the model to the step: `capture` (the capture, one rule per layer kind,
//! the drop-in layers, the per-example loop), `factors` (the factor format and its products),
//! `fisher` (which rows and labels: the captured classification step), `curvature` (the full
//! Fisher's solvers and KFAC), `linalg` (host linear algebra) and `optim` (the optimizer and
//! its place in Burn); `docs/architecture.md` has the picture.

mod capture;
mod curvature;
mod error;
mod factors;
mod fisher;
mod linalg;
mod optim;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use capture::nn;

// Burn's `#[derive(RecordState)]` names these at the crate root (`crate::StateSink`, …).
pub(crate) use burn::optim::{join_path, RecordState, StateSink, StateSource};

pub use capture::per_example::per_example_classification;
pub use capture::{Capture, CapturedFactors};
pub use curvature::full::{CgConfig, FullConfig, Solver};
pub use curvature::kfac::{KfacConfig, KfacInverse, KfacState, NaturalGradientState};
pub use error::NatGradError;
pub use fisher::classification::NaturalGradientOutput;
pub use fisher::FisherKind;
pub use optim::config::{AdaptiveDampingConfig, Curvature, NaturalGradientConfig};
pub use optim::damping::DampingAdaptation;
#[doc(hidden)]
pub use optim::glue::__private;
pub use optim::glue::{classification_step, NaturalGradientField};
pub use optim::optimizer::{NaturalGradient, StepStats};
pub use optim::precondition::Preconditioned;
pub use optim::uncovered::UncoveredPolicy;
