//! The generic fallback: exact per-example gradients of any model by looping over the examples.
//!
//! Burn has no `vmap`; one backward per example (and per sampled label) gives the exact
//! per-example gradients of every parameter, whatever the layer types. They are kept as explicit
//! rows (`[M, numel]` per parameter), so memory and time grow with `N × P`: use it for models the
//! probe [`Capture`](crate::Capture) cannot see into, or as a test oracle.

use std::collections::HashMap;

use burn::module::{Flag, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};

use crate::error::NatGradError;
use crate::factors::BlockFactors;
use crate::fisher::classification::NaturalGradientOutput;
use crate::fisher::{check_targets, cross_entropy_rows, sample_labels, FisherKind};
use crate::optim::optimizer::NaturalGradient;

/// Adds one backward pass's parameter gradients to the running sums and/or the per-example rows.
struct Collect<'a> {
    source: &'a GradientsParams,
    sums: Option<&'a mut GradientsParams>,
    rows: &'a mut HashMap<ParamId, Vec<Tensor<2>>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.source.get::<D>(param.id) else {
            return;
        };
        let numel = grad.shape().num_elements();
        self.rows
            .entry(param.id)
            .or_default()
            .push(grad.clone().reshape([1, numel]));
        if let Some(sums) = self.sums.as_deref_mut() {
            let total = match sums.remove::<D>(param.id) {
                Some(acc) => acc + grad,
                None => grad,
            };
            sums.register::<D>(param.id, total);
        }
    }
}

/// Finds BatchNorm layers in training mode: their output for one example depends on the
/// whole batch, so a per-example gradient does not exist (each example alone would be
/// normalised by its own statistics, and the loop would silently train another model).
#[derive(Default)]
struct TrainingBatchNorm {
    path: Vec<String>,
    /// Path length of the BatchNorm whose field is being visited, if any.
    inside: Option<usize>,
    found: Vec<String>,
}

impl ModuleVisitor for TrainingBatchNorm {
    // `container_type` is the type of the module whose field `name` is entered.
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Struct:BatchNorm" && self.inside.is_none() {
            self.inside = Some(self.path.len());
        }
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        if self.inside == Some(self.path.len()) {
            self.inside = None;
        }
    }

    fn visit_flag(&mut self, flag: &Param<Flag>) {
        if let Some(depth) = self.inside {
            if flag.val().is_enabled() {
                self.found.push(self.path[..depth].join("."));
            }
        }
    }
}

/// Divides every parameter gradient in `grads` by `n`.
struct Mean<'a> {
    grads: &'a mut GradientsParams,
    n: f64,
}

impl ModuleVisitor for Mean<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register::<D>(param.id, g.div_scalar(self.n));
        }
    }
}

/// Exact per-example natural-gradient inputs for any model: one forward and backward pass per
/// example (plus one per sampled label of each curvature-batch example for the sampled Fisher;
/// see [`NaturalGradientConfig::curvature_batch`](crate::NaturalGradientConfig)), with
/// `forward(model, x)` mapping
/// a batch `[1, …]` to logits `[1, C]`. The result feeds [`NaturalGradient::step`] like
/// [`NaturalGradient::classification`]'s does. Slow (`N` backward passes) and `O(N·P)` memory.
/// A model with a BatchNorm in training mode is refused: its per-example gradients are not
/// defined.
pub fn per_example_classification<M, F, const D: usize>(
    natgrad: &NaturalGradient,
    model: &M,
    input: Tensor<D>,
    targets: Tensor<1, Int>,
    forward: F,
) -> Result<NaturalGradientOutput, NatGradError>
where
    M: Module,
    F: Fn(&M, Tensor<D>) -> Tensor<2>,
{
    let n = input.dims()[0];
    if input.is_autodiff() {
        let mut bn = TrainingBatchNorm::default();
        model.visit(&mut bn);
        if !bn.found.is_empty() {
            return Err(NatGradError::InvalidInput(format!(
                "per_example_classification: BatchNorm in training mode has no per-example \
                 gradient (it normalises with the batch's statistics; one example alone would \
                 be normalised by its own) at [{}]. Capture the model instead (`Capture`, with \
                 `Capture::batch_norm` or `burn_natgrad::nn::BatchNorm` for the BatchNorm), or \
                 put the BatchNorm in inference mode.",
                bn.found.join(", ")
            )));
        }
    }
    if targets.dims()[0] != n {
        return Err(NatGradError::InvalidInput(format!(
            "{} targets for a batch of {n} examples",
            targets.dims()[0]
        )));
    }
    let kind = natgrad.config().fisher;
    let m = natgrad.curvature_rows(n);
    let mut sums = GradientsParams::new();
    let mut data_rows: HashMap<ParamId, Vec<Tensor<2>>> = HashMap::new();
    let mut sampled_rows: HashMap<ParamId, Vec<Tensor<2>>> = HashMap::new();
    let mut losses = Vec::with_capacity(n);
    let mut all_logits = Vec::with_capacity(n);
    for i in 0..n {
        let x = input.clone().narrow(0, i, 1);
        let y = targets.clone().narrow(0, i, 1);
        let logits = forward(model, x.clone());
        if i == 0 {
            let [_, classes] = logits.dims();
            check_targets(n, classes, &targets, |n| n)?;
        }
        let loss = cross_entropy_rows(logits.clone(), y).reshape([1]);
        losses.push(loss.clone().inner());
        all_logits.push(logits.clone().inner());
        let source = GradientsParams::from_grads(loss.backward(), model);
        model.visit(&mut Collect {
            source: &source,
            sums: Some(&mut sums),
            rows: &mut data_rows,
        });
        if i < m {
            // The Fisher rows of a curvature example: (label, weight of its loss). Exact: every
            // class, weighted by √p_c (detached), so Σ_c p_c g_c g_cᵀ; sampled: the drawn labels.
            let rows: Vec<(i64, f64)> = match kind {
                FisherKind::Empirical => Vec::new(),
                FisherKind::Exact { .. } => softmax(logits.inner(), 1)
                    .sqrt()
                    .into_data()
                    .convert::<f64>()
                    .try_into_vec::<f64>()
                    .expect("float data")
                    .into_iter()
                    .enumerate()
                    .map(|(c, w)| (c as i64, w))
                    .collect(),
                FisherKind::Sampled { samples } => {
                    sample_labels(logits.inner(), samples, natgrad.config().seed)
                        .into_iter()
                        .map(|label| (label, 1.0))
                        .collect()
                }
            };
            for (label, weight) in rows {
                let label = Tensor::<1, Int>::from_ints([label as i32], &x.device());
                let loss = cross_entropy_rows(forward(model, x.clone()), label)
                    .reshape([1])
                    .mul_scalar(weight);
                let source = GradientsParams::from_grads(loss.backward(), model);
                model.visit(&mut Collect {
                    source: &source,
                    sums: None,
                    rows: &mut sampled_rows,
                });
            }
        }
    }
    model.visit(&mut Mean {
        grads: &mut sums,
        n: n as f64,
    });
    // F = (1/R) Σ_r g_r g_rᵀ over the R Fisher rows: rows scaled by 1/√R. The empirical
    // Fisher's rows are the first m examples' gradients (the curvature batch).
    let (rows, count) = match kind {
        FisherKind::Empirical => (
            data_rows
                .into_iter()
                .map(|(id, mut rows)| {
                    rows.truncate(m);
                    (id, rows)
                })
                .collect(),
            m,
        ),
        FisherKind::Sampled { samples } => (sampled_rows, m * samples),
        FisherKind::Exact { .. } => (sampled_rows, m),
    };
    let scale = 1.0 / (count as f64).sqrt();
    for (id, rows) in rows {
        BlockFactors::Dense {
            rows: Tensor::cat(rows, 0).mul_scalar(scale),
        }
        .register(id, &mut sums);
    }
    Ok(NaturalGradientOutput {
        loss: Tensor::cat(losses, 0).mean(),
        logits: Tensor::cat(all_logits, 0),
        grads: sums,
    })
}
