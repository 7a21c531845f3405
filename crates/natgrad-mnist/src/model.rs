//! The blog post's model, an MLP 784-H(ReLU)-10, wired into Burn's Learner for the natural
//! gradient (through `TrainStep::optimize`) and for Burn's own optimizers.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataset::vision::MnistItem;
use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn_natgrad::{Capture, NaturalGradient};

use crate::average::WeightAverage;
use crate::data::{MnistBatch, PIXELS};

/// Per-step train loss and wall time, and per-epoch test accuracy, shared by the model's clones.
#[derive(Debug, Default)]
pub struct Record {
    /// Train loss of every step.
    pub losses: Vec<f64>,
    /// Wall time of every step (forward, backward, optimizer), in milliseconds.
    pub step_ms: Vec<f64>,
    /// Correct and total test predictions, and the summed test cross-entropy, per epoch.
    pub test: Vec<(usize, usize, f64)>,
    /// Test evaluations during training, `(train seconds, step, accuracy)` (see
    /// [`Evaluator`]).
    pub evals: Vec<(f64, usize, f64)>,
    started: Option<Instant>,
    /// With adaptive damping: the last step's batch and loss, for the loss after it.
    pending: Option<(Tensor<2>, Tensor<1, Int>, f64)>,
}

/// Evaluates the test accuracy during training every `every` steps and at each epoch's end
/// (the Learner's validation runs once per epoch), against the training seconds so far, for
/// time-to-accuracy; not timed as part of the steps.
#[derive(Debug, Clone)]
pub struct Evaluator {
    test: Arc<Vec<MnistItem>>,
    every: usize,
}

impl Evaluator {
    /// Evaluates on `test` every `every` steps.
    pub fn new(test: Vec<MnistItem>, every: usize) -> Self {
        Self {
            test: Arc::new(test),
            every: every.max(1),
        }
    }
}

/// A shared handle on a [`Record`].
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Record>>,
    steps_per_epoch: usize,
}

impl Recorder {
    /// A recorder for a run of `steps_per_epoch` training steps per epoch.
    pub fn new(steps_per_epoch: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Record::default())),
            steps_per_epoch: steps_per_epoch.max(1),
        }
    }

    /// Runs `f` on the record.
    pub fn with<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        f(&mut self.inner.lock().expect("recorder lock"))
    }

    fn start_step(&self) {
        self.with(|r| r.started = Some(Instant::now()));
    }

    fn end_step(&self) {
        self.with(|r| {
            if let Some(t) = r.started.take() {
                r.step_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        });
    }

    fn add_test(&self, correct: usize, total: usize, loss_sum: f64) {
        self.with(|r| {
            let epoch = r.losses.len().div_ceil(self.steps_per_epoch).max(1) - 1;
            if r.test.len() <= epoch {
                r.test.resize(epoch + 1, (0, 0, 0.0));
            }
            r.test[epoch].0 += correct;
            r.test[epoch].1 += total;
            r.test[epoch].2 += loss_sum;
        });
    }
}

/// MLP 784-H(ReLU)-10 whose Linear layers go through a [`Capture`].
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layer.
    pub fc1: Linear,
    /// Output layer.
    pub fc2: Linear,
    /// The natural-gradient solver; `None` trains with the Learner's optimizer as is.
    #[module(skip)]
    pub natgrad: Option<NaturalGradient>,
    /// Where steps are recorded.
    #[module(skip)]
    pub recorder: Option<Recorder>,
    /// Test evaluations during training, recorded into the recorder.
    #[module(skip)]
    pub evaluator: Option<Evaluator>,
    /// A moving average of the weights, updated after every step and evaluated instead of the
    /// last iterate.
    #[module(skip)]
    pub average: Option<WeightAverage>,
}

impl Mlp {
    /// Burn's default initialisation, seeded on `device`.
    pub fn new(hidden: usize, seed: u64, device: &Device) -> Self {
        device.seed(seed);
        Self {
            fc1: LinearConfig::new(PIXELS, hidden).init(device),
            fc2: LinearConfig::new(hidden, 10).init(device),
            natgrad: None,
            recorder: None,
            average: None,
            evaluator: None,
        }
    }

    /// With an [`Evaluator`] and a [`Recorder`]: the test accuracy of the model (or of its
    /// weight average) when an evaluation is due after the step just recorded.
    fn evaluate(&self) {
        let (Some(r), Some(e)) = (&self.recorder, &self.evaluator) else {
            return;
        };
        let step = r.with(|rec| rec.losses.len());
        // The step within its epoch: due every `every` steps and at the epoch's end.
        let within = (step.max(1) - 1) % r.steps_per_epoch + 1;
        if step == 0 || (!within.is_multiple_of(e.every) && within != r.steps_per_epoch) {
            return;
        }
        // Summed only when due: not on every step.
        let seconds = r.with(|rec| rec.step_ms.iter().sum::<f64>() / 1e3);
        let model = match &self.average {
            Some(a) => a.apply(self.valid()),
            None => self.valid(),
        };
        let device = self.fc1.weight.val().device();
        let accuracy = crate::eval::accuracy(&e.test, &device, |x| model.forward(x));
        r.with(|rec| rec.evals.push((seconds, step, accuracy)));
    }

    /// Logits, with each Linear layer routed through `capture`.
    pub fn forward_with(&self, images: Tensor<2>, capture: &mut Capture) -> Tensor<2> {
        let h = relu(capture.linear(&self.fc1, images));
        capture.linear(&self.fc2, h)
    }

    /// Logits.
    pub fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        self.forward_with(images, &mut Capture::disabled())
    }
}

impl Mlp {
    /// Adaptive damping: when the last applied step asks for it, this (updated) model's loss on
    /// that step's batch, handed to the natural gradient with the loss before it. The
    /// Learner's `optimize` sees no batch, so the next `step` does it.
    fn adapt_damping(&self, ng: &NaturalGradient) {
        let pending = self
            .recorder
            .as_ref()
            .and_then(|r| r.with(|rec| rec.pending.take()));
        if let (true, Some((images, targets, before))) = (ng.adaptation_due(), pending) {
            let logits = self.forward(images);
            let after = CrossEntropyLossConfig::new()
                .init(&logits.device())
                .forward(logits, targets)
                .into_scalar::<f64>();
            ng.adapt_damping(before, after);
        }
    }
}

impl TrainStep for Mlp {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        if let Some(r) = &self.recorder {
            r.start_step();
        }
        let output = match &self.natgrad {
            // The natural gradient: capture, loss + factors in one backward.
            Some(ng) => {
                self.adapt_damping(ng);
                let keep = ng
                    .config()
                    .adaptive_damping
                    .is_some()
                    .then(|| (batch.images.clone(), batch.targets.clone()));
                let (mut capture, images) = ng.capture(batch.images);
                let logits = self.forward_with(images, &mut capture);
                let out = ng.classification(self, capture, logits, batch.targets.clone());
                if let (Some(r), Some((x, y))) = (&self.recorder, keep) {
                    let loss = out.loss.clone().into_scalar::<f64>();
                    r.with(|rec| rec.pending = Some((x, y, loss)));
                }
                TrainOutput {
                    grads: out.grads,
                    item: ClassificationOutput::new(out.loss, out.logits, batch.targets),
                }
            }
            None => {
                let logits = self.forward(batch.images);
                let loss = CrossEntropyLossConfig::new()
                    .init(&logits.device())
                    .forward(logits.clone(), batch.targets.clone());
                TrainOutput::new(
                    self,
                    loss.backward(),
                    ClassificationOutput::new(loss, logits, batch.targets),
                )
            }
        };
        if let Some(r) = &self.recorder {
            let loss = output.item.loss.clone().into_scalar::<f64>();
            r.with(|rec| rec.losses.push(loss));
        }
        output
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        let recorder = self.recorder.clone();
        let model = match self.natgrad.clone() {
            Some(ng) => ng.step(optim, lr, self, grads),
            None => optim.step(lr, self, grads),
        };
        if let Some(r) = recorder {
            r.end_step();
        }
        if let Some(a) = &model.average {
            a.update(&model);
        }
        model.evaluate();
        model
    }
}

impl InferenceStep for Mlp {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> ClassificationOutput {
        let logits = match &self.average {
            Some(a) => a.apply(self.clone()).forward(batch.images),
            None => self.forward(batch.images),
        };
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        if let Some(r) = &self.recorder {
            let n = batch.targets.dims()[0];
            let correct = logits
                .clone()
                .argmax(1)
                .reshape([n])
                .equal(batch.targets.clone())
                .int()
                .sum()
                .into_scalar::<i64>() as usize;
            let loss_sum = loss.clone().into_scalar::<f64>() * n as f64;
            r.add_test(correct, n, loss_sum);
        }
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}
