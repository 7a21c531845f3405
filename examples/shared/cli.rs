//! Command-line pieces shared by the MNIST examples (`mnist`, `mnist_cnn`): the backend choice
//! and the data source.

use std::path::PathBuf;

use burn::tensor::Device;
use clap::ValueEnum;
use natgrad_mnist::MnistData;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    #[cfg(feature = "ndarray")]
    Ndarray,
    #[cfg(feature = "flex")]
    Flex,
    #[cfg(feature = "wgpu")]
    Wgpu,
}

/// SGD's learning-rate grid for `--sweep`, fixed in advance.
pub const SGD_GRID: [f64; 5] = [0.03, 0.1, 0.3, 0.5, 1.0];
/// Adam's learning-rate grid for `--sweep`, fixed in advance.
pub const ADAM_GRID: [f64; 3] = [3e-4, 1e-3, 3e-3];

/// The options every MNIST example has.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Backend (those compiled in, by cargo feature).
    #[arg(long, value_enum, default_value_t = default_backend())]
    pub backend: Backend,
    /// Folder with the four MNIST IDX files, gzipped or raw; default: burn-dataset's
    /// MnistDataset (downloads once into its cache).
    #[arg(long, env = "MNIST_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Train on the first N training examples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

fn default_backend() -> Backend {
    #[cfg(feature = "ndarray")]
    return Backend::Ndarray;
    #[allow(unreachable_code)]
    #[cfg(feature = "flex")]
    return Backend::Flex;
    #[allow(unreachable_code)]
    #[cfg(feature = "wgpu")]
    return Backend::Wgpu;
}

/// The autodiff device of `backend`.
pub fn device(backend: Backend) -> Device {
    match backend {
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        Backend::Ndarray => Device::ndarray(),
        #[cfg(feature = "flex")]
        Backend::Flex => Device::flex(),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
    }
    .autodiff()
}

/// The data from `--data-dir` (or burn-dataset's cache), the training split cut to `--limit`;
/// the error as printed, for exit code 2.
pub fn load_data(common: &Common) -> Result<MnistData, String> {
    let data = match &common.data_dir {
        Some(dir) => MnistData::from_dir(dir),
        None => MnistData::from_burn_dataset(),
    }
    .map_err(|e| format!("error: {e}"))?
    .limit_train(common.limit);
    if data.train.is_empty() {
        return Err("error: no training examples (--limit 0?)".into());
    }
    Ok(data)
}
