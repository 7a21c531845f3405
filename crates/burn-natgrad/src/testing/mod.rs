//! Oracles and internals for tests and benchmarks: the blocks a step solves, the dense Fisher,
//! the host Cholesky, and the solvers' pieces. Not needed to train; its contents follow the
//! crate's internals and may change between versions.

#[cfg(test)]
pub(crate) mod devices;

pub use crate::curvature::full::{
    conjugate_gradient, gram_direct, solve, CgConfig, Gradient, Solution,
};
pub use crate::factors::products::{
    back, dense_fisher, dense_rows, fisher_vector_product, gram, gram_and_implicit_projection,
    project,
};
pub use crate::factors::{Block, BlockFactors, DataRows, Factors, Uncovered};
pub use crate::linalg::cholesky::cholesky_solve;
