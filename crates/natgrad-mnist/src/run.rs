//! One training run per optimizer through Burn's `SupervisedTraining`/`Learner`, and the
//! comparison table and CSV.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use burn::tensor::Device;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining};
use burn_natgrad::{Curvature, FisherKind, KfacInverse, NaturalGradientConfig, Solver};

use crate::data::{MnistBatch, MnistBatcher, MnistData};
use crate::model::{Mlp, Recorder};
use crate::progress::ProgressRenderer;

/// An optimizer to compare, with its learning rate.
// A handful of specs a run: not worth boxing the configuration.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum OptimizerSpec {
    /// burn-natgrad's natural gradient.
    Ngd {
        /// Its configuration.
        config: NaturalGradientConfig,
        /// Learning rate.
        lr: f64,
    },
    /// Burn's SGD.
    Sgd {
        /// Learning rate.
        lr: f64,
    },
    /// Burn's Adam.
    Adam {
        /// Learning rate.
        lr: f64,
    },
}

impl OptimizerSpec {
    /// `ngd-empirical`, `ngd-sampled`, `sgd` or `adam`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerSpec::Ngd { config, .. } => {
                let kfac = config.curvature.as_kfac().is_some();
                match (kfac, config.fisher) {
                    (false, FisherKind::Empirical) => "ngd-empirical",
                    (false, FisherKind::Sampled { .. }) => "ngd-sampled",
                    (false, FisherKind::Exact { .. }) => "ngd-exact",
                    (true, FisherKind::Empirical) => "kfac-empirical",
                    (true, FisherKind::Sampled { .. }) => "kfac-sampled",
                    (true, FisherKind::Exact { .. }) => "kfac-exact",
                }
            }
            OptimizerSpec::Sgd { .. } => "sgd",
            OptimizerSpec::Adam { .. } => "adam",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Ngd { lr, .. }
            | OptimizerSpec::Sgd { lr }
            | OptimizerSpec::Adam { lr } => *lr,
        }
    }

    /// A one-line description of the hyper-parameters.
    pub fn describe(&self) -> String {
        match self {
            OptimizerSpec::Ngd { config, lr } => format!(
                "lr {lr}, damping {}, kl_max {}, {}, momentum {}{}{}",
                config.damping,
                config.kl_max.map_or("none".into(), |k| k.to_string()),
                match &config.curvature {
                    Curvature::Full(full) => format!(
                        "solver {}{}",
                        match full.solver {
                            Solver::Gram => "Gram",
                            Solver::CgSample(_) => "CG (sample space)",
                            Solver::CgParam(_) => "CG (parameter space)",
                        },
                        if full.block_diagonal {
                            ", block-diagonal"
                        } else {
                            ""
                        }
                    ),
                    Curvature::Kfac(k) => format!(
                        "KFAC decay {} factors every {} inverses every {} steps{}{}",
                        k.factor_decay,
                        k.factor_update_steps,
                        k.inv_update_steps,
                        if k.block_limit == 2048 {
                            String::new()
                        } else {
                            format!(" block limit {}", k.block_limit)
                        },
                        match k.inverse {
                            KfacInverse::Dense => String::new(),
                            KfacInverse::LowRank { rank } => format!(" rank {rank}"),
                        }
                    ),
                },
                config
                    .momentum
                    .as_ref()
                    .map_or("none".into(), |m| m.momentum.to_string()),
                config
                    .curvature_batch
                    .map_or(String::new(), |m| format!(", curvature batch {m}")),
                config
                    .adaptive_damping
                    .as_ref()
                    .map_or(String::new(), |a| format!(
                        ", adaptive damping every {}",
                        a.period
                    )),
            ),
            OptimizerSpec::Sgd { lr } | OptimizerSpec::Adam { lr } => format!("lr {lr}"),
        }
    }
}

/// Settings shared by every run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Seed for the initial weights and the data order.
    pub seed: u64,
    /// The autodiff device to train on.
    pub device: Device,
    /// Show a progress bar (terminal) instead of plain lines.
    pub progress_bar: bool,
    /// Print progress at all.
    pub quiet: bool,
    /// Evaluate a moving average of the weights with this decay instead of the last iterate
    /// ([`WeightAverage`](crate::WeightAverage), updated after every step).
    pub average: Option<f64>,
    /// Test evaluations per epoch during training, against the training seconds
    /// ([`Evaluator`](crate::Evaluator), the last at the epoch's end); 0: only the Learner's
    /// validation after each epoch.
    pub evals_per_epoch: usize,
}

/// The outcome of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochResult {
    /// 1-based epoch.
    pub epoch: usize,
    /// Test accuracy after the epoch.
    pub test_accuracy: f64,
    /// Mean test cross-entropy after the epoch (NaN when not measured).
    pub test_loss: f64,
    /// Mean train loss over the epoch's steps.
    pub train_loss: f64,
}

/// The outcome of one optimizer's run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// What ran.
    pub spec: OptimizerSpec,
    /// Per-epoch results.
    pub epochs: Vec<EpochResult>,
    /// Train loss of every step.
    pub step_losses: Vec<f64>,
    /// Median step time in milliseconds.
    pub median_step_ms: f64,
    /// Steps the natural gradient skipped (non-finite direction).
    pub skipped_steps: u64,
    /// KFAC steps that reused the factors in force (`factor_update_steps` above 1).
    pub reused_steps: u64,
    /// The natural gradient's damping at the end (moved by adaptive damping), if any.
    pub final_damping: Option<f64>,
    /// Test evaluations during training, `(train seconds, step, accuracy)` (the hand-written
    /// loop's; empty for the Learner's runs, which evaluate once per epoch).
    pub evals: Vec<(f64, usize, f64)>,
    /// The decay of the weight average that was evaluated instead of the last iterate, if any.
    pub average: Option<f64>,
}

impl RunResult {
    /// The hyper-parameters, and the weight average evaluated, if any.
    pub fn describe(&self) -> String {
        match self.average {
            Some(decay) => format!("{}, weight average {decay}", self.spec.describe()),
            None => self.spec.describe(),
        }
    }
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Trains a fresh model with `spec` through the Learner; checkpoints go under `dir`.
pub fn run(spec: &OptimizerSpec, data: &MnistData, options: &RunOptions, dir: &Path) -> RunResult {
    let device = &options.device;
    let steps_per_epoch = data.train.len().div_ceil(options.batch_size);
    let recorder = Recorder::new(steps_per_epoch);
    let mut model = Mlp::new(options.hidden, options.seed, device);
    model.recorder = Some(recorder.clone());
    model.average = options.average.map(crate::WeightAverage::new);
    model.evaluator = (options.evals_per_epoch > 0).then(|| {
        crate::Evaluator::new(
            data.test.clone(),
            steps_per_epoch.div_ceil(options.evals_per_epoch),
        )
    });
    let optim: ModuleOptimizer = match spec {
        OptimizerSpec::Ngd { config, .. } => {
            let ng = config.build();
            model.natgrad = Some(ng.clone());
            ng.module_optimizer()
        }
        OptimizerSpec::Sgd { .. } => SgdConfig::new().init(),
        OptimizerSpec::Adam { .. } => AdamConfig::new().init(),
    };
    let natgrad = model.natgrad.clone();
    let train: Arc<dyn DataLoader<MnistBatch>> = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(options.batch_size)
        .shuffle(options.seed)
        .set_device(device.clone())
        .build(InMemDataset::new(data.train.clone()));
    let test: Arc<dyn DataLoader<MnistBatch>> = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(1000)
        .set_device(device.clone())
        .build(InMemDataset::new(data.test.clone()));
    let _ = std::fs::remove_dir_all(dir);
    let training = SupervisedTraining::new(dir, train, test)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .with_default_checkpointers()
        .num_epochs(options.epochs)
        .renderer(Box::new(ProgressRenderer::new(
            spec.name(),
            recorder.clone(),
            options.progress_bar,
            options.quiet,
        )));
    let _result = training.launch(Learner::new(model, optim, spec.lr()));

    recorder.with(|r| {
        let epochs = (0..options.epochs)
            .map(|e| {
                let (correct, total, loss_sum) = r.test.get(e).copied().unwrap_or((0, 0, 0.0));
                let start = (e * steps_per_epoch).min(r.losses.len());
                let end = ((e + 1) * steps_per_epoch).min(r.losses.len());
                let losses = &r.losses[start..end];
                EpochResult {
                    epoch: e + 1,
                    test_accuracy: if total == 0 {
                        f64::NAN
                    } else {
                        correct as f64 / total as f64
                    },
                    test_loss: if total == 0 {
                        f64::NAN
                    } else {
                        loss_sum / total as f64
                    },
                    train_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
                }
            })
            .collect();
        RunResult {
            spec: spec.clone(),
            epochs,
            step_losses: r.losses.clone(),
            median_step_ms: median(&r.step_ms),
            skipped_steps: natgrad.as_ref().map_or(0, |ng| ng.stats().skipped),
            reused_steps: natgrad.as_ref().map_or(0, |ng| ng.stats().reused),
            final_damping: natgrad.as_ref().map(|ng| ng.damping()),
            evals: r.evals.clone(),
            average: options.average,
        }
    })
}

/// The SGD median step time of these results, if SGD ran.
fn sgd_ms(results: &[RunResult]) -> Option<f64> {
    results
        .iter()
        .find(|r| matches!(r.spec, OptimizerSpec::Sgd { .. }))
        .map(|r| r.median_step_ms)
}

/// The evaluations during training, one line each:
/// `optimizer,hyper_parameters,seconds,step,test_accuracy`.
pub fn evals_csv(results: &[RunResult]) -> String {
    let mut out = String::from("optimizer,hyper_parameters,seconds,step,test_accuracy\n");
    for r in results {
        for (s, step, acc) in &r.evals {
            let _ = writeln!(
                out,
                "{},\"{}\",{s:.3},{step},{acc:.4}",
                r.spec.name(),
                r.describe()
            );
        }
    }
    out
}

/// The CSV: `optimizer,epoch,test_accuracy,train_loss,median_step_ms,step_ratio_vs_sgd`.
pub fn results_csv(results: &[RunResult]) -> String {
    let sgd = sgd_ms(results);
    let mut out =
        String::from("optimizer,epoch,test_accuracy,train_loss,median_step_ms,step_ratio_vs_sgd\n");
    for r in results {
        let ratio = sgd.map_or(String::new(), |s| format!("{:.3}", r.median_step_ms / s));
        for e in &r.epochs {
            let _ = writeln!(
                out,
                "{},{},{:.4},{:.4},{:.3},{}",
                r.spec.name(),
                e.epoch,
                e.test_accuracy,
                e.train_loss,
                r.median_step_ms,
                ratio
            );
        }
    }
    out
}

/// A Markdown table's header: the `lead` columns, one column per epoch named by `epoch`, then
/// the `tail` columns.
pub(crate) fn table_header(
    lead: &[&str],
    epochs: usize,
    epoch: impl Fn(usize) -> String,
    tail: &[&str],
) -> String {
    let names: Vec<String> = lead
        .iter()
        .map(|s| s.to_string())
        .chain((1..=epochs).map(epoch))
        .chain(tail.iter().map(|s| s.to_string()))
        .collect();
    format!(
        "| {} |\n|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    )
}

/// The comparison table printed at the end (Markdown, so README can show it as is).
pub fn results_table(results: &[RunResult]) -> String {
    let sgd = sgd_ms(results);
    let epochs = results.iter().map(|r| r.epochs.len()).max().unwrap_or(0);
    let mut out = table_header(
        &["optimizer", "hyper-parameters"],
        epochs,
        |e| format!("test acc. epoch {e}"),
        &["final train loss", "median step (ms)", "step / SGD step"],
    );
    for r in results {
        let _ = write!(out, "| {} | {} |", r.spec.name(), r.describe());
        for e in &r.epochs {
            let _ = write!(out, " {:.2}% |", 100.0 * e.test_accuracy);
        }
        let last = r.epochs.last().map_or(f64::NAN, |e| e.train_loss);
        let ratio = sgd.map_or("-".into(), |s| format!("{:.2}×", r.median_step_ms / s));
        let _ = writeln!(out, " {last:.4} | {:.2} | {ratio} |", r.median_step_ms);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hyper-parameters (which hold commas) are one quoted field: five per row.
    #[test]
    fn evals_csv_quotes_the_hyper_parameters() {
        let spec = OptimizerSpec::Ngd {
            config: burn_natgrad::NaturalGradientConfig::new(),
            lr: 5.0,
        };
        let result = RunResult {
            spec,
            epochs: vec![],
            step_losses: vec![],
            median_step_ms: 1.0,
            skipped_steps: 0,
            reused_steps: 0,
            final_damping: None,
            evals: vec![(1.5, 10, 0.9), (3.0, 20, 0.95)],
            average: Some(0.99),
        };
        let csv = evals_csv(&[result]);
        for line in csv.lines().skip(1) {
            let (name, rest) = line.split_once(",\"").expect("a quoted second field");
            let (hyper, numbers) = rest.split_once("\",").expect("the field closes");
            assert_eq!(name, "ngd-empirical");
            assert!(hyper.contains(", weight average 0.99"), "{hyper}");
            assert_eq!(numbers.split(',').count(), 3, "{line}");
        }
    }
}
