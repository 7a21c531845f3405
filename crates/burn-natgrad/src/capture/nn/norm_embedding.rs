//! Burn's [`Embedding`](burn::nn::Embedding) and normalisation layers
//! ([`LayerNorm`](burn::nn::LayerNorm), [`BatchNorm`](burn::nn::BatchNorm),
//! [`GroupNorm`](burn::nn::GroupNorm), [`RmsNorm`](burn::nn::RmsNorm)), recording into the
//! active capture.

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

/// A drop-in normalisation layer `$name` (Burn's `burn::nn::$name`, same parameters, running
/// statistics, names and record) whose `forward` records through `Capture::$rule`.
macro_rules! norm_drop_in {
    ($name:ident, $rule:ident) => {
        #[doc = concat!(
                    "Burn's [`", stringify!($name), "`](burn::nn::", stringify!($name), ") (same ",
                    "parameters, names and record) whose forward pass records into the active ",
                    "[`Capture`](crate::Capture), through [`Capture::", stringify!($rule),
                    "`](crate::Capture::", stringify!($rule), "), inside ",
                    "[`Capture::scope`](crate::Capture::scope)."
                )]
        #[derive(Clone, Debug)]
        pub struct $name {
            /// The Burn layer.
            pub inner: burn::nn::$name,
        }

        delegate_module!($name, burn::nn::$name);

        impl $name {
            /// `inner.forward(input)`, recorded into the active capture if there is one.
            pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
                with_active(|capture| match capture {
                    Some(capture) => capture.$rule(&self.inner, input),
                    None => self.inner.forward(input),
                })
            }
        }
    };
}

norm_drop_in!(LayerNorm, layer_norm);
norm_drop_in!(BatchNorm, batch_norm);
norm_drop_in!(GroupNorm, group_norm);
norm_drop_in!(RmsNorm, rms_norm);
