//! Burn's [`Conv2d`](burn::nn::conv::Conv2d), recording into the active capture.

use burn::tensor::Tensor;

use super::delegate_module;
use crate::capture::with_active;

/// Burn's [`Conv2d`](burn::nn::conv::Conv2d) (same parameters, names and record) whose forward
/// pass records into the active [`Capture`](crate::Capture), through
/// [`Capture::conv2d`](crate::Capture::conv2d), inside [`Capture::scope`](crate::Capture::scope).
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The Burn layer.
    pub inner: burn::nn::conv::Conv2d,
}

delegate_module!(Conv2d, burn::nn::conv::Conv2d);

impl Conv2d {
    /// `inner.forward(input)`, recorded into the active capture if there is one.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        with_active(|capture| match capture {
            Some(capture) => capture.conv2d(&self.inner, input),
            None => self.inner.forward(input),
        })
    }
}
