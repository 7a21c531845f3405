//! The drop-in layers' configs: Burn's configs (same fields, defaults and builders) whose
//! `init` builds the drop-in layer, so that a model switches by its `use` lines alone.

use burn::nn::conv::Conv2dConfig as BurnConv2dConfig;
use burn::nn::{
    BatchNormConfig as BurnBatchNormConfig, EmbeddingConfig as BurnEmbeddingConfig,
    GroupNormConfig as BurnGroupNormConfig, Initializer, LayerNormConfig as BurnLayerNormConfig,
    LinearConfig as BurnLinearConfig, LinearLayout, PaddingConfig2d,
    RmsNormConfig as BurnRmsNormConfig,
};
use burn::tensor::Device;

use super::{wraps, BatchNorm, Conv2d, Embedding, GroupNorm, LayerNorm, Linear, RmsNorm};

/// A drop-in config `$name` wrapping Burn's `$inner`: `new`, the builders, `init` and `From`.
macro_rules! drop_in_config {
    ($name:ident, $inner:ty, $layer:ty, new($($arg:ident: $ty:ty),*), [$($with:ident: $wty:ty),*]) => {
        #[doc = concat!(
            "Burn's `", stringify!($name), "` (same fields, defaults and builders, in `inner`), ",
            "whose [`init`](Self::init) builds the drop-in [`", stringify!($layer), "`]."
        )]
        #[derive(Clone, Debug)]
        pub struct $name {
            /// Burn's config.
            pub inner: $inner,
        }

        impl $name {
            /// Burn's config with these sizes and the defaults.
            pub fn new($($arg: $ty),*) -> Self {
                Self { inner: <$inner>::new($($arg),*) }
            }

            $(
                #[doc = concat!("Burn's `", stringify!($with), "`.")]
                pub fn $with(self, value: $wty) -> Self {
                    Self { inner: self.inner.$with(value) }
                }
            )*

            /// The drop-in layer, initialised as Burn's config initialises its layer.
            pub fn init(&self, device: &Device) -> $layer {
                self.inner.init(device).into()
            }
        }

        wraps!($name, $inner);
    };
}

drop_in_config!(
    LinearConfig,
    BurnLinearConfig,
    Linear,
    new(d_input: usize, d_output: usize),
    [with_bias: bool, with_initializer: Initializer, with_layout: LinearLayout]
);
drop_in_config!(
    Conv2dConfig,
    BurnConv2dConfig,
    Conv2d,
    new(channels: [usize; 2], kernel_size: [usize; 2]),
    [
        with_stride: [usize; 2],
        with_dilation: [usize; 2],
        with_groups: usize,
        with_padding: PaddingConfig2d,
        with_bias: bool,
        with_initializer: Initializer
    ]
);
drop_in_config!(
    EmbeddingConfig,
    BurnEmbeddingConfig,
    Embedding,
    new(n_embedding: usize, d_model: usize),
    [with_initializer: Initializer]
);
drop_in_config!(
    BatchNormConfig,
    BurnBatchNormConfig,
    BatchNorm,
    new(num_features: usize),
    [with_epsilon: f64, with_momentum: f64]
);
drop_in_config!(
    LayerNormConfig,
    BurnLayerNormConfig,
    LayerNorm,
    new(d_model: usize),
    [with_epsilon: f64, with_bias: bool]
);
drop_in_config!(
    GroupNormConfig,
    BurnGroupNormConfig,
    GroupNorm,
    new(num_groups: usize, num_channels: usize),
    [with_epsilon: f64, with_affine: bool]
);
drop_in_config!(
    RmsNormConfig,
    BurnRmsNormConfig,
    RmsNorm,
    new(d_model: usize),
    [with_epsilon: f64]
);
