//! Dense linear algebra on the host: the blocked Cholesky factorisation in `f64` (the Gram
//! solve and KFAC's inverses) and the randomized eigendecomposition of KFAC's low-rank inverses.

pub(crate) mod cholesky;
pub(crate) mod low_rank;
