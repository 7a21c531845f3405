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

pub(crate) mod classification;

use burn::config::Config;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::NatGradError;

/// Which Fisher information preconditions the gradient.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum FisherKind {
    /// The empirical Fisher: per-example gradients at the data labels. Costs nothing beyond the
    /// gradient's own backward pass.
    Empirical,
    /// The Fisher of the model's predictive distribution, estimated with `samples` labels per
    /// example drawn from the softmax (on the host, by a generator seeded with
    /// `NaturalGradientConfig::seed` and the predictions themselves, so that a resumed run draws
    /// the same labels). The batch is run `samples + 1` times in one forward/backward (data
    /// labels on the first copy).
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
    // The labels themselves, read once (a batch's worth of integers): on a CPU backend that
    // is one copy, where their minimum and maximum took five operations.
    let labels = targets.clone().into_data().convert::<i64>();
    let labels = labels.as_slice::<i64>().expect("int data");
    let (low, high) = labels
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &l| (lo.min(l), hi.max(l)));
    if low < 0 || high >= classes as i64 {
        return Err(NatGradError::InvalidInput(format!(
            "targets must lie in 0..{classes} (the logits' width); found labels from {low} to \
             {high}"
        )));
    }
    Ok(n)
}

/// `k` labels drawn from each row of `probs` (`[m, C]`, rows summing to 1), as `[m, k]` row-major:
/// inverse-CDF sampling with a SplitMix64 generator seeded by `seed` and the bits of `probs`
/// themselves. The draws are a function of the model's predictions on the batch, so a run
/// resumed from a checkpoint (same weights, same batch) draws the same labels, where the
/// backend's global generator would have moved on.
pub(crate) fn draw_labels(probs: &[f32], classes: usize, k: usize, seed: u64) -> Vec<i64> {
    let mut state = probs.iter().fold(seed ^ 0x6e67_5f73_616d_706c, |h, p| {
        (h ^ u64::from(p.to_bits())).wrapping_mul(0x0100_0000_01b3)
    });
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(probs.len() / classes * k);
    for row in probs.chunks(classes) {
        let total: f64 = row.iter().map(|&p| f64::from(p)).sum();
        for _ in 0..k {
            let u = next() * total;
            let mut acc = 0.0;
            let label = row
                .iter()
                .position(|&p| {
                    acc += f64::from(p);
                    u < acc
                })
                .unwrap_or(classes - 1);
            out.push(label as i64);
        }
    }
    out
}

/// `k` labels per row of `logits` (`[m, C]`, without autodiff) drawn from their softmax by
/// [`draw_labels`] (one host read of `m × C` values), `[m, k]` row-major.
pub(crate) fn sample_labels(logits: Tensor<2>, k: usize, seed: u64) -> Vec<i64> {
    let classes = logits.dims()[1];
    let probs = softmax(logits, 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float data");
    draw_labels(&probs, classes, k, seed)
}

/// Labels for every row of the stacked batch: the `N` data labels, then `k` labels for each of
/// the first `m` examples (the curvature batch) drawn from `softmax(logits)` of the data rows
/// (detached, read to the host: `m × C` values) by [`draw_labels`] with `seed`, copy-major; or,
/// for the exact Fisher, every class once.
pub(crate) fn labels_for(
    kind: FisherKind,
    logits: &Tensor<2>,
    targets: Tensor<1, Int>,
    m: usize,
    seed: u64,
) -> Tensor<1, Int> {
    match kind {
        FisherKind::Empirical => targets,
        FisherKind::Sampled { samples } => {
            let drawn = sample_labels(logits.clone().slice(0..m).inner(), samples, seed);
            // [m, k] -> copy-major [k * m]: copy s holds every curvature example's s-th draw.
            let drawn = Tensor::<2, Int>::from_data(
                TensorData::new(drawn, [m, samples]),
                &targets.device(),
            )
            .transpose()
            .reshape([samples * m]);
            Tensor::cat(vec![targets, drawn], 0)
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

#[cfg(test)]
mod tests {
    use super::draw_labels;

    /// The draws follow the probabilities (40,000 draws: each frequency within 5σ), are
    /// reproducible, and change with the seed and with the probabilities.
    #[test]
    fn drawn_labels_follow_the_probabilities_and_are_reproducible() {
        let probs = [0.1f32, 0.6, 0.3, 0.5, 0.0, 0.5];
        let k = 20_000;
        let drawn = draw_labels(&probs, 3, k, 7);
        assert_eq!(drawn.len(), 2 * k);
        for (row, p) in drawn.chunks(k).zip(probs.chunks(3)) {
            for (c, &pc) in p.iter().enumerate() {
                let freq = row.iter().filter(|&&l| l == c as i64).count() as f64 / k as f64;
                let sigma = (f64::from(pc) * (1.0 - f64::from(pc)) / k as f64).sqrt();
                assert!(
                    (freq - f64::from(pc)).abs() <= 5.0 * sigma + 1e-12,
                    "class {c}: frequency {freq}, probability {pc}"
                );
            }
        }
        assert_eq!(draw_labels(&probs, 3, k, 7), drawn);
        assert_ne!(draw_labels(&probs, 3, k, 8), drawn);
        let moved = [0.1f32, 0.6, 0.3, 0.5, 0.0, 0.5000001];
        assert_ne!(draw_labels(&moved, 3, k, 7)[k..], drawn[k..]);
    }
}
