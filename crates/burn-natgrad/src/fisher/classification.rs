//! A captured training step of a softmax classifier: the stacked input of the sampled Fisher,
//! the loss on data and sampled labels, one backward pass, and every captured layer's factors
//! registered, with one row-scaling convention, as the Fisher rows and (when they differ) the
//! data rows of each parameter.
//!
//! The Fisher-kind logic lives here and in [`fisher`](crate::fisher): which rows are the
//! Fisher's (the data's, the first `m` of them, or `k` sampled copies), which labels they use
//! ([`labels_for`]) and how they are scaled ([`fisher_scale`]).

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor};
use burn::train::{ClassificationOutput, TrainOutput};

use crate::capture::Capture;
use crate::curvature::kfac::RowsPolicy;
use crate::error::NatGradError;
use crate::factors::{gradient_weight_id, BlockFactors, DataRows, Factors};
use crate::fisher::{
    check_targets, cross_entropy_rows, fisher_scale, labels_for, row_weights, FisherKind,
};
use crate::optim::optimizer::NaturalGradient;

/// What [`NaturalGradient::classification`] returns: the data loss and logits for metrics, and
/// the gradients with the per-example factors for [`NaturalGradient::step`].
#[derive(Debug)]
pub struct NaturalGradientOutput {
    /// The data loss, `[1]` (not tracked by autodiff): mean cross-entropy on the data labels,
    /// or the loss given to [`NaturalGradient::train_step_with_loss`].
    pub loss: Tensor<1>,
    /// Logits of the batch (the data copy), `[N, C]` (not tracked by autodiff).
    pub logits: Tensor<2>,
    /// The Fisher factors under derived ids, and the gradients: those of captured parameters
    /// implicit (`g = U_dᵀ (w·1)` over the data rows: their per-example gradients summed), those
    /// of uncovered ones (see [`UncoveredPolicy`](crate::UncoveredPolicy)) explicit. Pass it
    /// unchanged to [`NaturalGradient::step`] or [`NaturalGradient::precondition`].
    pub grads: GradientsParams,
}

impl NaturalGradientOutput {
    /// The Learner's `TrainOutput`: these gradients and factors, with the loss, logits and
    /// `targets` as a [`ClassificationOutput`] for the metrics.
    pub fn into_train_output(self, targets: Tensor<1, Int>) -> TrainOutput<ClassificationOutput> {
        TrainOutput {
            grads: self.grads,
            item: ClassificationOutput::new(self.loss, self.logits, targets),
        }
    }
}

/// The model's own training loss, `loss(logits, targets)` on the data rows (see
/// [`NaturalGradient::train_step_with_loss`]).
pub(crate) type UserLoss<'a> = Box<dyn FnOnce(Tensor<2>, Tensor<1, Int>) -> Tensor<1> + 'a>;

/// The user's loss on the data rows, refused unless it is the batch mean (`[1]`).
pub(crate) fn user_loss(
    loss: UserLoss<'_>,
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
) -> Result<Tensor<1>, NatGradError> {
    let user = loss(logits, targets);
    if user.dims() != [1] {
        return Err(NatGradError::InvalidInput(format!(
            "the training loss must be the batch mean, of shape [1]; got {:?}",
            user.dims()
        )));
    }
    Ok(user)
}

impl NaturalGradient {
    /// A whole captured step of a softmax classifier whose layers are the drop-in layers of
    /// [`crate::nn`]: [`capture`](Self::capture) the input, run the model's own `forward`
    /// inside [`Capture::scope`], then [`classification`](Self::classification). This is the
    /// body of a hand-written loop's step, and of `TrainStep::step` for a model that keeps its
    /// `NaturalGradient` in a field ([`classification_step`](crate::classification_step) needs
    /// none):
    ///
    /// ```ignore
    /// fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
    ///     let targets = batch.targets.clone();
    ///     self.natgrad
    ///         .train_step(self, batch.images, batch.targets, |x| self.forward(x))
    ///         .into_train_output(targets)
    /// }
    /// ```
    ///
    /// # Panics
    /// As [`classification`](Self::classification).
    pub fn train_step<M: Module, const D: usize>(
        &self,
        model: &M,
        input: Tensor<D>,
        targets: Tensor<1, Int>,
        forward: impl FnOnce(Tensor<D>) -> Tensor<2>,
    ) -> NaturalGradientOutput {
        let (capture, logits) = self.captured_forward(input, forward);
        self.classification(model, capture, logits, targets)
    }

    /// The model's own `forward` on the [`capture`](Self::capture)d input inside
    /// [`Capture::scope`], noted as captured for this `NaturalGradient` (see
    /// [`natural_gradient_optimize!`](crate::natural_gradient_optimize)).
    fn captured_forward<const D: usize>(
        &self,
        input: Tensor<D>,
        forward: impl FnOnce(Tensor<D>) -> Tensor<2>,
    ) -> (Capture, Tensor<2>) {
        crate::optim::glue::captured_for(self);
        let (capture, x) = self.capture(input);
        capture.scope(|| forward(x))
    }

    /// How many examples of a batch of `n` the Fisher is estimated on: the curvature batch,
    /// at most `n` (see
    /// [`NaturalGradientConfig::curvature_batch`](crate::NaturalGradientConfig::curvature_batch)).
    pub fn curvature_rows(&self, n: usize) -> usize {
        self.config.curvature_batch.map_or(n, |m| m.min(n))
    }

    /// Starts a captured training step: returns an enabled [`Capture`] and the input to run the
    /// forward pass on. For the empirical Fisher it is the batch itself. For the sampled Fisher
    /// with `k` samples it is the batch followed by `k` copies of its first `m` examples (the
    /// curvature batch, all of it by default), stacked along dimension 0: `N + k·m` rows. The
    /// capture computes a layer whose input carries no gradient (the first) on the `N` rows of
    /// the batch only, and copies its output rows for the copies.
    ///
    /// On a KFAC step that reuses the factors (a
    /// [`factor_update_steps`](crate::KfacConfig::factor_update_steps) above 1, see
    /// [`factors_due`](Self::factors_due)) it returns a disabled capture that
    /// [`Capture::reuses_factors`] and the batch as it is: the layers run plainly (the Linear
    /// layers recording their rows, see [`Capture::linear`]), and
    /// [`classification`](Self::classification) takes the plain gradient.
    pub fn capture<const D: usize>(&self, input: Tensor<D>) -> (Capture, Tensor<D>) {
        if !self.factors_due() {
            return (
                Capture::reusing(RowsPolicy::new(
                    self.config.curvature.as_kfac().and_then(|k| k.rank()),
                )),
                input,
            );
        }
        let samples = match self.config.fisher {
            FisherKind::Empirical => return (Capture::new(), input),
            FisherKind::Sampled { samples } => samples,
            FisherKind::Exact { classes } => classes,
        };
        let n = input.dims()[0];
        let m = self.curvature_rows(n);
        let capture = Capture::stacked(n, m, samples);
        let curvature = if m == n {
            input.clone()
        } else {
            input.clone().narrow(0, 0, m)
        };
        let mut parts = vec![input];
        parts.extend(std::iter::repeat_n(curvature, samples));
        (capture, Tensor::cat(parts, 0))
    }

    /// Finishes a captured step of a softmax classifier: cross-entropy on the data labels (and
    /// on labels sampled from the model for the sampled Fisher), one backward pass, and the
    /// per-example factors of every captured layer, returned inside the gradients.
    ///
    /// `logits` come from the forward pass on the input returned by [`capture`](Self::capture);
    /// `targets` are the `N` data labels.
    ///
    /// # Panics
    /// With a message saying what to change, on the errors of
    /// [`try_classification`](Self::try_classification).
    pub fn classification<M: Module>(
        &self,
        model: &M,
        capture: Capture,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> NaturalGradientOutput {
        self.try_classification(model, capture, logits, targets)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`classification`](Self::classification), returning errors: targets that do not match
    /// the logits, a capture that recorded no layer, or trainable parameters it did not capture.
    pub fn try_classification<M: Module>(
        &self,
        model: &M,
        capture: Capture,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> Result<NaturalGradientOutput, NatGradError> {
        self.classify(model, capture, logits, targets, None)
    }

    /// [`train_step`](Self::train_step) whose gradient comes from the model's own training
    /// loss, `loss(logits, targets)` on the data rows (`[N, C]`, `[N]`), instead of plain
    /// cross-entropy: label smoothing, class weights, any loss that is the batch mean of
    /// per-example terms (`[1]`, as Burn's losses reduce; a loss that couples examples has no
    /// per-example gradients). The sampled and exact Fisher stay the model's own (cross-entropy
    /// at labels drawn from, or weighted by, its softmax); the empirical Fisher becomes that of
    /// this loss, `E[∇ℓₙ ∇ℓₙᵀ]` of its per-example gradients. The output's `loss` is this loss.
    ///
    /// # Panics
    /// As [`classification`](Self::classification), and when `loss` is not of shape `[1]`.
    pub fn train_step_with_loss<M: Module, const D: usize>(
        &self,
        model: &M,
        input: Tensor<D>,
        targets: Tensor<1, Int>,
        forward: impl FnOnce(Tensor<D>) -> Tensor<2>,
        loss: impl FnOnce(Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
    ) -> NaturalGradientOutput {
        let (capture, logits) = self.captured_forward(input, forward);
        self.try_classification_with_loss(model, capture, logits, targets, loss)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`try_classification`](Self::try_classification) with the gradient of `loss` on the
    /// data rows (see [`train_step_with_loss`](Self::train_step_with_loss)); also an error when
    /// `loss` is not of shape `[1]`.
    pub fn try_classification_with_loss<M: Module>(
        &self,
        model: &M,
        capture: Capture,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        loss: impl FnOnce(Tensor<2>, Tensor<1, Int>) -> Tensor<1>,
    ) -> Result<NaturalGradientOutput, NatGradError> {
        self.classify(model, capture, logits, targets, Some(Box::new(loss)))
    }

    fn classify<M: Module>(
        &self,
        model: &M,
        capture: Capture,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        loss: Option<UserLoss<'_>>,
    ) -> Result<NaturalGradientOutput, NatGradError> {
        if capture.reuses_factors() {
            return self.plain_classification(model, capture, logits, targets, loss);
        }
        let kind = self.config.fisher;
        let [rows, classes] = logits.dims();
        let n = check_targets(rows, classes, &targets, |n| {
            n + (kind.copies() - 1) * self.curvature_rows(n)
        })?;
        let m = self.curvature_rows(n);
        if let FisherKind::Exact { classes: c } = kind {
            if c != classes {
                return Err(NatGradError::InvalidInput(format!(
                    "FisherKind::Exact {{ classes: {c} }} but the logits have {classes} columns: \
                     the exact Fisher is that of a softmax over the logits' width"
                )));
            }
        }
        if !capture.is_enabled() || capture.is_empty() {
            return Err(NatGradError::InvalidInput(
                "the capture recorded no layer: build the model from burn-natgrad's drop-in \
                 layers (`burn_natgrad::nn::{Linear, Conv2d, Embedding, LayerNorm, BatchNorm, \
                 GroupNorm, RmsNorm}` in place of burn::nn's, with `.into()` on their \
                 initialisation), or route each layer through `Capture::linear`, \
                 `Capture::conv2d`, ... inside `Capture::scope`"
                    .into(),
            ));
        }
        // The model's own loss needs the data labels, which `labels_for` consumes.
        let model_loss = loss.map(|loss| (loss, targets.clone()));
        let labels = labels_for(kind, &logits, targets, m, self.config.seed);
        let per_row = cross_entropy_rows(logits.clone(), labels);
        let weighted = match row_weights(kind, &logits, n, m) {
            Some(w) => per_row * w,
            None => per_row,
        };
        // The mean loss over the data rows, plus the Fisher rows' (the sampled or exact
        // Fisher's copies) on the same 1/N scale.
        let (data_loss, objective) = match model_loss {
            Some((loss, targets)) => {
                let user = user_loss(loss, logits.clone().slice(0..n), targets)?;
                let objective = if rows > n {
                    user.clone() + weighted.slice(n..rows).sum().div_scalar(n as f64)
                } else {
                    user.clone()
                };
                (user.inner(), objective)
            }
            None => (
                weighted.clone().slice(0..n).mean().inner(),
                weighted.sum().div_scalar(n as f64),
            ),
        };
        let gradients = objective.backward();
        // KFAC keeps a large convolution's Kronecker factors (KFC); the Gram solve its rows.
        let kronecker = self.config.curvature.as_kfac().map(|k| k.block_limit);
        let layers = capture.into_factors_for(&gradients, kronecker)?;
        let mut grads = GradientsParams::from_grads(gradients, model);

        // Every row is scaled alike, so that the Fisher is UᵀU; the gradient is then
        // g = Σ xᵢᵀΔᵢ = U_dᵀ(1/scale · 1) over the data rows U_d, left implicit (the capture kept
        // autodiff from computing it). Empirical over the whole batch: the data rows are the
        // Fisher rows. Empirical with a curvature batch: the Fisher rows are the first m data
        // rows. Sampled: the data rows come first, then the Fisher's.
        let scale = fisher_scale(kind, n, m).sqrt();
        let w = Tensor::<1>::from_floats([1.0 / scale as f32], &logits.clone().inner().device());
        grads.register(gradient_weight_id(), w);
        for (id, block) in layers.blocks {
            let is_weight = matches!(block, BlockFactors::Weight { .. });
            let (fisher, data) = match kind {
                FisherKind::Empirical if m == n => (block, None),
                FisherKind::Empirical => (
                    block.clone().slice_rows(0, m),
                    // The Fisher rows' input is the first m rows of the data's.
                    Some((block, is_weight)),
                ),
                FisherKind::Sampled { .. } | FisherKind::Exact { .. } => {
                    // A layer computed once for all copies keeps one input row per example,
                    // which the data rows share.
                    let shares_input = matches!(
                        &block,
                        BlockFactors::Weight { input, .. } if input.dims()[0] == n
                    );
                    (
                        block.clone().slice_rows(n, rows),
                        Some((block.slice_rows(0, n), shares_input)),
                    )
                }
            };
            fisher.scaled(scale).register(id, &mut grads);
            if let Some((factors, shares_input)) = data {
                DataRows {
                    factors: factors.scaled(scale),
                    shares_input,
                }
                .register(id, &mut grads);
            }
        }
        // Every parameter with a gradient must now have factors, or be handled by the policy:
        // names those the capture missed.
        Factors::collect(model, &grads, self.config.uncovered)?;
        Ok(NaturalGradientOutput {
            loss: data_loss,
            logits: logits.slice(0..n).inner(),
            grads,
        })
    }
}
