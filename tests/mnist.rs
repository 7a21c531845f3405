//! The MNIST example's training code on the committed fixture (2,000 train / 500 test images):
//! a few dozen steps of every optimizer through the Learner; the loss falls and the CSV and the
//! picture are written. And every data error says which file and what is wrong.

use std::path::{Path, PathBuf};

use burn::optim::momentum::MomentumConfig;
use burn::tensor::Device;
use burn_natgrad::{
    AdaptiveDampingConfig, Curvature, FisherKind, KfacConfig, KfacInverse, NaturalGradientConfig,
};
use natgrad_mnist::{plot, results_csv, results_table, run, MnistData, OptimizerSpec, RunOptions};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mnist")
}

fn device() -> Device {
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    return Device::ndarray().autodiff();
    #[allow(unreachable_code)]
    Device::flex().autodiff()
}

/// One epoch of batch 64 on a hidden width of 32: quick on the fixture.
fn options() -> RunOptions {
    RunOptions {
        epochs: 1,
        batch_size: 64,
        hidden: 32,
        seed: 1,
        device: device(),
        progress_bar: false,
        quiet: true,
        average: None,
        evals_per_epoch: 0,
    }
}

#[test]
fn every_optimizer_trains_on_the_fixture_and_outputs_are_written() {
    let data = MnistData::from_dir(&fixture())
        .unwrap()
        .limit_train(Some(1920));
    assert_eq!((data.train.len(), data.test.len()), (1920, 500));
    let options = options();
    // The example's defaults for each Fisher.
    let specs = [
        OptimizerSpec::Ngd {
            config: NaturalGradientConfig::new()
                .with_damping(5.0)
                .with_momentum(Some(
                    MomentumConfig::new().with_momentum(0.7).with_dampening(0.0),
                )),
            lr: 5.0,
        },
        OptimizerSpec::Ngd {
            config: NaturalGradientConfig::new()
                .with_fisher(FisherKind::Sampled { samples: 1 })
                .with_damping(1.0)
                .with_kl_max(Some(0.01)),
            lr: 1.0,
        },
        OptimizerSpec::Sgd { lr: 0.5 },
        OptimizerSpec::Adam { lr: 1e-3 },
    ];
    let out = std::env::temp_dir().join(format!("natgrad-mnist-test-{}", std::process::id()));
    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let r = run(spec, &data, &options, &out.join(format!("run-{i}")));
        assert_eq!(r.step_losses.len(), 30, "{}: 1920 / 64 steps", spec.name());
        let first: f64 = r.step_losses[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = r.step_losses[25..].iter().sum::<f64>() / 5.0;
        assert!(
            last < 0.8 * first,
            "{}: loss did not fall ({first:.3} -> {last:.3})",
            spec.name()
        );
        let acc = r.epochs[0].test_accuracy;
        assert!(
            acc > 0.5 && acc <= 1.0,
            "{}: test accuracy {acc}",
            spec.name()
        );
        let test_loss = r.epochs[0].test_loss;
        assert!(
            test_loss.is_finite() && test_loss > 0.0 && test_loss < 2.3,
            "{}: test loss {test_loss}",
            spec.name()
        );
        assert!(r.median_step_ms > 0.0);
        assert_eq!(r.skipped_steps, 0);
        if matches!(spec, OptimizerSpec::Sgd { .. }) {
            // Iterate averaging changes what is evaluated, not how it trains.
            let averaged = RunOptions {
                average: Some(0.9),
                ..options.clone()
            };
            let a = run(
                spec,
                &data,
                &averaged,
                &out.join(format!("run-{i}-average")),
            );
            assert_eq!(
                a.step_losses, r.step_losses,
                "the average moved the training"
            );
            let (with, without) = (a.epochs[0].test_loss, r.epochs[0].test_loss);
            assert!(
                with.is_finite() && (with - without).abs() > 1e-6,
                "the averaged weights were not evaluated: test loss {with} vs {without}"
            );
            // Evaluations during training: every 15 of the 30 steps, the last equal to the
            // Learner's validation after the epoch, against growing training seconds.
            let evaluated = RunOptions {
                evals_per_epoch: 2,
                ..options.clone()
            };
            let e = run(spec, &data, &evaluated, &out.join(format!("run-{i}-evals")));
            let steps: Vec<usize> = e.evals.iter().map(|v| v.1).collect();
            assert_eq!(steps, [15, 30], "{:?}", e.evals);
            assert!(
                e.evals[0].0 > 0.0 && e.evals[0].0 < e.evals[1].0,
                "{:?}",
                e.evals
            );
            assert_eq!(e.evals[1].2, e.epochs[0].test_accuracy, "{:?}", e.evals);
            assert_eq!(
                e.step_losses, r.step_losses,
                "the evaluations moved the training"
            );
        }
        results.push(r);
    }
    let csv = results_csv(&results);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "optimizer,epoch,test_accuracy,train_loss,median_step_ms,step_ratio_vs_sgd"
    );
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(names, ["ngd-empirical", "ngd-sampled", "sgd", "adam"]);
    assert!(
        lines[3].ends_with(",1.000"),
        "SGD's ratio to itself: {}",
        lines[3]
    );
    let table = results_table(&results);
    assert!(table.contains("| ngd-empirical |") && table.contains("step / SGD step"));
    let svg = out.join("curves.svg");
    plot::draw(&results, "fixture", &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("ngd-sampled") && text.contains("<polyline"));
    // Checkpoints as Burn writes them.
    assert!(out.join("run-0/checkpoint").is_dir(), "Learner checkpoints");
    let _ = std::fs::remove_dir_all(&out);
}

/// A scratch copy of the fixture in which `edit` breaks something.
fn broken(name: &str, edit: impl FnOnce(&Path)) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("natgrad-mnist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    edit(&dir);
    let err = MnistData::from_dir(&dir).expect_err("broken data accepted");
    let msg = err.to_string();
    let _ = std::fs::remove_dir_all(&dir);
    (dir, msg)
}

fn gunzip(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Replaces `NAME.gz` by a raw `NAME` holding `edit(bytes)`.
fn rewrite_raw(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let gz = dir.join(format!("{name}.gz"));
    let mut bytes = gunzip(&gz);
    std::fs::remove_file(&gz).unwrap();
    edit(&mut bytes);
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// The mean loss of the last five steps is below 0.8× that of the first five, and no step was
/// skipped.
fn assert_trains(r: &natgrad_mnist::RunResult) {
    let first: f64 = r.step_losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = r.step_losses[25..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.8 * first,
        "loss did not fall ({first:.3} -> {last:.3})"
    );
    assert_eq!(r.skipped_steps, 0);
}

/// KFAC and the adaptive damping through the Learner on the fixture: the loss falls, no step
/// is skipped, and the damping moved (the `TrainStep` hands the loss after each due step over).
#[test]
fn kfac_with_adaptive_damping_trains_through_the_learner() {
    let data = MnistData::from_dir(&fixture())
        .unwrap()
        .limit_train(Some(1920));
    let options = options();
    let spec = OptimizerSpec::Ngd {
        config: NaturalGradientConfig::new()
            .with_curvature(Curvature::kfac())
            .with_damping(0.03)
            .with_adaptive_damping(Some(AdaptiveDampingConfig::new().with_period(2))),
        lr: 0.1,
    };
    let out = std::env::temp_dir().join(format!("natgrad-mnist-kfac-{}", std::process::id()));
    let r = run(&spec, &data, &options, &out);
    assert_eq!(spec.name(), "kfac-empirical");
    assert_trains(&r);
    let damping = r.final_damping.expect("a natural gradient");
    assert!(
        (damping - 0.03).abs() > 1e-6,
        "the damping never moved: {damping}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// KFAC with factors every third step through the Learner on the fixture, with dense inverses
/// and with low-rank ones (rank 16: the first layer's `784 × 784` input factor): after the
/// warm-up (decay 0.5: two updates), two steps of three reuse the factors (their plain gradients
/// travel through the Learner's `optimize` with their marker), the loss falls, and no step is
/// skipped.
#[test]
fn kfac_with_a_factor_period_trains_through_the_learner() {
    let data = MnistData::from_dir(&fixture())
        .unwrap()
        .limit_train(Some(1920));
    for rank in [None, Some(16)] {
        let spec = OptimizerSpec::Ngd {
            config: NaturalGradientConfig::new()
                .with_curvature(Curvature::Kfac(
                    KfacConfig::new()
                        .with_factor_decay(0.5)
                        .with_factor_update_steps(3)
                        .with_inv_update_steps(30)
                        .with_inverse(match rank {
                            Some(rank) => KfacInverse::LowRank { rank },
                            None => KfacInverse::Dense,
                        }),
                ))
                .with_damping(0.03),
            lr: 0.1,
        };
        let out = std::env::temp_dir().join(format!(
            "natgrad-mnist-tcov-{}-{rank:?}",
            std::process::id()
        ));
        let r = run(&spec, &data, &options(), &out);
        let steps = r.step_losses.len() as u64;
        // Steps 1 and 2 update (the warm-up); then 3 and 4 reuse, 5 updates, and so on.
        let after = steps - 2;
        assert_eq!(
            r.reused_steps,
            after - after / 3,
            "rank {rank:?}: two steps of three"
        );
        assert_trains(&r);
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn data_errors_name_the_file_and_the_problem() {
    let (dir, msg) = broken("missing", |d| {
        std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap()
    });
    assert!(
        msg.contains("t10k-labels-idx1-ubyte.gz") && msg.contains(&dir.display().to_string()),
        "{msg}"
    );

    let (_, msg) = broken("truncated", |d| {
        rewrite_raw(d, "train-images-idx3-ubyte", |b| b.truncate(b.len() - 100))
    });
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );

    let (_, msg) = broken("magic", |d| {
        rewrite_raw(d, "train-labels-idx1-ubyte", |b| b[3] = 0x03)
    });
    assert!(
        msg.contains("train-labels-idx1-ubyte") && msg.contains("magic number 0x00000803"),
        "{msg}"
    );

    let (_, msg) = broken("count", |d| {
        rewrite_raw(d, "t10k-labels-idx1-ubyte", |b| {
            b[4..8].copy_from_slice(&499u32.to_be_bytes());
            b.pop();
        })
    });
    assert!(
        msg.contains("500 images") && msg.contains("499 labels"),
        "{msg}"
    );

    let (_, msg) = broken("size", |d| {
        rewrite_raw(d, "t10k-images-idx3-ubyte", |b| {
            b[8..12].copy_from_slice(&14u32.to_be_bytes());
            b[12..16].copy_from_slice(&56u32.to_be_bytes());
        })
    });
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("14×56"),
        "{msg}"
    );

    let (_, msg) = broken("gzip", |d| {
        let p = d.join("train-images-idx3-ubyte.gz");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(
        msg.contains("train-images-idx3-ubyte.gz") && msg.contains("gzip"),
        "{msg}"
    );

    let (_, msg) = broken("label", |d| {
        rewrite_raw(d, "train-labels-idx1-ubyte", |b| b[20] = 12)
    });
    assert!(
        msg.contains("label 12") && msg.contains("train-labels-idx1-ubyte"),
        "{msg}"
    );

    // A raw (not gzipped) copy of the fixture reads the same.
    let dir = std::env::temp_dir().join(format!("natgrad-mnist-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let p = entry.unwrap().path();
        if let Some(name) = p.file_name().unwrap().to_str().unwrap().strip_suffix(".gz") {
            std::fs::write(dir.join(name), gunzip(&p)).unwrap();
        }
    }
    let raw = MnistData::from_dir(&dir).unwrap();
    let gz = MnistData::from_dir(&fixture()).unwrap();
    assert_eq!(raw.train.len(), gz.train.len());
    assert_eq!(raw.train[7].image, gz.train[7].image);
    assert_eq!(raw.test[3].label, gz.test[3].label);
    let _ = std::fs::remove_dir_all(&dir);
}
