//! Burn's [`Embedding`](burn::nn::Embedding), [`LayerNorm`](burn::nn::LayerNorm) and
//! [`BatchNorm`](burn::nn::BatchNorm), recording into the active capture.

use burn::tensor::{Int, Tensor};

use super::delegate_module;
use crate::capture::with_active;

/// Burn's [`Embedding`](burn::nn::Embedding) (same parameter, name and record) whose forward
/// pass records into the active [`Capture`](crate::Capture), through
/// [`Capture::embedding`](crate::Capture::embedding), inside
/// [`Capture::scope`](crate::Capture::scope).
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The Burn layer.
    pub inner: burn::nn::Embedding,
}

delegate_module!(Embedding, burn::nn::Embedding);

impl Embedding {
    /// `inner.forward(ids)`, recorded into the active capture if there is one.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        with_active(|capture| match capture {
            Some(capture) => capture.embedding(&self.inner, ids),
            None => self.inner.forward(ids),
        })
    }
}

/// Burn's [`LayerNorm`](burn::nn::LayerNorm) (same parameters, names and record) whose forward
/// pass records into the active [`Capture`](crate::Capture), through
/// [`Capture::layer_norm`](crate::Capture::layer_norm), inside
/// [`Capture::scope`](crate::Capture::scope).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// The Burn layer.
    pub inner: burn::nn::LayerNorm,
}

delegate_module!(LayerNorm, burn::nn::LayerNorm);

impl LayerNorm {
    /// `inner.forward(input)`, recorded into the active capture if there is one.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        with_active(|capture| match capture {
            Some(capture) => capture.layer_norm(&self.inner, input),
            None => self.inner.forward(input),
        })
    }
}

/// Burn's [`BatchNorm`](burn::nn::BatchNorm) (same parameters, running statistics, names and
/// record) whose forward pass records into the active [`Capture`](crate::Capture), through
/// [`Capture::batch_norm`](crate::Capture::batch_norm), inside
/// [`Capture::scope`](crate::Capture::scope).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// The Burn layer.
    pub inner: burn::nn::BatchNorm,
}

delegate_module!(BatchNorm, burn::nn::BatchNorm);

impl BatchNorm {
    /// `inner.forward(input)`, recorded into the active capture if there is one.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        with_active(|capture| match capture {
            Some(capture) => capture.batch_norm(&self.inner, input),
            None => self.inner.forward(input),
        })
    }
}
