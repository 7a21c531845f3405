//! The CNN's runs: a hand-written training loop (as in Burn's `custom-training-loop` example),
//! which evaluates the test accuracy several times per epoch against the training wall-clock,
//! so that time-to-accuracy can be compared, not only steps.

use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Device;

use crate::average::WeightAverage;
use crate::cnn::GuideCnn;
use burn::data::dataset::vision::MnistItem;

use crate::data::{MnistBatcher, MnistData};
use crate::run::{median, EpochResult, OptimizerSpec, RunResult};

/// Settings of a CNN run.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Hidden width of the first Linear layer.
    pub hidden: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// A BatchNorm after the first convolution.
    pub batch_norm: bool,
    /// Seed of the initial weights and of the data order.
    pub seed: u64,
    /// Test evaluations per epoch (the last at the epoch's end).
    pub evals_per_epoch: usize,
    /// The autodiff device to train on.
    pub device: Device,
    /// Print a line per evaluation.
    pub verbose: bool,
    /// Evaluate a moving average of the weights with this decay instead of the last iterate
    /// ([`WeightAverage`]; its update is not timed as part of the step).
    pub average: Option<f64>,
}

/// `data` in a seeded random order (a 64-bit LCG Fisher–Yates shuffle).
fn shuffled(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..len).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((s >> 33) as usize) % (i + 1);
        order.swap(i, j);
    }
    order
}

/// Test accuracy of `model` (inference mode, batches of 1000).
fn accuracy(model: &GuideCnn, test: &[MnistItem], device: &Device) -> f64 {
    let model = model.valid();
    crate::eval::accuracy(test, device, |x| model.forward(x))
}

/// Trains a fresh CNN with `spec`; the result's `evals` hold `(train seconds, step, accuracy)`.
pub fn train_cnn(spec: &OptimizerSpec, data: &MnistData, options: &LoopOptions) -> RunResult {
    let device = &options.device;
    let mut model = GuideCnn::new(
        options.hidden,
        options.dropout,
        options.batch_norm,
        options.seed,
        device,
    );
    let (natgrad, mut optim): (_, ModuleOptimizer) = match spec {
        OptimizerSpec::Ngd { config, .. } => {
            // The loop stops a run whose steps are skipped in a row itself (below), so that a
            // diverging configuration of a sweep does not end the others.
            let ng = config.clone().with_max_consecutive_skips(None).build();
            let optim = ng.module_optimizer();
            (Some(ng), optim)
        }
        OptimizerSpec::Sgd { .. } => (None, SgdConfig::new().init()),
        OptimizerSpec::Adam { .. } => (None, AdamConfig::new().init()),
    };
    let lr = spec.lr();
    let steps_per_epoch = data.train.len().div_ceil(options.batch_size);
    let every = steps_per_epoch.div_ceil(options.evals_per_epoch.max(1));
    let (mut losses, mut step_ms, mut evals, mut epochs) = (vec![], vec![], vec![], vec![]);
    let average = options.average.map(WeightAverage::new);
    let mut seconds = 0.0;
    let mut stopped = false;
    for epoch in 0..options.epochs {
        let order = shuffled(data.train.len(), options.seed.wrapping_add(epoch as u64));
        let start = losses.len();
        for (i, chunk) in order.chunks(options.batch_size).enumerate() {
            let items = chunk.iter().map(|&k| data.train[k].clone()).collect();
            let batch = MnistBatcher.batch(items, device);
            let t = Instant::now();
            let loss = match &natgrad {
                Some(ng) => {
                    let (images, targets) = (batch.images.clone(), batch.targets.clone());
                    let out =
                        ng.train_step(&model, batch.images, batch.targets, |x| model.forward(x));
                    let loss = out.loss.clone();
                    model = ng.step(&mut optim, lr, model, out.grads);
                    stopped = too_many_skips(ng, spec);
                    if ng.adaptation_due() {
                        // Adaptive damping: the updated model's loss on the same batch.
                        let after = CrossEntropyLossConfig::new()
                            .init(&images.device())
                            .forward(model.forward(images), targets);
                        let (before, after) = (loss.clone(), after.into_scalar::<f64>());
                        ng.adapt_damping(before.into_scalar::<f64>(), after);
                    }
                    loss
                }
                None => {
                    let logits = model.forward(batch.images);
                    let loss = CrossEntropyLossConfig::new()
                        .init(&logits.device())
                        .forward(logits, batch.targets);
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step(lr, model, grads);
                    loss.inner()
                }
            };
            let loss = loss.into_scalar::<f64>();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            seconds += ms / 1e3;
            losses.push(loss);
            step_ms.push(ms);
            if let Some(a) = &average {
                a.update(&model);
            }
            if (i + 1) % every == 0 || i + 1 == steps_per_epoch {
                let acc = match &average {
                    Some(a) => accuracy(&a.apply(model.clone()), &data.test, device),
                    None => accuracy(&model, &data.test, device),
                };
                evals.push((seconds, losses.len(), acc));
                if options.verbose {
                    eprintln!(
                        "{}: epoch {} step {}/{steps_per_epoch}: test accuracy {:.2}% after {seconds:.1} s",
                        spec.name(),
                        epoch + 1,
                        i + 1,
                        100.0 * acc
                    );
                }
            }
            if stopped {
                break;
            }
        }
        let epoch_losses = &losses[start..];
        epochs.push(EpochResult {
            epoch: epoch + 1,
            // A stopped run has no accuracy: its last finite weights are not what it trained to.
            test_accuracy: match stopped {
                true => f64::NAN,
                false => evals.last().map_or(f64::NAN, |e| e.2),
            },
            test_loss: f64::NAN,
            train_loss: epoch_losses.iter().sum::<f64>() / epoch_losses.len().max(1) as f64,
        });
        if stopped {
            break;
        }
    }
    RunResult {
        spec: spec.clone(),
        epochs,
        step_losses: losses,
        median_step_ms: median(&step_ms),
        skipped_steps: natgrad.as_ref().map_or(0, |ng| ng.stats().skipped),
        reused_steps: natgrad.as_ref().map_or(0, |ng| ng.stats().reused),
        final_damping: natgrad.as_ref().map(|ng| ng.damping()),
        evals,
        average: options.average,
    }
}

/// Whether `ng` has skipped as many steps in a row as `spec`'s configuration allows
/// (`max_consecutive_skips`); says so, with the reason, when it has.
fn too_many_skips(ng: &burn_natgrad::NaturalGradient, spec: &OptimizerSpec) -> bool {
    let OptimizerSpec::Ngd { config, .. } = spec else {
        return false;
    };
    let stats = ng.stats();
    let stop = config
        .max_consecutive_skips
        .is_some_and(|limit| stats.consecutive_skipped >= limit as u64);
    if stop {
        eprintln!(
            "{}: stopped after {} steps: {} in a row were skipped (the last: {}); its accuracy is \
             reported as NaN",
            spec.name(),
            stats.steps + stats.skipped,
            stats.consecutive_skipped,
            stats.last_skip_reason.unwrap_or_default()
        );
    }
    stop
}
