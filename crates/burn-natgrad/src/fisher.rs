//! The Fisher information of a softmax classifier, empirical or model-sampled, as products over
//! per-example factors.
//!
//! For a model with output distribution `p(y | x, θ)` the Fisher is
//! `F = E_x E_{y∼p(·|x,θ)} [∇ log p ∇ log pᵀ]` (Amari, "Natural Gradient Works Efficiently in
//! Learning", 1998). The *empirical* Fisher replaces the model's `y` by the data labels; the
//! *sampled* Fisher draws `k` labels per example from the model's softmax, an unbiased
//! Monte-Carlo estimate of the true Fisher (Martens, "New Insights and Perspectives on the
//! Natural Gradient Method", 2020, §9–§11, discusses the difference). Over a minibatch of `N`
//! examples with per-example gradients `gᵢ`:
//!
//! * empirical: `F = (1/N) Σᵢ gᵢ gᵢᵀ`
//! * sampled:   `F = (1/(N k)) Σᵢ Σₛ gᵢₛ gᵢₛᵀ`
//!
//! With a *curvature batch* of `m < N` examples (`NaturalGradientConfig::curvature_batch`) the
//! sums run over the first `m` examples only, `1/N` becoming `1/m`, while the gradient still
//! averages all `N` (Martens, "Deep learning via Hessian-free optimization", 2010, §4.3; Byrd,
//! Chin, Neveitt & Nocedal, "On the Use of Stochastic Hessian Information in Optimization
//! Methods for Machine Learning", 2011).
//!
//! This file is the one place of the Fisher-kind logic: which labels the rows use
//! ([`labels_for`]), and how they are scaled ([`fisher_scale`]); `classification` applies them.
//! Both kinds couple every parameter of the model; the block-diagonal option keeps only the
//! blocks of each layer.

use burn::config::Config;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

use crate::error::NatGradError;

/// Which Fisher information preconditions the gradient.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum FisherKind {
    /// The empirical Fisher: per-example gradients at the data labels. Costs nothing beyond the
    /// gradient's own backward pass.
    Empirical,
    /// The Fisher of the model's predictive distribution, estimated with `samples` labels per
    /// example drawn from the softmax with Burn's seeded RNG. The batch is run `samples + 1`
    /// times in one forward/backward (data labels on the first copy).
    Sampled {
        /// Labels drawn per example (`k ≥ 1`).
        samples: usize,
    },
    /// The exact Fisher of a softmax output over `classes` classes,
    /// `F = (1/m) Σᵢ Σ_c pᵢ_c gᵢ_c gᵢ_cᵀ` with `gᵢ_c` the gradient of `−log pᵢ_c` (Martens,
    /// "New Insights and Perspectives on the Natural Gradient Method", 2020, §9): the batch's
    /// first `m` examples (the curvature batch, all of them by default) are run once per class,
    /// copy `c` labelled `c`, each row's loss weighted by `√pᵢ_c` (detached), in one
    /// forward/backward. `classes` must be the logits' width.
    Exact {
        /// The number of classes of the softmax (`≥ 2`).
        classes: usize,
    },
}

impl FisherKind {
    /// How many copies of the batch one step runs: 1, `k + 1` for the sampled Fisher, `C + 1`
    /// for the exact one.
    pub fn copies(&self) -> usize {
        match self {
            FisherKind::Empirical => 1,
            FisherKind::Sampled { samples } => samples + 1,
            FisherKind::Exact { classes } => classes + 1,
        }
    }
}

/// Per-row softmax cross-entropy, `[M, 1]`, of `logits` `[M, C]` at `labels` `[M]`.
pub(crate) fn cross_entropy_rows(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<2> {
    let m = labels.dims()[0];
    log_softmax(logits, 1)
        .gather(1, labels.reshape([m, 1]))
        .neg()
}

/// Checks `targets` against the logits: shape, and labels in `0..classes` (one host read).
/// `rows_for(n)` is how many logit rows a batch of `n` examples must have.
pub(crate) fn check_targets(
    logits_rows: usize,
    classes: usize,
    targets: &Tensor<1, Int>,
    rows_for: impl Fn(usize) -> usize,
) -> Result<usize, NatGradError> {
    let n = targets.dims()[0];
    if n == 0 {
        return Err(NatGradError::InvalidInput("the batch is empty".into()));
    }
    let expected = rows_for(n);
    if logits_rows != expected {
        return Err(NatGradError::InvalidInput(format!(
            "the logits have {logits_rows} rows but there are {n} targets and the Fisher needs \
             {expected} row{} (the batch, and the rows its sampled labels are drawn for): run \
             the forward pass on the input returned by `NaturalGradient::capture`",
            if expected == 1 { "" } else { "s" }
        )));
    }
    let range = Tensor::cat(
        vec![
            targets.clone().min().reshape([1]),
            targets.clone().max().reshape([1]),
        ],
        0,
    )
    .into_data()
    .convert::<i64>();
    let range = range.as_slice::<i64>().expect("int data");
    if range[0] < 0 || range[1] >= classes as i64 {
        return Err(NatGradError::InvalidInput(format!(
            "targets must lie in 0..{classes} (the logits' width); found labels from {} to {}",
            range[0], range[1]
        )));
    }
    Ok(n)
}

/// Labels for every row of the stacked batch: the `N` data labels, then `k` labels for each of
/// the first `m` examples (the curvature batch) drawn from `softmax(logits)` of the data rows
/// (detached), copy-major.
pub(crate) fn labels_for(
    kind: FisherKind,
    logits: &Tensor<2>,
    targets: Tensor<1, Int>,
    m: usize,
) -> Tensor<1, Int> {
    match kind {
        FisherKind::Empirical => targets,
        FisherKind::Sampled { samples } => {
            let probs = softmax(logits.clone().slice(0..m).inner(), 1);
            // [m, k] -> copy-major [k * m]: copy s holds every curvature example's s-th draw.
            let drawn = probs
                .categorical(samples)
                .transpose()
                .reshape([samples * m]);
            Tensor::cat(vec![targets, drawn.to_device(&logits.device())], 0)
        }
        FisherKind::Exact { classes } => {
            // Copy c labels every curvature example c: [C, m] -> copy-major [C * m].
            let device = targets.device();
            let each = Tensor::<1, Int>::arange(0..classes as i64, &device)
                .reshape([classes, 1])
                .repeat_dim(1, m)
                .reshape([classes * m]);
            Tensor::cat(vec![targets, each], 0)
        }
    }
}

/// The weight of every row's loss: 1 for the data rows and the sampled ones, `√pᵢ_c`
/// (detached) for the exact Fisher's row of example `i` at class `c` (copy-major), so that its
/// probe gradient is `√pᵢ_c gᵢ_c`; `None` when every weight is 1.
pub(crate) fn row_weights(
    kind: FisherKind,
    logits: &Tensor<2>,
    n: usize,
    m: usize,
) -> Option<Tensor<2>> {
    let FisherKind::Exact { classes } = kind else {
        return None;
    };
    let probs = softmax(logits.clone().slice(0..m).inner(), 1);
    let weights = probs.sqrt().transpose().reshape([classes * m, 1]);
    let ones = Tensor::<2>::ones([n, 1], &weights.device());
    Some(Tensor::cat(vec![ones, weights], 0).to_device(&logits.device()))
}

/// The Fisher scale `c` such that `F = c Σ_rows u uᵀ` for rows `u` = probe factors of a mean loss
/// over `n` examples (`u = gᵢ / n`), with Fisher rows from a curvature batch of `m ≤ n`
/// examples: `F = (1/m) Σ_{i<m} gᵢgᵢᵀ`, so `c = n²/m` for the empirical Fisher, `n²/(m k)`
/// for the sampled one (`n` and `n / k` over the whole batch), and `n²/m` for the exact one
/// (its rows carry their `√p` weights).
pub(crate) fn fisher_scale(kind: FisherKind, n: usize, m: usize) -> f64 {
    let (n, m) = (n as f64, m as f64);
    match kind {
        FisherKind::Empirical | FisherKind::Exact { .. } => n * n / m,
        FisherKind::Sampled { samples } => n * n / (m * samples as f64),
    }
}
