//! The configuration of the [`NaturalGradient`] optimizer, its checks and its builders.

use burn::config::Config;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::ModuleOptimizer;

use crate::error::NatGradError;
use crate::fisher::FisherKind;
use crate::optimizer::NaturalGradient;
use crate::solver::SolverKind;
use crate::uncovered::UncoveredPolicy;

/// Which approximation of the Fisher the step inverts.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum CurvatureKind {
    /// The Fisher of the batch's rows as it is, coupled across all parameters (or per layer,
    /// [`block_diagonal`](NaturalGradientConfig::block_diagonal)), solved by
    /// [`NaturalGradientConfig::solver`] (the default).
    Full,
    /// Kronecker-factored approximate curvature (Martens & Grosse, "Optimizing Neural Networks
    /// with Kronecker-factored Approximate Curvature", 2015): one block per parameter tensor,
    /// `A ⊗ G` for a weight, from the same captured factors, averaged over steps, with factored
    /// Tikhonov damping (the π correction, §6.3). Its state is part of the optimizer record.
    /// Block-diagonal by construction: `block_diagonal` and `solver` do not apply (a CG solver
    /// is refused). It wants a much smaller damping than the full Fisher's (the MNIST MLP's
    /// best: λ = 0.03 at lr 0.1, against λ = 5 at lr 5).
    Kfac {
        /// Decay `ε ∈ [0, 1)` of the factors' exponential moving average, `A ← ε A + (1 − ε)
        /// A_batch` (Martens & Grosse use 0.95).
        decay: f64,
        /// Recompute the factors' inverses every this many factor updates (≥ 1): every this
        /// many steps with the default
        /// [`kfac_factor_period`](NaturalGradientConfig::kfac_factor_period) of 1.
        inverse_period: usize,
    },
}

impl CurvatureKind {
    /// KFAC with the usual settings: decay 0.95, inverses every 10 steps.
    pub fn kfac() -> Self {
        CurvatureKind::Kfac {
            decay: 0.95,
            inverse_period: 10,
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
#[derive(Config, Debug)]
pub struct NaturalGradientConfig {
    /// Which Fisher preconditions the gradient. Default: [`FisherKind::Empirical`].
    #[config(default = "FisherKind::Empirical")]
    pub fisher: FisherKind,
    /// Which approximation of it is inverted. Default: [`CurvatureKind::Full`].
    #[config(default = "CurvatureKind::Full")]
    pub curvature: CurvatureKind,
    /// How `(F + λI) d = g` is solved. Default: [`SolverKind::Gram`] (exact).
    #[config(default = "SolverKind::Gram")]
    pub solver: SolverKind,
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
    /// Use the per-layer block-diagonal Fisher instead of the full, coupled one. Default: false.
    #[config(default = false)]
    pub block_diagonal: bool,
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
    /// KFAC: a parameter whose per-example gradients are explicit rows (a convolution's weight,
    /// LayerNorm's `γ`, `β`) with at most this many entries gets its exact block `UᵀU`. A
    /// larger one-group convolution weight gets its Kronecker factors instead (KFC: Grosse &
    /// Martens, "A Kronecker-factored approximate Fisher matrix for convolution layers", 2016),
    /// and other larger explicit rows their diagonal. The exact block costs `numel²` memory and
    /// a `numel³` inverse; on Burn's guide CNN (72 and 1,152 conv weights) it measured both
    /// faster and more accurate than KFC (`docs/kfac.md`). Default: 2048.
    #[config(default = 2048)]
    pub kfac_block_limit: usize,
    /// KFAC: update the factors every this many steps (≥ 1; the `TCov` of the KFAC-PyTorch
    /// implementation, `alecwangcq/KFAC-Pytorch`, whose `TInv` is `inverse_period` here counted
    /// in steps). The steps in between
    /// form no Fisher rows: they run the model's plain forward and backward pass (its Linear
    /// layers record their input and output gradient) and precondition its gradient with the
    /// inverses in force, a Linear layer's as `(A⁻¹ Xᵀ)(Δ G⁻¹)` when the batch is smaller than a
    /// side of its weight, so they cost about an SGD step plus those products. [`inverse_period`](CurvatureKind::Kfac::inverse_period) counts
    /// factor updates, so the inverses are recomputed every `kfac_factor_period ·
    /// inverse_period` steps. Until the moving averages hold `⌈1 / (1 − decay)⌉` batches (20
    /// at decay 0.95) every step updates them, so that no inverse of the first few batches'
    /// factors serves a whole period. On a reusing step the trust region measures `dᵀFd` with
    /// the averaged Kronecker factors instead of the batch's rows. Not with adaptive damping,
    /// whose rule needs the batch's Fisher. Default: 1 (every step updates the factors).
    #[config(default = 1)]
    pub kfac_factor_period: usize,
    /// KFAC: a Kronecker factor wider than `4 · r` gets a low-rank-plus-identity damped
    /// inverse: its top `r` eigenpairs by randomized subspace iteration (Halko, Martinsson &
    /// Tropp, 2011), as randomized KFAC truncates the factors' spectra (Puiu, "Randomized
    /// K-FACs: Speeding up K-FAC with Randomized Numerical Linear Algebra", 2022), with the rest
    /// of the spectrum at its mean rather than dropped, so that the trace is kept. The inverse
    /// then costs `≈ 4·n²·(r + 10)` multiply-adds instead
    /// of `n³`, and each product with it `2·n·r` per column instead of `n²`: on an MNIST MLP
    /// the first layer's `784 × 784` input factor is most of KFAC's cost
    /// (`docs/kfac.md`, "Low-rank inverses"). Smaller factors stay dense. `None` (default):
    /// every inverse dense.
    #[config(default = "None")]
    pub kfac_rank: Option<usize>,
    /// KFAC with [`kfac_rank`](Self::kfac_rank): keep each left factor `A` that gets a
    /// low-rank inverse (a Linear layer's input factor; a KFC convolution's output-gradient
    /// factor) as a streaming Nyström sketch `[A Ω | diag A]`, `2r + 10` columns and the
    /// diagonal, instead of the `n × n` average (Tropp, Yurtsever, Udell & Cevher, "Fixed-Rank
    /// Approximation of a Positive-Semidefinite Matrix from Streaming Data", 2017). A batch's
    /// `R` rows then cost `2·R·n·(2r + 10)` multiply-adds instead of `R·n²`, the inverse is
    /// formed from the sketch on the host, and the state and its record hold `n·(2r + 11)`
    /// numbers instead of `n²`. The eigenpairs come from one pass over the data instead of
    /// power iterations on the factor, so they are those of a slightly coarser approximation.
    /// Turning it on or off, or changing the rank, restarts a block's moving averages (a sketch
    /// does not give the factor back). Not with [`kl_max`](Self::kl_max) and a
    /// [`kfac_factor_period`](Self::kfac_factor_period) above 1, whose steps that reuse the
    /// factors measure `dᵀFd` with `A` itself. Default: false.
    #[config(default = false)]
    pub kfac_sketch: bool,
    /// Conjugate-gradient iteration cap (CG solvers). Default: 50.
    #[config(default = 50)]
    pub cg_max_iters: usize,
    /// Conjugate-gradient relative tolerance `‖r‖ ≤ tol ‖b‖`. Default: 1e-6.
    #[config(default = 1e-6)]
    pub cg_tolerance: f64,
    /// Check CG convergence on the host every this many iterations (one device read each);
    /// 0: never, always run `cg_max_iters`. Default: 10.
    #[config(default = 10)]
    pub cg_check_every: usize,
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
