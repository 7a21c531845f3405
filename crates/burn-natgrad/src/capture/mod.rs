//! Per-example capture: one batch backward yields every example's gradient factors.
//!
//! A zero "probe" leaf `P` is added to a layer's output, `z = f(x; θ) + P`. Since `∂L/∂P =
//! ∂L/∂z`, after one backward of the batch loss the probe's gradient is the output gradient `Δ`,
//! row by row, and each layer rule ([`rules`](crate::capture::rules)) turns it and the recorded input into
//! per-example factors (Goodfellow, "Efficient Per-Example Gradient Computations", 2015; the
//! same identity underlies KFAC and BackPACK). Nothing `N × P`-sized is formed for a Linear
//! layer.

pub mod nn;
pub(crate) mod per_example;
pub(crate) mod rules;

use burn::module::ParamId;
use burn::tensor::{Gradients, Tensor};

use crate::capture::rules::Recorded;
use crate::curvature::kfac::RowsPolicy;
use crate::error::NatGradError;
use crate::factors::{expand_rows, BlockFactors};

/// Records the layers of one forward pass so that one backward pass yields their per-example
/// factors.
///
/// Route each layer of the forward pass through its rule, [`Capture::linear`] or
/// [`Capture::conv2d`]; it returns exactly what `layer.forward(input)` returns. A disabled
/// capture ([`Capture::disabled`]) records nothing and adds nothing, so one forward function
/// serves training and inference:
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
    pub(crate) records: Vec<Recorded>,
    pub(crate) mode: Mode,
    /// How the forward pass's rows are stacked (the sampled Fisher's), if they are.
    pub(crate) stack: Option<Stack>,
}

/// What a capture's rules do.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Record every layer passed to them.
    Record,
    /// Record nothing: each rule is `layer.forward(input)`.
    Disabled,
    /// A step that reuses KFAC's factors (see
    /// [`factor_update_steps`](crate::KfacConfig::factor_update_steps)): only the Linear layers
    /// whose KFAC direction is cheaper from their rows record them, as KFAC's policy decides;
    /// the other layers run plainly, and the classification step takes the plain gradient.
    Reuse(RowsPolicy),
}

/// The sampled Fisher's stacked batch: the `batch` examples, then `samples` copies of the first
/// `curvature` of them (`curvature = batch`: whole copies).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stack {
    pub(crate) batch: usize,
    pub(crate) curvature: usize,
    pub(crate) samples: usize,
}

impl Stack {
    pub(crate) fn rows(&self) -> usize {
        self.batch + self.samples * self.curvature
    }
}

impl Default for Capture {
    fn default() -> Self {
        Self::new()
    }
}

/// The per-example factors of every captured parameter after the backward pass, in first-use
/// order; several uses of one layer are merged (their per-example gradients add up).
#[derive(Clone, Debug)]
pub struct CapturedFactors {
    pub(crate) blocks: Vec<(ParamId, BlockFactors)>,
}

impl CapturedFactors {
    /// The captured parameters, in first-use order.
    pub fn params(&self) -> Vec<ParamId> {
        self.blocks.iter().map(|(id, _)| *id).collect()
    }

    fn block(&self, id: ParamId) -> Option<&BlockFactors> {
        self.blocks.iter().find(|(p, _)| *p == id).map(|(_, b)| b)
    }

    /// The per-example gradients of parameter `id` (`[N, numel]`, each row the parameter read
    /// row-major), each multiplied by `scale` (pass `N` to undo the `1/N` of a mean loss).
    /// Materialises `N × numel`: for tests and inspection.
    pub fn per_example_grads(&self, id: ParamId, scale: f64) -> Option<Tensor<2>> {
        self.block(id).map(|b| b.dense_rows().mul_scalar(scale))
    }

    /// The minibatch gradient of parameter `id`, the sum of its per-example gradients, read
    /// row-major as `[1, numel]` (autodiff does not compute it for captured parameters).
    pub fn grad(&self, id: ParamId) -> Option<Tensor<2>> {
        self.block(id).map(|b| {
            let ones = Tensor::ones([b.rows(), 1], &b.device());
            b.back(&ones)
                .reshape([1, b.view_dims()[0] * b.view_dims()[1]])
        })
    }
}

thread_local! {
    /// The capture the drop-in layers ([`crate::nn`]) record into on this thread, while
    /// [`Capture::scope`] runs.
    static ACTIVE: std::cell::RefCell<Option<Capture>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's active capture, if one is set by [`Capture::scope`].
pub(crate) fn with_active<R>(f: impl FnOnce(Option<&mut Capture>) -> R) -> R {
    ACTIVE.with(|active| f(active.borrow_mut().as_mut()))
}

/// Puts back the capture that was active before a [`Capture::scope`], even if its closure
/// panics.
struct Restore(Option<Capture>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        ACTIVE.with(|active| *active.borrow_mut() = previous);
    }
}

impl Capture {
    /// Runs `f` (a model's own forward pass) with this capture active on this thread: the
    /// drop-in layers of [`crate::nn`] record into it, as if each were routed through its rule.
    /// Returns the capture with what it recorded, and `f`'s result. Scopes nest: the previous
    /// active capture (or none) is restored afterwards, also when `f` panics.
    pub fn scope<R>(self, f: impl FnOnce() -> R) -> (Self, R) {
        let restore = Restore(ACTIVE.with(|active| active.borrow_mut().replace(self)));
        let out = f();
        let capture = ACTIVE.with(|active| active.borrow_mut().take());
        drop(restore);
        (capture.expect("the scope's capture is active"), out)
    }

    /// A capture that records every layer passed to its rules.
    pub fn new() -> Self {
        Self {
            records: Vec::new(),
            mode: Mode::Record,
            stack: None,
        }
    }

    /// A capture that records nothing: each rule is then `layer.forward(input)`.
    pub fn disabled() -> Self {
        Self {
            records: Vec::new(),
            mode: Mode::Disabled,
            stack: None,
        }
    }

    /// The capture of a step that reuses KFAC's factors, recording the Linear layers whose
    /// rows pay by `policy`.
    pub(crate) fn reusing(policy: RowsPolicy) -> Self {
        Self {
            mode: Mode::Reuse(policy),
            ..Self::disabled()
        }
    }

    /// Whether this is the capture of a step that reuses KFAC's factors instead of recording
    /// (see [`factor_update_steps`](crate::KfacConfig::factor_update_steps)): the
    /// forward pass then runs the plain layers, except [`linear`](Self::linear), which still
    /// records its input and output gradient (no Fisher rows: only what its direction needs),
    /// and the classification step takes the plain gradient.
    pub fn reuses_factors(&self) -> bool {
        matches!(self.mode, Mode::Reuse(_))
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
        matches!(self.mode, Mode::Record)
    }

    /// Number of layer uses recorded so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no layer was recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Reads the probes' gradients after the backward pass: the factors of every captured
    /// parameter. Several uses of the same layer are merged.
    pub fn into_factors(self, grads: &Gradients) -> Result<CapturedFactors, NatGradError> {
        self.into_factors_for(grads, None)
    }

    /// [`into_factors`](Self::into_factors) for KFAC with block limit `kronecker`: a
    /// convolution with more weights keeps its Kronecker factors (KFC) instead of materialising
    /// its per-example gradients.
    pub(crate) fn into_factors_for(
        self,
        grads: &Gradients,
        kronecker: Option<usize>,
    ) -> Result<CapturedFactors, NatGradError> {
        let mut blocks: Vec<(ParamId, BlockFactors)> = Vec::new();
        for record in self.records {
            let uses = record.blocks(grads, kronecker).ok_or_else(|| {
                NatGradError::InvalidInput(
                    "a captured layer's output did not reach the loss (its probe has no \
                     gradient); capture only layers the loss depends on"
                        .into(),
                )
            })?;
            for (id, block) in uses {
                match blocks.iter_mut().find(|(p, _)| *p == id) {
                    Some((_, merged)) => *merged = merge(merged.clone(), block)?,
                    None => blocks.push((id, block)),
                }
            }
        }
        Ok(CapturedFactors { blocks })
    }
}

/// Two uses of one parameter as one block: a weight's or an embedding table's uses side by side
/// along `T` (the per-example gradient, a sum over `t`, then sums over both), explicit or bias
/// rows added.
fn merge(a: BlockFactors, b: BlockFactors) -> Result<BlockFactors, NatGradError> {
    if a.rows() != b.rows() {
        return Err(NatGradError::InvalidInput(format!(
            "a layer was captured twice with different batch sizes ({} and {})",
            a.rows(),
            b.rows()
        )));
    }
    let rows = a.rows();
    Ok(match (a, b) {
        (
            BlockFactors::Weight { input, output_grad },
            BlockFactors::Weight {
                input: input2,
                output_grad: output_grad2,
            },
        ) => {
            let (input, input2) = if input.dims()[0] == input2.dims()[0] {
                (input, input2)
            } else {
                // One use computed once for all copies, the other not: one row each.
                (expand_rows(&input, rows), expand_rows(&input2, rows))
            };
            BlockFactors::Weight {
                input: Tensor::cat(vec![input, input2], 1),
                output_grad: Tensor::cat(vec![output_grad, output_grad2], 1),
            }
        }
        (BlockFactors::Bias { output_grad: a }, BlockFactors::Bias { output_grad: b }) => {
            BlockFactors::Bias { output_grad: a + b }
        }
        (
            BlockFactors::Gather {
                ids,
                output_grad,
                vocab,
            },
            BlockFactors::Gather {
                ids: ids2,
                output_grad: output_grad2,
                ..
            },
        ) => BlockFactors::Gather {
            ids: Tensor::cat(vec![ids, ids2], 1),
            output_grad: Tensor::cat(vec![output_grad, output_grad2], 1),
            vocab,
        },
        (a, b) => BlockFactors::Dense {
            rows: a.dense_rows() + b.dense_rows(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::rules::constant;
    use crate::testing::devices::cpu_devices;
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
            assert_eq!(
                factors.params(),
                vec![layer.weight.id, layer.bias.as_ref().unwrap().id]
            );
            // Only the probe carries a gradient; the parameters get theirs from the factors.
            assert!(GradientsParams::from_grads(grads, &layer).is_empty());
        }
    }
}
