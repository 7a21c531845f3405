#![warn(missing_docs)]
//! The MNIST experiment of "First-Order Approximations of the Natural Gradient without the
//! Tears", rerun on Burn with burn-natgrad: an MLP 784-128(ReLU)-10, batch 128, pixels in
//! `[0, 1]`, trained by the natural gradient, SGD and Adam through Burn's Learner; and Burn's
//! guide CNN ([`GuideCnn`]) in a hand-written loop ([`train_cnn`]).

pub mod average;
pub mod cnn;
pub mod data;
mod eval;
pub mod model;
pub mod plot;
pub mod progress;
pub mod run;
pub mod seeds;
pub mod train_loop;

pub use average::WeightAverage;
pub use cnn::GuideCnn;
pub use data::{DataError, MnistBatch, MnistBatcher, MnistData};
pub use model::{Evaluator, Mlp, Recorder};
pub use run::{
    evals_csv, results_csv, results_table, run, EpochResult, OptimizerSpec, RunOptions, RunResult,
};
pub use seeds::{seeds_csv, seeds_table};
pub use train_loop::{train_cnn, LoopOptions};
