//! Drop-in layers: Burn's own layers that record into the active [`Capture`](crate::Capture)
//! when the forward pass runs inside [`Capture::scope`](crate::Capture::scope) (which
//! [`NaturalGradient::train_step`] sets up), and are exactly Burn's layer otherwise.
//!
//! Each wraps the Burn layer (public field `inner`, also reached through `Deref`) and visits,
//! maps and records as that layer does, under the same names: a model switched to them keeps its
//! record, so existing checkpoints load. Build one from this module's config, which is Burn's
//! with an `init` that returns the drop-in (`LinearConfig::new(784, 128).init(&device)`), or
//! from Burn's layer (`burn::nn::LinearConfig::new(784, 128).init(&device).into()`): a model
//! switches by its `use` lines,
//!
//! ```text
//! use burn::nn::{Dropout, DropoutConfig, Relu};            // Burn's, without Linear, Conv2d
//! use burn_natgrad::nn::{Conv2d, Conv2dConfig, Linear, LinearConfig};
//! ```
//!
//! [`NaturalGradient::train_step`]: crate::NaturalGradient::train_step

mod configs;
mod conv2d;
mod linear;
mod norm_embedding;

pub use configs::{
    BatchNormConfig, Conv2dConfig, EmbeddingConfig, GroupNormConfig, LayerNormConfig, LinearConfig,
    RmsNormConfig,
};
pub use conv2d::Conv2d;
pub use linear::Linear;
pub use norm_embedding::{BatchNorm, Embedding, GroupNorm, LayerNorm, RmsNorm};

/// `From<$inner>` and `Deref<Target = $inner>` for a wrapper `$name { inner: $inner }`.
macro_rules! wraps {
    ($name:ident, $inner:ty) => {
        impl From<$inner> for $name {
            fn from(inner: $inner) -> Self {
                Self { inner }
            }
        }

        impl core::ops::Deref for $name {
            type Target = $inner;

            fn deref(&self) -> &$inner {
                &self.inner
            }
        }
    };
}

/// Implements `Module`, `ModuleDisplay` and `From` for a drop-in wrapper `$name { inner: $inner }`
/// by delegating to the wrapped layer, so that its parameters keep their names and record.
macro_rules! delegate_module {
    ($name:ident, $inner:ty) => {
        $crate::capture::nn::wraps!($name, $inner);

        impl burn::module::Module for $name {
            fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
                self.inner.collect_devices(devices)
            }

            fn fork(self, device: &burn::tensor::Device) -> Self {
                self.inner.fork(device).into()
            }

            fn to_device(self, device: &burn::tensor::Device) -> Self {
                self.inner.to_device(device).into()
            }

            fn train(self) -> Self {
                self.inner.train().into()
            }

            fn valid(&self) -> Self {
                self.inner.valid().into()
            }

            fn materialize(self) -> Self {
                self.inner.materialize().into()
            }

            fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
                self.inner.visit(visitor)
            }

            fn map<M: burn::module::ModuleMapper>(self, mapper: &mut M) -> Self {
                self.inner.map(mapper).into()
            }
        }

        impl burn::module::ModuleDisplayDefault for $name {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                burn::module::ModuleDisplayDefault::content(&self.inner, content)
            }

            fn num_params(&self) -> usize {
                burn::module::ModuleDisplayDefault::num_params(&self.inner)
            }
        }

        impl burn::module::ModuleDisplay for $name {
            fn custom_settings(&self) -> Option<burn::module::DisplaySettings> {
                self.inner.custom_settings()
            }

            fn custom_content(
                &self,
                content: burn::module::Content,
            ) -> Option<burn::module::Content> {
                self.inner.custom_content(content)
            }
        }
    };
}

pub(crate) use delegate_module;
pub(crate) use wraps;
