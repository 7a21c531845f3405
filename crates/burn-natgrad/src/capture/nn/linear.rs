//! Burn's [`Linear`](burn::nn::Linear), recording into the active capture.

use burn::tensor::Tensor;

use super::delegate_module;
use crate::capture::with_active;

/// Burn's [`Linear`](burn::nn::Linear) (same parameters, names and record) whose forward pass
/// records into the active [`Capture`](crate::Capture), through
/// [`Capture::linear`](crate::Capture::linear), inside [`Capture::scope`](crate::Capture::scope).
#[derive(Clone, Debug)]
pub struct Linear {
    /// The Burn layer.
    pub inner: burn::nn::Linear,
}

delegate_module!(Linear, burn::nn::Linear);

impl Linear {
    /// `inner.forward(input)`, recorded into the active capture if there is one.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        with_active(|capture| match capture {
            Some(capture) => capture.linear(&self.inner, input),
            None => self.inner.forward(input),
        })
    }
}
