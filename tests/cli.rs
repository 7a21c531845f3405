//! Every bad value of the MNIST examples' command lines gets one clear message and exit code 2
//! before anything is loaded or trained, never a backtrace. Runs the example binaries that
//! `cargo test` builds beside this test.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>`, next to this test's `deps/` folder.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn refused(name: &str, args: &[&str], expect: &str) {
    let out = Command::new(example(name))
        .args(args)
        .env_remove("MNIST_DIR")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", example(name).display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
    assert!(
        stderr.contains(expect) && !stderr.contains("panicked"),
        "{name} {args:?}: expected `{expect}` in: {stderr}"
    );
}

#[test]
fn bad_values_of_the_mlp_example_are_refused() {
    let out = std::env::temp_dir().join(format!("natgrad-cli-{}", std::process::id()));
    let out = out.to_str().unwrap();
    for (args, expect) in [
        (vec!["--batch-size", "0"], "--batch-size must be at least 1"),
        (vec!["--hidden", "0"], "--hidden must be at least 1"),
        (
            vec!["--hidden", "99999999999"],
            "--hidden must be at most 1048576",
        ),
        (vec!["--epochs", "0"], "--epochs must be at least 1"),
        (vec!["--limit", "0"], "--limit must be at least 1"),
        (vec!["--samples", "0"], "--samples must be at least 1"),
        (vec!["--seeds", "0"], "--seeds must be at least 1"),
        (
            vec!["--curvature-batch", "0"],
            "--curvature-batch must be at least 1",
        ),
        (
            vec!["--lr", "nan"],
            "--lr must be a finite number > 0, got NaN",
        ),
        (vec!["--lr", "-1"], "--lr must be a finite number > 0"),
        (
            vec!["--sgd-lr", "0"],
            "--sgd-lr must be a finite number > 0",
        ),
        (
            vec!["--adam-lr", "inf"],
            "--adam-lr must be a finite number > 0",
        ),
        (
            vec!["--damping", "0"],
            "--damping must be a finite number > 0",
        ),
        (vec!["--momentum", "1.5"], "--momentum must lie in [0, 1)"),
        (
            vec!["--kl-max", "-1"],
            "--kl-max must be a finite number >= 0",
        ),
        (
            vec!["--batch-size", "x"],
            "invalid value 'x' for '--batch-size",
        ),
        (
            vec!["--curvature", "kfac", "--kfac-inverse-period", "0"],
            "--kfac-inverse-period must be at least 1",
        ),
        (
            vec!["--curvature", "kfac", "--kfac-decay", "1"],
            "--kfac-decay must lie in [0, 1)",
        ),
        (
            vec!["--curvature", "kfac", "--solver", "cg-sample"],
            "--solver does not apply to KFAC",
        ),
        (
            vec!["--curvature", "kfac", "--kfac-rank", "0"],
            "--kfac-rank must be at least 1",
        ),
        (
            vec!["--curvature", "full", "--kfac-rank", "16"],
            "--kfac-rank applies only to --curvature kfac",
        ),
        (
            vec!["--curvature", "full", "--kfac-factor-period", "5"],
            "--kfac-factor-period applies only to --curvature kfac",
        ),
        (vec!["--average", "1"], "--average must lie in [0, 1)"),
        (vec!["--samples", "0"], "--samples must be at least 1"),
    ] {
        let mut all = vec!["--out", out];
        all.extend(args);
        refused("mnist", &all, expect);
    }
    // Two problems at once: both named.
    refused(
        "mnist",
        &["--out", out, "--hidden", "0", "--lr", "nan"],
        "--hidden",
    );
    refused(
        "mnist",
        &["--out", out, "--hidden", "0", "--lr", "nan"],
        "--lr",
    );
    refused(
        "mnist",
        &["--out", "/proc/natgrad-out"],
        "--out /proc/natgrad-out: cannot write",
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn bad_values_of_the_cnn_example_are_refused() {
    let out = std::env::temp_dir().join(format!("natgrad-cli-cnn-{}", std::process::id()));
    let out = out.to_str().unwrap();
    for (args, expect) in [
        (vec!["--batch-size", "0"], "--batch-size must be at least 1"),
        (
            vec!["--evals-per-epoch", "0"],
            "--evals-per-epoch must be at least 1",
        ),
        (vec!["--dropout", "1"], "--dropout must lie in [0, 1)"),
        (vec!["--lr", "nan"], "--lr must be a finite number > 0"),
        (vec!["--momentum", "-0.1"], "--momentum must lie in [0, 1)"),
        (vec!["--limit", "0"], "--limit must be at least 1"),
        (
            vec!["--kfac-decay", "-0.5"],
            "--kfac-decay must lie in [0, 1)",
        ),
        (vec!["--average", "-0.1"], "--average must lie in [0, 1)"),
        (
            vec!["--fisher", "sampled", "--samples", "0"],
            "--samples must be at least 1",
        ),
    ] {
        let mut all = vec!["--out", out];
        all.extend(args);
        refused("mnist_cnn", &all, expect);
    }
    let _ = std::fs::remove_dir_all(out);
}

/// The curvature each example picks when `--curvature` is not given: KFAC for the MLP's sampled
/// Fisher and for the CNN, the coupled Fisher (Gram) for the MLP's empirical Fisher; an explicit
/// `--curvature` wins. One short run each on the committed fixture.
#[test]
fn each_example_picks_its_default_curvature() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mnist");
    let out = std::env::temp_dir().join(format!("natgrad-cli-curv-{}", std::process::id()));
    let out = out.to_str().unwrap();
    let common = ["--optimizer", "ngd", "--epochs", "1", "--limit", "64"];
    let mut cases = vec![
        ("mnist", vec!["--fisher", "sampled"], "== kfac-sampled"),
        ("mnist", vec![], "== ngd-empirical"),
    ];
    // The CNN on flex only (ndarray's debug-build convolution takes half a minute a step).
    if cfg!(feature = "flex") {
        let cnn = ["--backend", "flex", "--hidden", "8"];
        cases.push(("mnist_cnn", cnn.to_vec(), "== kfac-empirical"));
        let full = [&cnn[..], &["--curvature", "full"]].concat();
        cases.push(("mnist_cnn", full, "== ngd-empirical"));
    }
    for (name, args, expect) in cases {
        let run = Command::new(example(name))
            .args(common)
            .args(&args)
            .args(["--data-dir", fixture, "--out", out])
            .env_remove("MNIST_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success() && stdout.contains(expect),
            "{name} {args:?}: expected `{expect}` in: {stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(out);
}
