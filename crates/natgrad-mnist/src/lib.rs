#![warn(missing_docs)]
//! The MNIST experiment of "First-Order Approximations of the Natural Gradient without the
//! Tears", rerun on Burn with burn-natgrad: an MLP 784-128(ReLU)-10, batch 128, pixels in
//! `[0, 1]`, trained by the natural gradient, SGD and Adam through Burn's Learner.

pub mod data;
pub mod model;
pub mod plot;
pub mod progress;
pub mod run;

pub use data::{DataError, MnistBatch, MnistBatcher, MnistData};
pub use model::{Mlp, Recorder};
pub use run::{results_csv, results_table, run, EpochResult, OptimizerSpec, RunOptions, RunResult};
