//! The BatchNorm rule (Ioffe & Szegedy, "Batch Normalization", ICML 2015): `y = x̂ ⊙ γ + β` per
//! channel, axis 1 of `[N, C, …]`.
//!
//! Factors: those of a scale and shift ([`scale_shift`](super::scale_shift)), `x̂` and `Δ` as
//! `[N, T, C]`, `T` the positions after the channel axis. In inference mode `x̂` is normalised by
//! the running statistics and the layer is per-example: every row is an exact per-example
//! gradient. In training mode `x̂` is normalised by the batch's own statistics, so an example's
//! output depends on the whole batch and per-example gradients are not defined before the
//! layer (BackPACK refuses the layer; kfac-jax and K-FAC take the output gradients as they come,
//! and so does this rule). Then:
//!
//! - `γ`'s and `β`'s rows are still each example's own gradient (`x̂` does not depend on them),
//!   unless another BatchNorm in training mode follows;
//! - a layer before it gets, in its rows, each example's share of the batch gradient, which
//!   includes the coupling through the statistics; the rows still sum to the exact gradient;
//! - the copies of the sampled and exact Fisher ([`Capture::stacked`]) are normalised by the
//!   data's statistics taken as constants, so that their losses reach neither the data rows
//!   nor the statistics: their rows are the per-example gradients at those statistics;
//! - the running statistics are updated from the data rows alone, as Burn's layer does.

use burn::nn::BatchNorm;
use burn::tensor::module::{batch_norm, batch_norm_train};
use burn::tensor::Tensor;

use super::constant;
use super::scale_shift::{scale_shift, Features};
use crate::capture::Capture;

impl Capture {
    /// `layer.forward(input)` for a BatchNorm over `[N, C, …]` input, recording the normalised
    /// input and adding a zero probe leaf to its output; in training mode it updates the running
    /// statistics as Burn's layer does. As for [`linear`](Self::linear): `γ` and `β` enter the
    /// graph as constants, a frozen one gets no factors, a layer with neither trainable is not
    /// recorded.
    ///
    /// # Panics
    /// If the capture is enabled and `input` has rank 1.
    pub fn batch_norm<const D: usize>(&mut self, layer: &BatchNorm, input: Tensor<D>) -> Tensor<D> {
        if !self.is_enabled() {
            return layer.forward(input);
        }
        assert!(D >= 2, "Capture::batch_norm needs examples and channels");
        // A batch on the plain device (as Burn's data loaders give it) joins the graph here.
        let input = input.autodiff();
        if !layer.gamma.val().is_require_grad() && !layer.beta.val().is_require_grad() {
            return layer.forward(input);
        }
        let dims = input.dims();
        let (rows, c) = (dims[0], dims[1]);
        let device = input.device();
        let (ones, zeros) = (Tensor::ones([c], &device), Tensor::zeros([c], &device));
        let normalised = if layer.training.is_enabled() {
            let batch = match self.stack {
                Some(stack) if rows == stack.rows() => stack.batch,
                _ => rows,
            };
            let data = input.clone().narrow(0, 0, batch);
            let train = batch_norm_train(data, ones.clone(), zeros.clone(), layer.epsilon);
            // Burn's update of the running statistics (`BatchNorm::forward_train`).
            let running_mean = layer.running_mean.value_sync().to_device(&device);
            let running_var = layer.running_var.value_sync().to_device(&device);
            let running_mean = running_mean
                .mul_scalar(1.0 - layer.momentum)
                .add(train.mean.clone().detach().mul_scalar(layer.momentum));
            let running_var = running_var
                .mul_scalar(1.0 - layer.momentum)
                .add(train.variance.clone().detach().mul_scalar(layer.momentum));
            layer.running_mean.update(running_mean.detach());
            layer.running_var.update(running_var.detach());
            if batch == rows {
                train.output
            } else {
                let copies = batch_norm(
                    input.narrow(0, batch, rows - batch),
                    ones,
                    zeros,
                    constant(train.mean),
                    constant(train.variance),
                    layer.epsilon,
                );
                Tensor::cat(vec![train.output, copies], 0)
            }
        } else {
            let mean = layer.running_mean.value().to_device(&device);
            let var = layer.running_var.value().to_device(&device);
            batch_norm(input, ones, zeros, mean, var, layer.epsilon)
        };
        scale_shift(
            self,
            normalised,
            Some(&layer.gamma),
            Some(&layer.beta),
            Features::Channels,
        )
    }
}
