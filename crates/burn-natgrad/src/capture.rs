//! Per-example capture for Linear layers: one batch backward yields every example's gradient
//! factors.
//!
//! A zero "probe" leaf `P` is added to the layer output, `z = x W + b + P`. Since `∂L/∂P = ∂L/∂z`,
//! after one backward of the batch loss the probe's gradient is the output gradient `Δ`, row by
//! row, and the per-example weight gradient is `xᵢᵀ Δᵢ` (Goodfellow, "Efficient Per-Example
//! Gradient Computations", 2015; the same identity underlies KFAC and BackPACK). Nothing
//! `N × P`-sized is formed.

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::Gradients;
use burn::tensor::Tensor;

use crate::error::NatGradError;
use crate::factors::{expand_rows, BlockFactors};

/// `param` as a constant of the graph: cut from it and not requiring a gradient, so that the
/// backward pass computes none for it. (`Tensor::detach` alone keeps `require_grad`, and autodiff
/// would still compute, then drop, the weight gradient: the product `Xᵀ Δ`.)
fn constant<const D: usize>(param: Tensor<D>) -> Tensor<D> {
    param.detach().set_require_grad(false)
}

/// One use of a Linear layer recorded by [`Capture::linear`].
#[derive(Clone, Debug)]
struct Record {
    weight: ParamId,
    bias: Option<ParamId>,
    /// Layer input, without autodiff, `[P, T, in]`: `P = N`, or `N / copies` for a layer
    /// computed once for all copies of the batch (see [`Capture::linear`]).
    input: Tensor<3>,
    /// The probe leaf, `[N, T, out]`.
    probe: Tensor<3>,
}

/// The factors of one captured Linear layer after the backward pass.
#[derive(Clone, Debug)]
pub struct LinearFactors {
    /// The layer's weight parameter.
    pub weight: ParamId,
    /// The layer's bias parameter, if it has one.
    pub bias: Option<ParamId>,
    /// Layer inputs `[P, T, in]` (`T = 1` for 2-D inputs; uses of a shared layer are
    /// concatenated along `T`). `P` divides `N`, and example `i` used input row `i mod P`: `P`
    /// is smaller than `N` for a layer whose input was the same for every copy of the batch
    /// (the sampled Fisher's copies), computed once (see [`Capture::linear`]).
    pub input: Tensor<3>,
    /// Gradient of the loss at the layer output, `[N, T, out]`, as the backward pass produced it
    /// (for a mean loss it carries the `1/N`).
    pub output_grad: Tensor<3>,
}

impl LinearFactors {
    /// The per-example gradients of the weight, `[N, in, out]`, each multiplied by `scale`
    /// (pass `N` to undo the `1/N` of a mean loss). Materializes `N × in × out`: for tests.
    pub fn per_example_weight_grads(&self, scale: f64) -> Tensor<3> {
        self.full_input()
            .swap_dims(1, 2)
            .matmul(self.output_grad.clone())
            .mul_scalar(scale)
    }

    /// The minibatch gradient of the weight, `Σᵢ xᵢᵀ Δᵢ`, `[in, out]` (autodiff does not compute
    /// it for captured layers).
    pub fn weight_grad(&self) -> Tensor<2> {
        let n = self.output_grad.dims()[0];
        self.blocks()[0]
            .1
            .back(&Tensor::ones([n, 1], &self.input.device()))
    }

    /// The minibatch gradient of the bias, `Σᵢ Σ_t Δᵢₜ`, `[out]`.
    pub fn bias_grad(&self) -> Tensor<1> {
        let d_out = self.output_grad.dims()[2];
        self.output_grad
            .clone()
            .sum_dim(0)
            .sum_dim(1)
            .reshape([d_out])
    }

    /// The per-example gradients of the bias, `[N, out]`, each multiplied by `scale`.
    pub fn per_example_bias_grads(&self, scale: f64) -> Tensor<2> {
        self.bias_rows().mul_scalar(scale)
    }

    /// `Σ_t Δᵢₜ` per example, `[N, out]`.
    fn bias_rows(&self) -> Tensor<2> {
        let [n, _, out] = self.output_grad.dims();
        self.output_grad.clone().sum_dim(1).reshape([n, out])
    }

    /// The layer inputs with one row per example, `[N, T, in]` (`input` repeated when `P < N`).
    pub fn full_input(&self) -> Tensor<3> {
        expand_rows(&self.input, self.output_grad.dims()[0])
    }

    /// The weight's and (if any) the bias's factor blocks.
    pub(crate) fn blocks(&self) -> Vec<(ParamId, BlockFactors)> {
        let mut blocks = vec![(
            self.weight,
            BlockFactors::Weight {
                input: self.input.clone(),
                output_grad: self.output_grad.clone(),
            },
        )];
        if let Some(bias) = self.bias {
            blocks.push((
                bias,
                BlockFactors::Bias {
                    output_grad: self.bias_rows(),
                },
            ));
        }
        blocks
    }
}

/// Records the Linear layers of one forward pass so that one backward pass yields their
/// per-example factors.
///
/// Route each Linear layer of the forward pass through [`Capture::linear`]; it returns exactly
/// what `layer.forward(input)` returns. A disabled capture ([`Capture::disabled`]) records
/// nothing and adds nothing, so one forward function serves training and inference:
///
/// ```ignore
/// fn forward_with(&self, x: Tensor<2>, capture: &mut Capture) -> Tensor<2> {
///     let h = relu(capture.linear(&self.fc1, x));
///     capture.linear(&self.fc2, h)
/// }
/// fn forward(&self, x: Tensor<2>) -> Tensor<2> {
///     self.forward_with(x, &mut Capture::disabled())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Capture {
    records: Vec<Record>,
    enabled: bool,
    /// How the forward pass's rows are stacked (the sampled Fisher's), if they are.
    stack: Option<Stack>,
}

/// The sampled Fisher's stacked batch: the `batch` examples, then `samples` copies of the first
/// `curvature` of them (`curvature = batch`: whole copies).
#[derive(Clone, Copy, Debug)]
struct Stack {
    batch: usize,
    curvature: usize,
    samples: usize,
}

impl Stack {
    fn rows(&self) -> usize {
        self.batch + self.samples * self.curvature
    }
}

impl Default for Capture {
    fn default() -> Self {
        Self::new()
    }
}

impl Capture {
    /// A capture that records every layer passed to [`linear`](Self::linear).
    pub fn new() -> Self {
        Self {
            records: Vec::new(),
            enabled: true,
            stack: None,
        }
    }

    /// A capture that records nothing: [`linear`](Self::linear) is then `layer.forward(input)`.
    pub fn disabled() -> Self {
        Self {
            records: Vec::new(),
            enabled: false,
            stack: None,
        }
    }

    /// A capture for a forward pass on a batch of `batch` examples followed by `samples` copies
    /// of its first `curvature` examples.
    pub(crate) fn stacked(batch: usize, curvature: usize, samples: usize) -> Self {
        Self {
            stack: (samples > 0 && curvature > 0 && curvature <= batch).then_some(Stack {
                batch,
                curvature,
                samples,
            }),
            ..Self::new()
        }
    }

    /// Whether this capture records layers.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Number of layer uses recorded so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no layer was recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// `layer.forward(input)`, recording the layer input and adding a zero probe leaf to its
    /// output. The layer's parameters enter the graph as constants: the backward pass computes no
    /// gradient for them (their gradients come from the factors, see
    /// [`LinearFactors::weight_grad`]). A frozen layer (weight without `require_grad`) is not
    /// recorded. `input` is `[N, in]` or `[N, …, in]`: dimension 0 indexes the examples, the
    /// middle dimensions (a sequence) are summed over in the per-example gradient.
    ///
    /// For the sampled Fisher the batch is followed by `k` copies of its first `m` examples
    /// ([`NaturalGradient::capture`] makes such a capture): a layer whose input carries no
    /// gradient (it derives from the data alone, e.g. the first layer) is then computed once, on
    /// the batch, and the copies' rows of its output are copies of the batch's, so every copy
    /// shares that forward pass. With whole copies (`m = N`) its factors also keep one input row
    /// per example. (If something random, such as dropout on the raw input, made the copies'
    /// inputs differ, all copies use the batch's.)
    ///
    /// # Panics
    /// If the capture is enabled and `input` has rank 1 (no example dimension), or is not on an
    /// autodiff device.
    ///
    /// [`NaturalGradient::capture`]: crate::NaturalGradient::capture
    pub fn linear<const D: usize>(&mut self, layer: &Linear, input: Tensor<D>) -> Tensor<D> {
        if !self.enabled {
            return layer.forward(input);
        }
        assert!(
            D >= 2,
            "{}",
            NatGradError::InvalidInput(
                "Capture::linear needs an input of rank >= 2 whose first dimension indexes the \
                 examples"
                    .into()
            )
        );
        assert!(
            input.is_autodiff(),
            "{}",
            NatGradError::InvalidInput(
                "Capture::linear needs tensors on an autodiff device (`device.autodiff()`)".into()
            )
        );
        let dims = input.dims();
        let n = dims[0];
        let d_in = dims[D - 1];
        let t: usize = dims[1..D - 1].iter().product();
        if !layer.weight.val().is_require_grad() {
            // A frozen layer has nothing to precondition.
            return layer.forward(input);
        }
        // A layer whose input carries no gradient (it derives from the data alone) sees in each
        // stacked copy the rows of the batch it copies: it is computed once, on the batch, and
        // the copies' output rows are copied. This spares the sampled Fisher `k` copies of
        // (typically) its widest matmul. With whole copies the factors also keep one input row
        // per example (`X Xᵀ` is then shared by the copies).
        let shared = self.stack.filter(|s| s.rows() == n && !input.is_tracked());
        let computed = match shared {
            Some(s) => input.clone().narrow(0, 0, s.batch),
            None => input.clone(),
        };
        // The parameters enter as constants: autodiff then skips the weight-gradient matmuls,
        // which the factors replace (the minibatch gradient is `Σᵢ xᵢᵀΔᵢ`).
        let output = burn::tensor::module::linear(
            computed.clone(),
            constant(layer.weight.val()),
            layer.bias.as_ref().map(|b| constant(b.val())),
        );
        let (output, input) = match shared {
            Some(s) if s.curvature == s.batch => (output.repeat_dim(0, s.samples + 1), computed),
            Some(s) => {
                let copies = output
                    .clone()
                    .narrow(0, 0, s.curvature)
                    .repeat_dim(0, s.samples);
                (Tensor::cat(vec![output, copies], 0), input)
            }
            None => (output, input),
        };
        let rows = input.dims()[0];
        let d_out = output.dims()[D - 1];
        let probe = Tensor::<3>::zeros([n, t, d_out], &output.device()).require_grad();
        let shape = output.shape();
        let output = output + probe.clone().reshape(shape);
        self.records.push(Record {
            weight: layer.weight.id,
            bias: layer.bias.as_ref().map(|b: &Param<Tensor<1>>| b.id),
            input: input.inner().reshape([rows, t, d_in]),
            probe,
        });
        output
    }

    /// Reads the probes' gradients after the backward pass: one [`LinearFactors`] per layer, in
    /// first-use order. Several uses of the same layer are merged along `T`.
    pub fn into_factors(self, grads: &Gradients) -> Result<Vec<LinearFactors>, NatGradError> {
        let mut layers: Vec<LinearFactors> = Vec::new();
        for record in self.records {
            let output_grad = record.probe.grad(grads).ok_or_else(|| {
                NatGradError::InvalidInput(
                    "a captured layer's output did not reach the loss (its probe has no \
                     gradient); capture only layers the loss depends on"
                        .into(),
                )
            })?;
            match layers.iter_mut().find(|l| l.weight == record.weight) {
                Some(layer) => {
                    let rows = layer.output_grad.dims()[0];
                    if rows != output_grad.dims()[0] {
                        return Err(NatGradError::InvalidInput(format!(
                            "a layer was captured twice with different batch sizes ({} and {})",
                            rows,
                            output_grad.dims()[0]
                        )));
                    }
                    let (previous, input) = if layer.input.dims()[0] == record.input.dims()[0] {
                        (layer.input.clone(), record.input)
                    } else {
                        // One use computed once for all copies, the other not: one row each.
                        (
                            expand_rows(&layer.input, rows),
                            expand_rows(&record.input, rows),
                        )
                    };
                    layer.input = Tensor::cat(vec![previous, input], 1);
                    layer.output_grad =
                        Tensor::cat(vec![layer.output_grad.clone(), output_grad], 1);
                }
                None => layers.push(LinearFactors {
                    weight: record.weight,
                    bias: record.bias,
                    input: record.input,
                    output_grad,
                }),
            }
        }
        Ok(layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_devices::cpu_devices;
    use burn::nn::LinearConfig;
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    /// The captured layer's parameters are graph constants: `detach` alone would keep
    /// `require_grad`, and the backward pass would then compute each weight gradient `Xᵀ Δ` for
    /// nothing (it is what made the captured backward cost as much as a full one).
    #[test]
    fn parameters_enter_as_constants() {
        for device in cpu_devices().into_iter().map(|d| d.autodiff()) {
            let layer = LinearConfig::new(5, 3).init(&device);
            assert!(layer.weight.val().is_require_grad());
            assert!(layer.weight.val().detach().is_require_grad());
            let weight = constant(layer.weight.val());
            assert!(!weight.is_require_grad() && !weight.is_tracked());

            let x = Tensor::<2>::random([4, 5], Distribution::Default, &device);
            let mut capture = Capture::new();
            let out = capture.linear(&layer, x);
            let grads = out.square().sum().backward();
            let factors = capture.into_factors(&grads).expect("factors");
            assert_eq!(factors[0].output_grad.dims(), [4, 1, 3]);
            // Only the probe carries a gradient; the parameters get theirs from the factors.
            assert!(GradientsParams::from_grads(grads, &layer).is_empty());
        }
    }
}
