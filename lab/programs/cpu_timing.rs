//! What the per-phase timing examples (`step_breakdown`, `kfac_breakdown`) share: the CPU
//! backend named on their command line, and milliseconds since an instant.

use std::time::Instant;

use burn::tensor::Device;

/// The autodiff device of the CPU backend `backend` (ndarray or flex, those compiled in);
/// exits with status 2 on any other name.
pub fn device(backend: &str) -> Device {
    match backend {
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Device::ndarray().autodiff(),
        #[cfg(feature = "flex")]
        "flex" => Device::flex().autodiff(),
        other => {
            eprintln!("error: backend `{other}` is not compiled in (ndarray, flex)");
            std::process::exit(2);
        }
    }
}

/// Milliseconds since `start`.
pub fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}
