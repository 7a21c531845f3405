//! Burn's guide CNN in burn-natgrad's drop-in layers on the committed fixture: it trains through
//! Burn's `SupervisedTraining`/`Learner` with the `TrainStep` glue README shows (which must be
//! the code of `crates/natgrad-mnist/src/cnn.rs`, word for word), and through the example's
//! hand-written loop, which writes its test evaluations against the wall-clock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::tensor::Device;
use burn::train::{Learner, SupervisedTraining};
use burn_natgrad::NaturalGradientConfig;
use natgrad_mnist::OptimizerSpec;
use natgrad_mnist::{train_cnn, GuideCnn, LoopOptions, MnistBatch, MnistBatcher, MnistData};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist")
}

/// flex when compiled in (its debug-build convolution is far faster than ndarray's).
fn device() -> Device {
    #[cfg(feature = "flex")]
    return Device::flex().autodiff();
    #[allow(unreachable_code)]
    #[allow(deprecated)]
    Device::ndarray().autodiff()
}

/// Serializes the tests that seed the backend's global random generator and then draw from it
/// (initial weights, dropout): this binary's tests run on parallel threads.
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn readme_shows_the_compiled_guide_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("crates/natgrad-mnist/src/cnn.rs")).unwrap();
    let start = source.find("// README:begin\n").unwrap() + "// README:begin\n".len();
    let end = source.find("// README:end").unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{}```", &source[start..end])),
        "README's guide-model snippet differs from crates/natgrad-mnist/src/cnn.rs"
    );
}

#[test]
fn the_guide_cnn_trains_through_the_learner() {
    let _rng = rng_lock();
    let device = device();
    let data = MnistData::from_dir(&fixture())
        .unwrap()
        .limit_train(Some(256));
    let model = GuideCnn::new(32, 0.1, true, 3, &device);
    // The BatchNorm is one of the drop-in layers: every parameter is preconditioned (the
    // default policy refuses any that is not).
    let (ng, optim) = NaturalGradientConfig::new().with_damping(5.0).init();
    let train: Arc<dyn DataLoader<MnistBatch>> = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(64)
        .set_device(device.clone())
        .build(InMemDataset::new(data.train.clone()));
    let valid: Arc<dyn DataLoader<MnistBatch>> = DataLoaderBuilder::new(MnistBatcher)
        .batch_size(250)
        .set_device(device.clone())
        .build(InMemDataset::new(data.test[..250].to_vec()));
    let dir = std::env::temp_dir().join(format!("natgrad-cnn-learner-{}", std::process::id()));
    let _ = SupervisedTraining::new(&dir, train, valid)
        .num_epochs(1)
        .launch(Learner::new(model, optim, 5.0));
    let stats = ng.stats();
    assert_eq!((stats.steps, stats.skipped), (4, 0), "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_hand_written_loop_evaluates_against_the_wall_clock() {
    let _rng = rng_lock();
    let data = MnistData::from_dir(&fixture())
        .unwrap()
        .limit_train(Some(512));
    let options = LoopOptions {
        epochs: 1,
        batch_size: 64,
        hidden: 32,
        dropout: 0.0,
        batch_norm: false,
        seed: 1,
        evals_per_epoch: 2,
        device: device(),
        verbose: false,
        average: None,
    };
    let spec = OptimizerSpec::Ngd {
        config: NaturalGradientConfig::new().with_damping(5.0),
        lr: 5.0,
    };
    let result = train_cnn(&spec, &data, &options);
    assert_eq!(result.step_losses.len(), 8);
    assert_eq!(result.evals.len(), 2, "{:?}", result.evals);
    assert!(result.evals[0].0 < result.evals[1].0 && result.evals[1].1 == 8);
    let (first, last) = (result.step_losses[0], *result.step_losses.last().unwrap());
    assert!(last < first, "loss {first} → {last}");
    println!("evaluations: {:?}", result.evals);
    // Eight steps from a seeded start: well above chance (10%).
    assert!(result.evals[1].2 > 0.2, "accuracy {:?}", result.evals);
    // Iterate averaging changes what is evaluated, not how it trains.
    let averaged = LoopOptions {
        average: Some(0.9),
        ..options
    };
    let a = train_cnn(&spec, &data, &averaged);
    assert_eq!(
        a.step_losses, result.step_losses,
        "the average moved the training"
    );
    let accuracies = |r: &natgrad_mnist::RunResult| r.evals.iter().map(|e| e.2).collect::<Vec<_>>();
    assert_ne!(
        accuracies(&a),
        accuracies(&result),
        "the averaged weights were not evaluated"
    );
}

/// A natural gradient whose steps are all skipped (a NaN in every image) stops after
/// `max_consecutive_skips` of them instead of ending the program: a sweep goes on with its other
/// configurations, and the stopped run reports no accuracy.
#[test]
fn the_loop_stops_a_run_that_only_skips() {
    let _rng = rng_lock();
    let mut data = MnistData::from_dir(&fixture())
        .unwrap()
        .limit_train(Some(768));
    for item in &mut data.train {
        item.image[0][0] = f32::NAN;
    }
    let options = LoopOptions {
        epochs: 2,
        batch_size: 64,
        hidden: 16,
        dropout: 0.0,
        batch_norm: false,
        seed: 1,
        evals_per_epoch: 1,
        device: device(),
        verbose: false,
        average: None,
    };
    let spec = OptimizerSpec::Ngd {
        config: NaturalGradientConfig::new().with_max_consecutive_skips(Some(3)),
        lr: 1.0,
    };
    let result = train_cnn(&spec, &data, &options);
    assert_eq!(result.step_losses.len(), 3, "it went on after 3 skips");
    assert_eq!(result.skipped_steps, 3);
    assert_eq!(result.epochs.len(), 1);
    assert!(result.epochs[0].test_accuracy.is_nan());
}
