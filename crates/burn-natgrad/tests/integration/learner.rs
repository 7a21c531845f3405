//! A tiny MLP trains through Burn's `SupervisedTraining`/`Learner` with the natural gradient
//! (the `TrainStep::optimize` override), and ends with a lower validation loss than SGD with the
//! same learning-rate budget, on every backend; and resuming from the Learner's checkpoint
//! equals training straight.

use std::sync::{Arc, Mutex};

use crate::common::*;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::Linear;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use burn_natgrad::{
    Capture, Curvature, FisherKind, FullConfig, KfacConfig, NaturalGradient, NaturalGradientConfig,
};

#[derive(Module, Debug)]
struct Net {
    fc1: Linear,
    fc2: Linear,
    /// The natural-gradient solver, or `None` for plain SGD.
    #[module(skip)]
    natgrad: Option<NaturalGradient>,
    /// With adaptive damping: the last step's batch and loss, for the loss after the step.
    #[module(skip)]
    last: Arc<Mutex<Option<(Batch, f64)>>>,
}

impl Net {
    fn forward_with(&self, x: Tensor<2>, capture: &mut Capture) -> Tensor<2> {
        let h = relu(capture.linear(&self.fc1, x));
        capture.linear(&self.fc2, h)
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &mut Capture::disabled())
    }
}

#[derive(Clone, Debug)]
struct Batch {
    x: Tensor<2>,
    y: Tensor<1, Int>,
}

#[derive(Clone, Debug)]
struct Item {
    x: Vec<f32>,
    y: i64,
}

#[derive(Clone)]
struct ItemBatcher;

impl Batcher<Item, Batch> for ItemBatcher {
    fn batch(&self, items: Vec<Item>, device: &Device) -> Batch {
        let n = items.len();
        let d = items[0].x.len();
        let x: Vec<f32> = items.iter().flat_map(|i| i.x.clone()).collect();
        let y: Vec<i64> = items.iter().map(|i| i.y).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, d]), device),
            y: Tensor::from_data(TensorData::new(y, [n]), device),
        }
    }
}

impl TrainStep for Net {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        match &self.natgrad {
            Some(ng) => {
                let kept = batch.clone();
                let (mut capture, x) = ng.capture(batch.x);
                let logits = self.forward_with(x, &mut capture);
                let out = ng.classification(self, capture, logits, batch.y.clone());
                if ng.config().adaptive_damping.is_some() {
                    let loss = out.loss.clone().into_scalar::<f64>();
                    *self.last.lock().unwrap() = Some((kept, loss));
                }
                TrainOutput {
                    grads: out.grads,
                    item: ClassificationOutput::new(out.loss, out.logits, batch.y),
                }
            }
            None => {
                let logits = self.forward(batch.x);
                let loss = CrossEntropyLossConfig::new()
                    .init(&logits.device())
                    .forward(logits.clone(), batch.y.clone());
                TrainOutput::new(
                    self,
                    loss.backward(),
                    ClassificationOutput::new(loss, logits, batch.y),
                )
            }
        }
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        match self.natgrad.clone() {
            Some(ng) => {
                let model = ng.step(optim, lr, self, grads);
                // Adaptive damping: the updated model's loss on the same batch.
                let last = model.last.lock().unwrap().take();
                if let (true, Some((batch, before))) = (ng.adaptation_due(), last) {
                    let logits = model.forward(batch.x);
                    let after = CrossEntropyLossConfig::new()
                        .init(&logits.device())
                        .forward(logits, batch.y)
                        .into_scalar::<f64>();
                    ng.adapt_damping(before, after);
                }
                model
            }
            None => optim.step(lr, self, grads),
        }
    }
}

impl InferenceStep for Net {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> ClassificationOutput {
        let logits = self.forward(batch.x);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.y.clone());
        ClassificationOutput::new(loss, logits, batch.y)
    }
}

/// Labels from a random teacher MLP: a non-linear, learnable 4-class problem.
fn teacher_items(count: usize, seed: u64) -> Vec<Item> {
    let (d, h, c) = (16, 32, 4);
    let w1 = values(1, d * h);
    let w2 = values(2, h * c);
    let xs = values(seed, count * d);
    (0..count)
        .map(|i| {
            let x = xs[i * d..(i + 1) * d].to_vec();
            let hid: Vec<f32> = (0..h)
                .map(|j| (0..d).map(|a| x[a] * w1[a * h + j]).sum::<f32>().max(0.0))
                .collect();
            let logits: Vec<f32> = (0..c)
                .map(|o| (0..h).map(|j| hid[j] * w2[j * c + o]).sum())
                .collect();
            let y = (0..c)
                .max_by(|a, b| logits[*a].total_cmp(&logits[*b]))
                .unwrap() as i64;
            Item { x, y }
        })
        .collect()
}

fn train(device: &Device, natgrad: Option<NaturalGradient>, lr: f64, dir: &std::path::Path) -> f64 {
    let model = train_net(device, natgrad, lr, dir, 2, None, true);
    let valid_items = teacher_items(512, 200);
    let batch = ItemBatcher.batch(valid_items, &device.clone().inner());
    let logits = model.forward(batch.x);
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, batch.y);
    loss.into_scalar::<f64>()
}

/// Trains a fresh `Net` for `epochs` (from the checkpoint of epoch `resume` in `dir` if given),
/// with checkpoints in `dir`; the data in a shuffled order when `shuffle`.
fn train_net(
    device: &Device,
    natgrad: Option<NaturalGradient>,
    lr: f64,
    dir: &std::path::Path,
    epochs: usize,
    resume: Option<usize>,
    shuffle: bool,
) -> Net {
    let model = Net {
        fc1: Mlp::new(&[16, 32], true, 40, device).layers.remove(0),
        fc2: Mlp::new(&[32, 4], true, 41, device).layers.remove(0),
        natgrad: natgrad.clone(),
        last: Arc::default(),
    };
    let optim = match &natgrad {
        Some(ng) => ng.module_optimizer(),
        None => SgdConfig::new().init(),
    };
    let builder = DataLoaderBuilder::new(ItemBatcher).batch_size(64);
    let builder = if shuffle { builder.shuffle(5) } else { builder };
    let train: Arc<dyn DataLoader<Batch>> = builder
        .set_device(device.clone())
        .build(InMemDataset::new(teacher_items(1024, 100)));
    let valid: Arc<dyn DataLoader<Batch>> = DataLoaderBuilder::new(ItemBatcher)
        .batch_size(128)
        .set_device(device.clone())
        .build(InMemDataset::new(teacher_items(512, 200)));
    let mut training = SupervisedTraining::new(dir, train, valid)
        .with_default_checkpointers()
        .num_epochs(epochs);
    if let Some(epoch) = resume {
        training = training.checkpoint(epoch);
    }
    training.launch(Learner::new(model, optim, lr)).model
}

/// Two epochs straight equal one epoch, a stop, and a resumed second epoch from the Learner's
/// own checkpoint (model and optimizer records, so the momentum too), for the empirical and the
/// sampled Fisher (whose labels are drawn from the predictions, not the global generator), the
/// full Fisher and KFAC: factors every step, and every 5 steps (the resumed run's first step
/// reuses the recorded factors, as the straight run's seventeenth does) with dense and low-rank
/// inverses; and the adaptive damping every 5 steps (the resumed run adapts after the
/// straight run's twentieth step, not after its own fifth). (Without shuffling: Burn's data loader advances its shuffling generator
/// once per epoch in the process, so a resumed run would see epoch 1's order again.)
#[test]
fn resuming_from_a_checkpoint_equals_training_straight() {
    // KFAC with inverses every 3 factor updates: the resumed run must also continue the moving
    // averages and reuse the recorded inverses until their next update.
    let kfac = |period: usize, rank| {
        Curvature::Kfac(
            KfacConfig::new()
                .with_factor_decay(0.8)
                .with_factor_update_steps(period)
                .with_inv_update_steps(3 * period)
                .with_inverse(inverse(rank)),
        )
    };
    let gram = Curvature::Full(FullConfig::new());
    // (fisher, curvature; the last two with adaptive damping every 5 steps)
    let empirical = FisherKind::Empirical;
    let sampled = FisherKind::Sampled { samples: 1 };
    let kinds = [
        (empirical, gram),
        (sampled, gram),
        (empirical, kfac(1, None)),
        (sampled, kfac(1, None)),
        (empirical, kfac(5, None)),
        (sampled, kfac(5, None)),
        (empirical, kfac(5, Some(2))),
        (empirical, gram),
        (empirical, kfac(1, None)),
    ];
    for (k, ((name, device), (fisher, curvature))) in backends()
        .into_iter()
        .flat_map(|b| kinds.map(|k| (b.clone(), k)))
        .enumerate()
    {
        let adaptive = k % kinds.len() >= 7;
        let what = format!("{name} {fisher:?} {curvature:?} {adaptive}");
        let dir =
            std::env::temp_dir().join(format!("natgrad-resume-{name}-{k}-{}", std::process::id()));
        let ng = || {
            NaturalGradientConfig::new()
                .with_fisher(fisher)
                .with_curvature(curvature)
                .with_adaptive_damping(
                    adaptive.then(|| burn_natgrad::AdaptiveDampingConfig::new().with_period(5)),
                )
                .with_damping(0.1)
                .with_momentum(Some(
                    burn::optim::momentum::MomentumConfig::new().with_dampening(0.0),
                ))
                .build()
        };
        let runs = [ng(), ng(), ng()];
        let run = |i: usize, folder: &str, epochs: usize, resume: Option<usize>| {
            let ng = Some(runs[i].clone());
            train_net(&device, ng, 0.1, &dir.join(folder), epochs, resume, false)
        };
        let straight = run(0, "straight", 2, None);
        let _ = run(1, "stopped", 1, None);
        let resumed = run(2, "stopped", 2, Some(1));
        // 16 steps an epoch: the resumed run trained the second epoch only.
        let steps: Vec<u64> = runs.iter().map(|ng| ng.stats().steps).collect();
        assert_eq!(steps, [32, 16, 16], "{what}");
        // The same steps reused the factors: the resumed run's share of the straight run's.
        let reused: Vec<u64> = runs.iter().map(|ng| ng.stats().reused).collect();
        assert_eq!(
            reused[0],
            reused[1] + reused[2],
            "{what}: reused {reused:?}"
        );
        // The adaptive damping moved, and to the same λ.
        if adaptive {
            let damping: Vec<f64> = runs.iter().map(|ng| ng.damping()).collect();
            assert_ne!(damping[1], 0.1, "{what}: the damping never moved");
            assert!(
                (damping[0] - damping[2]).abs() <= 1e-12,
                "{what}: {damping:?}"
            );
        }
        for (a, b) in [(&straight.fc1, &resumed.fc1), (&straight.fc2, &resumed.fc2)] {
            let err = rel_err(&host(b.weight.val()), &host(a.weight.val()));
            assert!(err <= 1e-5, "{what}: resumed weights differ by {err:e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn natural_gradient_beats_sgd_through_the_learner() {
    for (name, device) in backends() {
        let dir =
            std::env::temp_dir().join(format!("natgrad-learner-{name}-{}", std::process::id()));
        let lr = 0.1;
        let sgd = train(&device, None, lr, &dir.join("sgd"));
        let ng = NaturalGradientConfig::new().with_damping(0.1).build();
        let ngd = train(&device, Some(ng.clone()), lr, &dir.join("ngd"));
        let stats = ng.stats();
        println!("{name}: valid loss SGD {sgd:.4}, natural gradient {ngd:.4}; {stats:?}");
        assert_eq!(
            stats.steps, 32,
            "{name}: every step goes through the natural gradient"
        );
        assert_eq!(stats.skipped, 0);
        assert!(
            ngd < sgd,
            "{name}: natural gradient {ngd:.4} is not below SGD {sgd:.4}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
