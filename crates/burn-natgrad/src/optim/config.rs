//! The configuration of the [`NaturalGradient`] optimizer, its checks and its builders.

use burn::config::Config;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::ModuleOptimizer;

use crate::curvature::full::{FullConfig, Solver};
use crate::curvature::kfac::KfacConfig;
use crate::error::NatGradError;
use crate::fisher::FisherKind;
use crate::optim::optimizer::NaturalGradient;
use crate::optim::uncovered::UncoveredPolicy;

/// Which approximation of the Fisher the step inverts, with the settings that belong to it.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Curvature {
    /// The Fisher of the batch's rows as it is, coupled across all parameters or per layer,
    /// solved as [`FullConfig`] says.
    Full(FullConfig),
    /// Kronecker-factored approximate curvature (Martens & Grosse, "Optimizing Neural Networks
    /// with Kronecker-factored Approximate Curvature", 2015): one block per parameter tensor,
    /// `A ⊗ G` for a weight, from the same captured factors, averaged over steps, with factored
    /// Tikhonov damping (the π correction, §6.3). Its state is part of the optimizer record. It
    /// wants a much smaller damping than the full Fisher (the repository's `docs/tuning.md`).
    Kfac(KfacConfig),
}

impl Curvature {
    /// KFAC with [`KfacConfig`]'s defaults.
    pub fn kfac() -> Self {
        Curvature::Kfac(KfacConfig::new())
    }

    /// The full Fisher solved by `solver`, coupled across all parameters.
    pub fn full(solver: Solver) -> Self {
        Curvature::Full(FullConfig::new().with_solver(solver))
    }

    /// KFAC's settings, if this is KFAC.
    pub fn as_kfac(&self) -> Option<&KfacConfig> {
        match self {
            Curvature::Kfac(k) => Some(k),
            Curvature::Full(_) => None,
        }
    }

    /// The full Fisher's settings, if this is the full Fisher.
    pub fn as_full(&self) -> Option<&FullConfig> {
        match self {
            Curvature::Full(f) => Some(f),
            Curvature::Kfac(_) => None,
        }
    }
}

/// Levenberg–Marquardt adaptation of the damping (Martens & Grosse, "Optimizing Neural Networks
/// with Kronecker-factored Approximate Curvature", 2015, §6.5; kfac-jax's adaptive damping):
/// every `period` steps the reduction ratio `ρ = (h(θ + δ) − h(θ)) / (q(δ) − q(0))` of the
/// actual to the predicted change of the loss, `q(δ) = gᵀδ + ½ δᵀ(F + λI)δ` for the applied step
/// `δ`, moves `λ`: `λ ← ω λ` when `ρ > 3/4`, `λ ← λ / ω` when `ρ < 1/4`, with `ω =
/// decayᵖᵉʳⁱᵒᵈ`, kept within `[min, max]`. The loss after the step on the same batch, `h(θ + δ)`,
/// is one more forward pass that the training loop runs when
/// [`NaturalGradient::adaptation_due`] says so, and hands to
/// [`NaturalGradient::adapt_damping`]. The current `λ` is part of the optimizer record.
#[derive(Config, Debug, PartialEq)]
pub struct AdaptiveDampingConfig {
    /// Adapt every this many steps (≥ 1). Default: 5 (kfac-jax's).
    #[config(default = 5)]
    pub period: usize,
    /// Smallest damping. Default: 1e-6.
    #[config(default = 1e-6)]
    pub min: f64,
    /// Largest damping. Default: 1e6.
    #[config(default = 1e6)]
    pub max: f64,
    /// The per-step factor `ω^(1/period)` in `(0, 1)`. Default: 0.95 (Martens & Grosse's 19/20).
    #[config(default = 0.95)]
    pub decay: f64,
}

/// Configuration of the [`NaturalGradient`] optimizer.
///
/// [`kfac`](Self::kfac) and [`gram`](Self::gram) are the recommended starting points;
/// [`new`](Self::new) is the exact Gram solve with damping 1.
#[derive(Config, Debug)]
pub struct NaturalGradientConfig {
    /// Which Fisher preconditions the gradient. Default: [`FisherKind::Empirical`].
    #[config(default = "FisherKind::Empirical")]
    pub fisher: FisherKind,
    /// Which approximation of it is inverted, and how. Default: [`Curvature::Full`] with the
    /// exact Gram solve.
    #[config(default = "Curvature::Full(FullConfig::new())")]
    pub curvature: Curvature,
    /// Tikhonov damping `λ > 0` added to the Fisher. Default: 1.0. Small values trust the
    /// minibatch Fisher more (larger, riskier steps); large values approach SGD with learning
    /// rate `lr / λ`.
    #[config(default = 1.0)]
    pub damping: f64,
    /// Adapt the damping (starting from [`damping`](Self::damping)) by the Levenberg–Marquardt
    /// rule. `None` (default): fixed damping.
    #[config(default = "None")]
    pub adaptive_damping: Option<AdaptiveDampingConfig>,
    /// KL trust region: the applied step `lr·u` (the natural-gradient direction with weight
    /// decay and momentum) is shrunk so that its predicted KL divergence `½ lr² uᵀFu ≤ kl_max`.
    /// `None` (default): no trust region.
    #[config(default = "None")]
    pub kl_max: Option<f64>,
    /// Estimate the Fisher on the first `m` examples of each batch only, a curvature
    /// mini-batch (Martens, "Deep learning via Hessian-free optimization", 2010, §4.3; Byrd,
    /// Chin, Neveitt & Nocedal, "On the Use of Stochastic Hessian Information in Optimization
    /// Methods for Machine Learning", 2011), while the gradient still averages all `N`
    /// examples. The Gram system is then `m × m`, its products cost `m·N` instead of `N²` per
    /// layer, and the sampled Fisher draws labels for `m` examples only. Batches are assumed
    /// shuffled, so that their first `m` examples are a random subset. `None` (default), or
    /// `m ≥ N`: the whole batch.
    #[config(default = "None")]
    pub curvature_batch: Option<usize>,
    /// Seed of the sampled Fisher's labels, mixed with the model's predictions on the batch so
    /// that a run resumed from a checkpoint draws the same labels. Default: 0.
    #[config(default = 0)]
    pub seed: u64,
    /// What to do with trainable parameters that have a gradient but no captured factors.
    /// Default: [`UncoveredPolicy::Refuse`].
    #[config(default = "UncoveredPolicy::Refuse")]
    pub uncovered: UncoveredPolicy,
    /// Stop training (a panic from [`NaturalGradient::step`] saying what was not finite) after
    /// this many consecutive skipped steps; `None`: never stop. Default: 10.
    #[config(default = "Some(10)")]
    pub max_consecutive_skips: Option<usize>,
    /// Momentum applied to the natural-gradient direction (as Burn's SGD forms it, before the
    /// trust region; the velocity kept is that of the step applied). Default: none.
    pub momentum: Option<MomentumConfig>,
    /// Weight decay added to the natural-gradient direction (as Burn's SGD adds it, before the
    /// momentum and the trust region). Default: none.
    pub weight_decay: Option<WeightDecayConfig>,
}

impl NaturalGradientConfig {
    /// The recommended configuration: KFAC with the empirical Fisher, damping 0.3, its factors
    /// updated every 10 steps and inverted every 50 (the steps in between reuse the inverses
    /// in force and cost about an SGD step), to be trained at a learning rate near 0.1. These
    /// are the values tuned on Burn's guide CNN (the repository's `docs/tuning.md` has the
    /// rule for other models: `lr / damping` near SGD's best learning rate).
    pub fn kfac() -> Self {
        Self::new()
            .with_damping(0.3)
            .with_curvature(Curvature::Kfac(
                KfacConfig::new()
                    .with_factor_update_steps(10)
                    .with_inv_update_steps(50),
            ))
    }

    /// The exact natural gradient of the batch's Fisher, coupled across all layers (the Gram
    /// solve), damping 5, to be trained at a learning rate near 5–10: the most faithful step,
    /// at a cost that grows with the batch squared.
    pub fn gram() -> Self {
        Self::new()
            .with_damping(5.0)
            .with_curvature(Curvature::full(Solver::Gram))
    }

    /// Steps between KFAC's factor updates (1 without KFAC).
    pub(crate) fn factor_period(&self) -> usize {
        self.curvature
            .as_kfac()
            .map_or(1, |k| k.factor_update_steps)
    }

    /// Builds the optimizer, or says which value is invalid.
    pub fn try_build(&self) -> Result<NaturalGradient, NatGradError> {
        self.validate()?;
        Ok(NaturalGradient::new(self.clone()))
    }

    /// Builds the optimizer.
    ///
    /// # Panics
    /// With the message of [`validate`](Self::validate) if a value is invalid; use
    /// [`try_build`](Self::try_build) to handle it.
    pub fn build(&self) -> NaturalGradient {
        self.try_build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The optimizer and its per-tensor part wrapped in Burn's [`ModuleOptimizer`], which must
    /// be used together: keep the [`NaturalGradient`] where `TrainStep::optimize` can reach it
    /// (e.g. a `#[module(skip)]` field of the model) and hand the [`ModuleOptimizer`] to the
    /// `Learner`.
    ///
    /// # Panics
    /// If a value is invalid (see [`validate`](Self::validate)).
    pub fn init(&self) -> (NaturalGradient, ModuleOptimizer) {
        let ng = self.build();
        let optim = ng.module_optimizer();
        (ng, optim)
    }
}
