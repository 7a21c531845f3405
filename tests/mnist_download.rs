//! With an empty burn-dataset cache and no network, the default data source fails with an error
//! that says to use `--data-dir` (its own test binary: it points XDG_CACHE_HOME elsewhere).

use natgrad_mnist::{DataError, MnistData};

#[test]
fn failed_download_says_to_use_data_dir() {
    let cache = std::env::temp_dir().join(format!("natgrad-empty-cache-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    std::env::set_var("XDG_CACHE_HOME", &cache);
    match MnistData::from_burn_dataset() {
        Err(err @ DataError::Download { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains("--data-dir")
                    && msg.contains("MNIST_DIR")
                    && msg.contains("burn-dataset"),
                "{msg}"
            );
        }
        Err(other) => panic!("expected a download error, got: {other}"),
        Ok(data) => eprintln!(
            "this machine has network access: MNIST downloaded ({} train images); nothing to check",
            data.train.len()
        ),
    }
    let _ = std::fs::remove_dir_all(&cache);
}
