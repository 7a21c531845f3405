//! KFAC's own settings, named as kfac-pytorch names them (`factor_decay`,
//! `factor_update_steps`, `inv_update_steps`; Pauloski et al., "Convolutional Neural Network
//! Training with Distributed K-FAC", 2020).

use burn::config::Config;

/// The settings of [`Curvature::Kfac`](crate::Curvature::Kfac).
#[derive(Config, Debug, PartialEq, Copy)]
pub struct KfacConfig {
    /// Decay `ε ∈ [0, 1)` of the factors' exponential moving average, `A ← ε A + (1 − ε)
    /// A_batch` (Martens & Grosse use 0.95; kfac-jax's `curvature_ema`). Default: 0.95.
    #[config(default = 0.95)]
    pub factor_decay: f64,
    /// Update the factors every this many steps (≥ 1). The steps in between form no Fisher
    /// rows: they run the model's plain forward and backward pass (its Linear layers record
    /// their input and output gradient) and precondition its gradient with the inverses in
    /// force, so they cost about an SGD step plus the products with the inverses. Until the
    /// moving averages hold `⌈1 / (1 − factor_decay)⌉` batches (20 at 0.95) every step updates
    /// them, so that no inverse of the first few batches' factors serves a whole period. On a
    /// reusing step the trust region measures `dᵀFd` with the averaged factors. Not with
    /// adaptive damping, whose rule needs the batch's Fisher. Default: 1.
    #[config(default = 1)]
    pub factor_update_steps: usize,
    /// Recompute the factors' inverses every this many steps: a multiple of
    /// [`factor_update_steps`](Self::factor_update_steps), since inverses are formed when
    /// factors are updated (during the warm-up, every `inv_update_steps / factor_update_steps`
    /// updates). Default: 10.
    #[config(default = 10)]
    pub inv_update_steps: usize,
    /// How each Kronecker factor is inverted. Default: [`KfacInverse::Dense`].
    #[config(default = "KfacInverse::Dense")]
    pub inverse: KfacInverse,
    /// A parameter whose per-example gradients are explicit rows (a convolution's weight,
    /// LayerNorm's `γ`, `β`) with at most this many entries gets its exact block `UᵀU`. A
    /// larger one-group convolution weight gets its Kronecker factors instead (KFC: Grosse &
    /// Martens, "A Kronecker-factored approximate Fisher matrix for convolution layers", 2016),
    /// and other larger explicit rows their diagonal. The exact block costs `numel²` memory and
    /// a `numel³` inverse. Default: 2048.
    #[config(default = 2048)]
    pub block_limit: usize,
}

/// How a Kronecker factor's damped inverse is formed.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum KfacInverse {
    /// Every factor inverted exactly (a Cholesky factorisation in `f64` on the host).
    Dense,
    /// A factor wider than `4 · rank` gets a low-rank-plus-identity damped inverse: its top
    /// `rank` eigenpairs by randomized subspace iteration (Halko, Martinsson & Tropp, 2011), as
    /// randomized KFAC truncates the factors' spectra (Puiu, "Randomized K-FACs: Speeding up
    /// K-FAC with Randomized Numerical Linear Algebra", 2022), with the rest of the spectrum at
    /// its mean rather than dropped, so that the trace is kept. The inverse then costs
    /// `≈ 4·n²·(rank + 10)` multiply-adds instead of `n³`, and each product with it
    /// `2·n·rank` per column instead of `n²`. Smaller factors stay dense.
    LowRank {
        /// Eigenpairs kept (≥ 1).
        rank: usize,
    },
}

impl KfacInverse {
    /// The rank of a low-rank inverse; `None`: every inverse dense.
    pub(crate) fn rank(&self) -> Option<usize> {
        match self {
            KfacInverse::Dense => None,
            KfacInverse::LowRank { rank } => Some(*rank),
        }
    }
}

impl KfacConfig {
    /// Factor updates between inversions.
    pub(crate) fn inverse_period(&self) -> usize {
        (self.inv_update_steps / self.factor_update_steps.max(1)).max(1)
    }

    /// The rank of the low-rank inverses; `None`: every inverse dense.
    pub(crate) fn rank(&self) -> Option<usize> {
        self.inverse.rank()
    }
}
