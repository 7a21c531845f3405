//! The ReLU MLP of the benchmark examples (`bench`, `step_breakdown`), with every Linear layer
//! routed through a [`Capture`].

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use burn_natgrad::Capture;

/// An MLP `sizes[0] → … → sizes[last]`, Burn's default initialisation after `device.seed(0)`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(sizes: &[usize], device: &Device) -> Self {
        device.seed(0);
        Self {
            layers: sizes
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
        }
    }

    /// Logits; a disabled capture gives the plain forward pass.
    pub fn forward_with(&self, x: Tensor<2>, capture: &mut Capture) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, l)| {
            let z = capture.linear(l, h);
            if i < last {
                relu(z)
            } else {
                z
            }
        })
    }
}
