//! Test accuracy during training, for time-to-accuracy: the hand-written CNN loop and the MLP's
//! Learner runs evaluate several times per epoch with it.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::vision::MnistItem;
use burn::tensor::{Device, Tensor};

use crate::data::MnistBatcher;

/// Accuracy of `forward` (a model in inference mode: its logits of `[N, 784]` pixels) on
/// `test`, in batches of 1000 on `device`'s inner (non-autodiff) device.
pub(crate) fn accuracy(
    test: &[MnistItem],
    device: &Device,
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
) -> f64 {
    let device = device.clone().inner();
    let mut correct = 0usize;
    for chunk in test.chunks(1000) {
        let batch = MnistBatcher.batch(chunk.to_vec(), &device);
        let n = chunk.len();
        let predicted = forward(batch.images).argmax(1).reshape([n]);
        correct += predicted
            .equal(batch.targets)
            .int()
            .sum()
            .into_scalar::<i64>() as usize;
    }
    correct as f64 / test.len().max(1) as f64
}
