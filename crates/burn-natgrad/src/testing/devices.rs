//! The CPU devices the unit tests run on (the integration tests have their own list, with wgpu).

use burn::tensor::Device;

/// One device per compiled CPU backend, without autodiff.
// One push per compiled CPU backend.
#[allow(clippy::vec_init_then_push)]
pub(crate) fn cpu_devices() -> Vec<Device> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    out.push(Device::ndarray());
    #[cfg(feature = "flex")]
    out.push(Device::flex());
    out
}
