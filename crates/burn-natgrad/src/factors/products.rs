//! Products over a set of blocks, the sample-space and parameter-space operators the solvers
//! use: the Gram `U Uᵀ`, the projection `U v`, the back-projection `Uᵀ α`, the Fisher-vector
//! product, and the dense oracles for tests. Formed from the factors, never from an `N × P` or
//! `P × P` matrix, except in [`dense_rows`] and [`dense_fisher`].

use burn::tensor::Tensor;

use super::{Block, BlockFactors};

/// The Gram matrix `U Uᵀ` (`[M, M]`) of the blocks' per-example gradients.
pub fn gram(blocks: &[&Block]) -> Tensor<2> {
    blocks
        .iter()
        .map(|b| b.factors.gram())
        .reduce(|a, b| a + b)
        .expect("at least one block")
}

/// The Gram `U Uᵀ` (`[M, M]`) and the projection `U (U_dᵀ 1)` (`[M, 1]`) of the implicit
/// gradient with unit weight (see [`Block::gram_and_implicit_projection`]).
///
/// A weight block with `T = 1` and a bias block of the same module are one Linear layer as the
/// capture registers them (the bias's per-example gradients are the weight's output
/// gradients), and are computed together: `(X Xᵀ + 1) ⊙ (Δ Δᵀ)` spares the bias its own
/// `Δ Δᵀ` products.
pub fn gram_and_implicit_projection(blocks: &[&Block]) -> (Tensor<2>, Tensor<2>) {
    let mut covered = vec![false; blocks.len()];
    let mut total: Option<(Tensor<2>, Tensor<2>)> = None;
    for i in 0..blocks.len() {
        if covered[i] {
            continue;
        }
        // A bias computed on its own (before its weight) is never fused again.
        covered[i] = true;
        let block = blocks[i];
        let bias = match &block.factors {
            BlockFactors::Weight { input, .. } if input.dims()[1] == 1 => {
                (0..blocks.len()).find(|&j| {
                    !covered[j]
                        && blocks[j].group == block.group
                        && matches!(blocks[j].factors, BlockFactors::Bias { .. })
                        && blocks[j].data.is_some() == block.data.is_some()
                })
            }
            _ => None,
        };
        if let Some(j) = bias {
            covered[j] = true;
        }
        let (k, b) = block.gram_and_projection(bias.is_some());
        total = Some(match total {
            Some((k0, b0)) => (k0 + k, b0 + b),
            None => (k, b),
        });
    }
    total.expect("at least one block")
}

/// `U v` (`[M, 1]`) for a vector given block by block.
pub fn project(blocks: &[&Block], v: &[Tensor<2>]) -> Tensor<2> {
    blocks
        .iter()
        .zip(v)
        .map(|(b, v)| b.factors.project(v))
        .reduce(|a, b| a + b)
        .expect("at least one block")
}

/// `Uᵀ α`, block by block.
pub fn back(blocks: &[&Block], alpha: &Tensor<2>) -> Vec<Tensor<2>> {
    blocks.iter().map(|b| b.factors.back(alpha)).collect()
}

/// The matrix-free Fisher-vector product `F v = Uᵀ (U v)`.
pub fn fisher_vector_product(blocks: &[&Block], v: &[Tensor<2>]) -> Vec<Tensor<2>> {
    back(blocks, &project(blocks, v))
}

/// The explicit `[M, P]` matrix of per-example gradients (scaled so that `F = UᵀU`), blocks
/// concatenated in order, each flattened in its matrix view. Test oracle: `O(M·P)` memory.
#[cfg(any(test, feature = "testing"))]
pub fn dense_rows(blocks: &[&Block]) -> Tensor<2> {
    Tensor::cat(blocks.iter().map(|b| b.factors.dense_rows()).collect(), 1)
}

/// The explicit `[P, P]` Fisher `UᵀU`. Test oracle: `O(P²)` memory.
#[cfg(any(test, feature = "testing"))]
pub fn dense_fisher(blocks: &[&Block]) -> Tensor<2> {
    let u = dense_rows(blocks);
    u.clone().transpose().matmul(u)
}
