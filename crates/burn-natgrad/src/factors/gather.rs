//! The products of a gather block (an embedding table `[V, d]` read at integer ids): the
//! per-example gradient is `Σ_t e(idₙₜ) ⊗ Δₙₜ`, `e(i)` the `i`-th unit vector of the vocabulary,
//! which is never formed: the Gram comes from index equality, `Σ_{t,s} [idₙₜ = idₘₛ] Δₙₜ·Δₘₛ`,
//! the projection from a gather of rows and the back-projection from a scatter-add.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use super::rows::sum_over_t;

/// `ids` (`[M, T]`, stored as floats) flattened to Int `[M·T]`.
fn flat_ids(ids: &Tensor<2>) -> Tensor<1, Int> {
    let [m, t] = ids.dims();
    ids.clone().reshape([m * t]).int()
}

/// `[M·T, M'·T']` with 1 where the ids agree.
fn equal_ids(a: &Tensor<2>, b: &Tensor<2>) -> Tensor<2> {
    let [m, t] = a.dims();
    let [m2, t2] = b.dims();
    let a = a.clone().reshape([m * t, 1]);
    let b = b.clone().reshape([1, m2 * t2]);
    a.equal(b).float()
}

/// `U U'ᵀ` (`[M, M']`) of two gather blocks of the same table (`T` equal).
pub(crate) fn cross(
    ids: &Tensor<2>,
    delta: &Tensor<3>,
    ids2: &Tensor<2>,
    delta2: &Tensor<3>,
) -> Tensor<2> {
    let [m, t, d] = delta.dims();
    let m2 = delta2.dims()[0];
    let g = delta.clone().reshape([m * t, d]);
    let g2 = delta2.clone().reshape([m2 * t, d]);
    sum_over_t(equal_ids(ids, ids2) * g.matmul(g2.transpose()), m, m2, t)
}

/// `U v` (`[M, 1]`) for `v` `[V, d]`: the rows of `v` at the ids, dotted with `Δ`.
pub(crate) fn project(ids: &Tensor<2>, delta: &Tensor<3>, v: &Tensor<2>) -> Tensor<2> {
    let [m, t, d] = delta.dims();
    let rows = v.clone().select(0, flat_ids(ids));
    (rows * delta.clone().reshape([m * t, d]))
        .sum_dim(1)
        .reshape([m, t])
        .sum_dim(1)
}

/// `Uᵀ α` (`[V, d]`) for `α` `[M, 1]`: `αₙ Δₙₜ` added into row `idₙₜ`.
pub(crate) fn back(
    ids: &Tensor<2>,
    delta: &Tensor<3>,
    vocab: usize,
    alpha: &Tensor<2>,
) -> Tensor<2> {
    let [m, t, d] = delta.dims();
    let weighted = (delta.clone() * alpha.clone().reshape([m, 1, 1])).reshape([m * t, d]);
    Tensor::<2>::zeros([vocab, d], &delta.device()).select_assign(
        0,
        flat_ids(ids),
        weighted,
        IndexingUpdateOp::Add,
    )
}

/// The explicit per-example gradients `[M, V·d]` (one-hot of the vocabulary: for tests).
pub(crate) fn dense_rows(ids: &Tensor<2>, delta: &Tensor<3>, vocab: usize) -> Tensor<2> {
    let [m, t, d] = delta.dims();
    let one_hot: Tensor<3> = ids.clone().int().one_hot(vocab).float();
    debug_assert_eq!(one_hot.dims(), [m, t, vocab]);
    one_hot
        .swap_dims(1, 2)
        .matmul(delta.clone())
        .reshape([m, vocab * d])
}
