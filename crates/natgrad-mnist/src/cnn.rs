//! Burn's guide model (`examples/guide` in the Burn repository: two Conv2d, Dropout, two
//! Linear), switched to the natural gradient by its `use` lines and the `TrainStep` body, one
//! line each for `step` and `optimize`, with an optional BatchNorm after the first
//! convolution. The initialisation and the forward pass are the guide's own, and the record is
//! Burn's. README shows the part between the markers.

// README:begin
use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Relu}; // Conv2d, Linear, BatchNorm: burn-natgrad's
use burn::tensor::{Device, Tensor};
use burn::train::{ClassificationOutput, TrainOutput, TrainStep};
use burn_natgrad::nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, LinearConfig};

use crate::data::{MnistBatch, SIDE};

/// The guide's CNN, `[N, 784]` pixels to 10 logits.
#[derive(Module, Debug)]
pub struct GuideCnn {
    conv1: Conv2d,
    bn: Option<BatchNorm>,
    conv2: Conv2d,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    linear1: Linear,
    linear2: Linear,
    activation: Relu,
}

impl TrainStep for GuideCnn {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        burn_natgrad::classification_step(self, batch.images, batch.targets, |x| self.forward(x))
    }

    burn_natgrad::natural_gradient_optimize!();
}
// README:end

impl GuideCnn {
    /// Burn's default initialisation, seeded on `device`; the guide's hidden width is 512 and
    /// its dropout 0.5; `batch_norm` adds the BatchNorm after the first convolution.
    pub fn new(hidden: usize, dropout: f64, batch_norm: bool, seed: u64, device: &Device) -> Self {
        device.seed(seed);
        Self {
            conv1: Conv2dConfig::new([1, 8], [3, 3]).init(device),
            bn: batch_norm.then(|| BatchNormConfig::new(8).init(device)),
            conv2: Conv2dConfig::new([8, 16], [3, 3]).init(device),
            pool: AdaptiveAvgPool2dConfig::new([8, 8]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            linear1: LinearConfig::new(16 * 8 * 8, hidden).init(device),
            linear2: LinearConfig::new(hidden, 10).init(device),
            activation: Relu::new(),
        }
    }

    /// Logits `[N, 10]` of flattened images `[N, 784]`.
    pub fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        let [n, _] = images.dims();
        let x = images.reshape([n, 1, SIDE, SIDE]);
        let x = self.conv1.forward(x);
        let x = match &self.bn {
            Some(bn) => bn.forward(x),
            None => x,
        };
        let x = self.dropout.forward(x);
        let x = self.conv2.forward(x);
        let x = self.dropout.forward(x);
        let x = self.activation.forward(x);
        let x = self.pool.forward(x).reshape([n, 16 * 8 * 8]);
        let x = self.linear1.forward(x);
        let x = self.dropout.forward(x);
        let x = self.activation.forward(x);
        self.linear2.forward(x)
    }
}

impl burn::train::InferenceStep for GuideCnn {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> ClassificationOutput {
        let logits = self.forward(batch.images);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}
