//! Index algebra of periodic rows and the dense products the blocks share.
//!
//! A weight block's input may hold `P` rows for `M` example rows (`P` dividing `M`): example
//! `m` used input row `m mod P`. That happens when the rows are copies of the batch that shared
//! a layer's input (the sampled Fisher's), so that `X Xᵀ` is computed once for all copies.

use burn::tensor::Tensor;

/// `input` (`[P, …]`, `P` dividing `rows`) with one row per example: row `m` is `input[m mod
/// P]`.
pub(crate) fn expand_rows<const D: usize>(input: &Tensor<D>, rows: usize) -> Tensor<D> {
    let p = input.dims()[0];
    if p == rows {
        input.clone()
    } else {
        input.clone().repeat_dim(0, rows / p)
    }
}

/// Rows `start..end` of the `rows`-row view of a periodic `input` (see [`expand_rows`]): kept
/// as they are when the range covers whole periods.
pub(crate) fn slice_periodic(
    input: &Tensor<3>,
    rows: usize,
    start: usize,
    end: usize,
) -> Tensor<3> {
    let p = input.dims()[0];
    if p == rows {
        input.clone().slice(start..end)
    } else if start.is_multiple_of(p) && end.is_multiple_of(p) {
        input.clone()
    } else {
        expand_rows(input, rows).slice(start..end)
    }
}

/// Sums `[M·T, M'·T]` over both `T`s: `[M, M']`.
pub(crate) fn sum_over_t(k: Tensor<2>, m: usize, m2: usize, t: usize) -> Tensor<2> {
    if t == 1 {
        k
    } else {
        k.reshape([m, t, m2, t])
            .sum_dim(3)
            .sum_dim(1)
            .reshape([m, m2])
    }
}

/// The sample-space vector `w·1` (`[m, 1]`) whose back-projection `Uᵀ(w·1)` is the implicit
/// gradient.
pub(crate) fn uniform_weights(m: usize, w: &Tensor<1>) -> Tensor<2> {
    Tensor::<2>::ones([m, 1], &w.device()) * w.clone().reshape([1, 1])
}

/// A weight block's factors flattened over examples and sequence: `(P, M, T, X [P·T, in],
/// Δ [M·T, out])`.
pub(crate) fn flatten(
    input: &Tensor<3>,
    output_grad: &Tensor<3>,
) -> (usize, usize, usize, Tensor<2>, Tensor<2>) {
    let [p, t, d_in] = input.dims();
    let [m, _, d_out] = output_grad.dims();
    (
        p,
        m,
        t,
        input.clone().reshape([p * t, d_in]),
        output_grad.clone().reshape([m * t, d_out]),
    )
}

/// `weighted` (`[M, T, out]`) summed over the rows that share an input row of a period-`P`
/// input (rows `i`, `i + P`, …): `[P, T, out]`.
pub(crate) fn fold_rows(weighted: Tensor<3>, p: usize) -> Tensor<3> {
    let [m, t, d_out] = weighted.dims();
    if m > p {
        weighted
            .reshape([m / p, p * t * d_out])
            .sum_dim(0)
            .reshape([p, t, d_out])
    } else {
        weighted
    }
}

/// `Σ_m input[m mod P]ᵀ weighted[m]` (`[in, out]`) for `weighted` `[M, T, out]`: the rows that
/// share an input row are summed first, so the product is one `[in, P·T] × [P·T, out]` matmul.
pub(crate) fn weight_back(input: &Tensor<3>, weighted: Tensor<3>) -> Tensor<2> {
    let [p, t, d_in] = input.dims();
    let d_out = weighted.dims()[2];
    input
        .clone()
        .reshape([p * t, d_in])
        .transpose()
        .matmul(fold_rows(weighted, p).reshape([p * t, d_out]))
}

/// `X Xᵀ` for `X` `[R, d]`. (Computing it by halves, `X₁X₁ᵀ`, `X₂X₁ᵀ`, `X₂X₂ᵀ`, saves a
/// quarter of the multiply-adds but measured slower on flex at R = 512: smaller matmuls and the
/// concatenation cost more than they save.)
pub(crate) fn self_gram(x: Tensor<2>) -> Tensor<2> {
    x.clone().matmul(x.transpose())
}

/// `X Xᵀ` (`[P·T, P·T]`) tiled to `[rows·T, cols·T]` (both multiples of `P`).
pub(crate) fn tiled(xx: Tensor<2>, p: usize, rows: usize, cols: usize) -> Tensor<2> {
    let xx = if rows > p {
        xx.repeat_dim(0, rows / p)
    } else {
        xx
    };
    if cols > p {
        xx.repeat_dim(1, cols / p)
    } else {
        xx
    }
}
