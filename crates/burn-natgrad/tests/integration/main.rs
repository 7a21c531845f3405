//! burn-natgrad's integration tests, in one test binary (one link of Burn and its backends
//! instead of one per file: the debug build stays small enough for CI's disk).

mod common;

mod applied_step;
mod backends;
mod batch_norm;
mod conv2d;
mod curvature_batch;
mod damping;
mod embedding_norm;
mod errors;
mod factor_period;
mod kfac;
mod learner;
mod misuse;
mod norms;
mod parameters;
mod per_example;
mod plugin;
mod records;
mod sampled_fisher;
mod sampled_sharing;
mod skips;
mod solvers;
mod user_loss;
