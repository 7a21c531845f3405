//! The natural-gradient optimizer: configuration, the coupled preconditioning step, and the
//! per-tensor part that plugs into Burn's [`ModuleOptimizer`].
//!
//! One step (Amari 1998; Martens 2020):
//!
//! 1. `d = (F + λI)⁻¹ g` with Tikhonov damping `λ`, `F` coupled across all captured parameters
//!    (or block-diagonal per layer), solved by a [`SolverKind`];
//! 2. KL trust region: since `KL(p_θ ‖ p_{θ − ηd}) ≈ ½ η² dᵀFd`, `d` is rescaled so that
//!    `½ η² dᵀFd ≤ kl_max` (the natural-gradient step size rule of Pascanu & Bengio, "Revisiting
//!    Natural Gradient for Deep Networks", 2014, and of TRPO);
//! 3. the per-tensor part ([`NaturalGradient`] as a Burn [`Optimizer`]) adds weight decay,
//!    applies momentum and the learning rate, exactly as Burn's SGD does, so that
//!    [`ModuleOptimizer`]'s records and the Learner's checkpoints keep working.
//!
//! A direction or residual that is not finite skips the step: the weights and the momentum are
//! left untouched, a warning is logged and [`StepStats::skipped`] counts it.

use std::sync::{Arc, Mutex};

use burn::config::Config;
use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{Module, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    GradientsParams, LearningRate, ModuleOptimizer, Optimizer, Sgd, SgdConfig, SgdState,
};
use burn::tensor::{Device, Int, Tensor};

use crate::capture::Capture;
use crate::error::NatGradError;
use crate::factors::{gradient_weight_id, BlockFactors, DataRows, Factors};
use crate::fisher::{check_targets, cross_entropy_rows, fisher_scale, labels_for, FisherKind};
use crate::solver::{solve, CgOptions, Gradient, SolverKind};

/// Configuration of the [`NaturalGradient`] optimizer.
#[derive(Config, Debug)]
pub struct NaturalGradientConfig {
    /// Which Fisher preconditions the gradient. Default: [`FisherKind::Empirical`].
    #[config(default = "FisherKind::Empirical")]
    pub fisher: FisherKind,
    /// How `(F + λI) d = g` is solved. Default: [`SolverKind::Gram`] (exact).
    #[config(default = "SolverKind::Gram")]
    pub solver: SolverKind,
    /// Tikhonov damping `λ > 0` added to the Fisher. Default: 1.0. Small values trust the
    /// minibatch Fisher more (larger, riskier steps); large values approach SGD with learning
    /// rate `lr / λ`.
    #[config(default = 1.0)]
    pub damping: f64,
    /// KL trust region: the step is shrunk so that `½ lr² dᵀFd ≤ kl_max`. `None` (default):
    /// no trust region.
    #[config(default = "None")]
    pub kl_max: Option<f64>,
    /// Use the per-layer block-diagonal Fisher instead of the full, coupled one. Default: false.
    #[config(default = false)]
    pub block_diagonal: bool,
    /// Estimate the Fisher on the first `m` examples of each batch only, a curvature
    /// mini-batch (Martens, "Deep learning via Hessian-free optimization", 2010, §4.3; Byrd,
    /// Chin, Neveitt & Nocedal, "On the Use of Stochastic Hessian Information in Optimization
    /// Methods for Machine Learning", 2011), while the gradient still averages all `N`
    /// examples. The Gram system is then `m × m`, its products cost `m·N` instead of `N²` per
    /// layer, and the sampled Fisher draws labels for `m` examples only. Batches are assumed
    /// shuffled, so that their first `m` examples are a random subset. `None` (default), or
    /// `m ≥ N`: the whole batch.
    #[config(default = "None")]
    pub curvature_batch: Option<usize>,
    /// Conjugate-gradient iteration cap (CG solvers). Default: 50.
    #[config(default = 50)]
    pub cg_max_iters: usize,
    /// Conjugate-gradient relative tolerance `‖r‖ ≤ tol ‖b‖`. Default: 1e-6.
    #[config(default = 1e-6)]
    pub cg_tolerance: f64,
    /// Check CG convergence on the host every this many iterations (one device read each);
    /// 0: never, always run `cg_max_iters`. Default: 10.
    #[config(default = 10)]
    pub cg_check_every: usize,
    /// Momentum applied to the natural-gradient direction (as Burn's SGD). Default: none.
    pub momentum: Option<MomentumConfig>,
    /// Weight decay added to the natural-gradient direction (as Burn's SGD). Default: none.
    pub weight_decay: Option<WeightDecayConfig>,
}

fn check_positive(field: &'static str, value: f64) -> Result<(), NatGradError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(NatGradError::InvalidConfig {
            field,
            reason: format!("must be a finite number > 0, got {value}"),
        });
    }
    Ok(())
}

impl NaturalGradientConfig {
    /// Checks every value; the error names the field and what it accepts.
    pub fn validate(&self) -> Result<(), NatGradError> {
        check_positive("damping", self.damping)?;
        if let Some(kl) = self.kl_max {
            check_positive("kl_max", kl)?;
        }
        if let FisherKind::Sampled { samples: 0 } = self.fisher {
            return Err(NatGradError::InvalidConfig {
                field: "fisher",
                reason: "Sampled { samples } needs at least one sample per example, got 0".into(),
            });
        }
        if self.curvature_batch == Some(0) {
            return Err(NatGradError::InvalidConfig {
                field: "curvature_batch",
                reason: "must be at least 1 example (None: the whole batch), got 0".into(),
            });
        }
        if self.solver != SolverKind::Gram {
            if self.cg_max_iters == 0 {
                return Err(NatGradError::InvalidConfig {
                    field: "cg_max_iters",
                    reason: "must be at least 1 for a conjugate-gradient solver, got 0".into(),
                });
            }
            check_positive("cg_tolerance", self.cg_tolerance)?;
        }
        if let Some(m) = &self.momentum {
            for (field, v) in [
                ("momentum.momentum", m.momentum),
                ("momentum.dampening", m.dampening),
            ] {
                if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                    return Err(NatGradError::InvalidConfig {
                        field,
                        reason: format!("must lie in [0, 1], got {v}"),
                    });
                }
            }
        }
        if let Some(w) = &self.weight_decay {
            if !w.penalty.is_finite() || w.penalty < 0.0 {
                return Err(NatGradError::InvalidConfig {
                    field: "weight_decay.penalty",
                    reason: format!("must be a finite number >= 0, got {}", w.penalty),
                });
            }
        }
        Ok(())
    }

    /// Builds the optimizer, or says which value is invalid.
    pub fn try_build(&self) -> Result<NaturalGradient, NatGradError> {
        self.validate()?;
        let mut sgd = SgdConfig::new();
        if let Some(m) = &self.momentum {
            sgd = sgd.with_momentum(Some(m.clone()));
        }
        if let Some(w) = &self.weight_decay {
            sgd = sgd.with_weight_decay(Some(w.clone()));
        }
        Ok(NaturalGradient {
            config: self.clone(),
            sgd: sgd.build(),
            shared: Arc::new(Mutex::new(Shared::default())),
        })
    }

    /// Builds the optimizer.
    ///
    /// # Panics
    /// With the message of [`validate`](Self::validate) if a value is invalid; use
    /// [`try_build`](Self::try_build) to handle it.
    pub fn build(&self) -> NaturalGradient {
        self.try_build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The optimizer and its per-tensor part wrapped in Burn's [`ModuleOptimizer`], which must
    /// be used together: keep the [`NaturalGradient`] where `TrainStep::optimize` can reach it
    /// (e.g. a `#[module(skip)]` field of the model) and hand the [`ModuleOptimizer`] to the
    /// `Learner`.
    ///
    /// # Panics
    /// If a value is invalid (see [`validate`](Self::validate)).
    pub fn init(&self) -> (NaturalGradient, ModuleOptimizer) {
        let ng = self.build();
        let optim = ng.module_optimizer();
        (ng, optim)
    }
}

/// Counters of the coupled step, shared by all clones of one [`NaturalGradient`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Steps applied.
    pub steps: u64,
    /// Steps skipped because the direction or the residual was not finite.
    pub skipped: u64,
    /// Predicted KL divergence `½ lr² dᵀFd` of the last applied step (after the trust region).
    pub last_kl: f64,
    /// Trust-region factor of the last applied step (1 when it did not bind).
    pub last_scale: f64,
    /// Conjugate-gradient iterations of the last step (0 for the direct solve).
    pub last_cg_iters: usize,
    /// Final CG relative residual of the last step (0 for the direct solve).
    pub last_residual: f64,
}

/// Natural-gradient descent for Burn: `θ ← θ − η (F + λI)⁻¹ g` with the empirical or sampled
/// Fisher `F` of a softmax classifier, built from per-example factors captured in one backward
/// pass (Amari, "Natural Gradient Works Efficiently in Learning", 1998).
///
/// It has two faces:
/// * the coupled step ([`capture`](Self::capture), [`classification`](Self::classification),
///   [`step`](Self::step)), which needs all parameters at once;
/// * Burn's per-tensor [`Optimizer`] (momentum, weight decay, learning rate), which
///   [`ModuleOptimizer`] wraps, so records and checkpoints are Burn's own.
///
/// Clones share their [`StepStats`].
#[derive(Clone)]
pub struct NaturalGradient {
    config: NaturalGradientConfig,
    sgd: Sgd,
    shared: Arc<Mutex<Shared>>,
}

/// State shared by the clones of one [`NaturalGradient`]: the counters, and how many
/// preconditioned directions the per-tensor part may still consume.
#[derive(Debug, Default)]
struct Shared {
    stats: StepStats,
    pending: usize,
}

impl core::fmt::Debug for NaturalGradient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NaturalGradient")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What [`NaturalGradient::classification`] returns: the data loss and logits for metrics, and
/// the gradients with the per-example factors for [`NaturalGradient::step`].
#[derive(Debug)]
pub struct NaturalGradientOutput {
    /// Mean cross-entropy on the data labels, `[1]` (not tracked by autodiff).
    pub loss: Tensor<1>,
    /// Logits of the batch (the data copy), `[N, C]` (not tracked by autodiff).
    pub logits: Tensor<2>,
    /// The Fisher factors under derived ids, and the gradients: those of captured parameters
    /// implicit (`g = U_dᵀ (w·1)` over the data rows, see [`Factors::gradient`]), those of
    /// uncaptured ones (none, unless the model has some) explicit. Pass it unchanged to
    /// [`NaturalGradient::step`] or [`NaturalGradient::precondition`].
    pub grads: GradientsParams,
}

/// A preconditioned step, ready for the per-tensor optimizer.
#[derive(Debug)]
pub struct Preconditioned {
    /// The natural-gradient directions under the parameters' ids, or `None` if the step is
    /// skipped (non-finite direction or residual). Apply them with this `NaturalGradient`'s
    /// [`ModuleOptimizer`]: `optim.step(lr, module, directions)`, which is what
    /// [`NaturalGradient::step`] does.
    pub directions: Option<GradientsParams>,
    /// Predicted `dᵀFd` of the direction before the trust region.
    pub quadratic: f64,
    /// Trust-region factor applied (1 when it did not bind).
    pub scale: f64,
}

impl NaturalGradient {
    /// The configuration it was built from.
    pub fn config(&self) -> &NaturalGradientConfig {
        &self.config
    }

    /// A snapshot of the step counters.
    pub fn stats(&self) -> StepStats {
        self.shared.lock().expect("natgrad lock").stats.clone()
    }

    /// The per-tensor part wrapped in Burn's [`ModuleOptimizer`]. It accepts only directions
    /// from this `NaturalGradient` (or its clones): raw gradients make it panic with
    /// [`NatGradError::NotPreconditioned`].
    pub fn module_optimizer(&self) -> ModuleOptimizer {
        ModuleOptimizer::from(self.clone())
    }

    /// How many examples of a batch of `n` the Fisher is estimated on: the curvature batch,
    /// at most `n` (see [`NaturalGradientConfig::curvature_batch`]).
    pub fn curvature_rows(&self, n: usize) -> usize {
        self.config.curvature_batch.map_or(n, |m| m.min(n))
    }

    /// Starts a captured training step: returns an enabled [`Capture`] and the input to run the
    /// forward pass on. For the empirical Fisher it is the batch itself. For the sampled Fisher
    /// with `k` samples it is the batch followed by `k` copies of its first `m` examples (the
    /// curvature batch, all of it by default), stacked along dimension 0: `N + k·m` rows. The
    /// capture computes a layer whose input carries no gradient (the first) on the `N` rows of
    /// the batch only, and copies its output rows for the copies.
    pub fn capture<const D: usize>(&self, input: Tensor<D>) -> (Capture, Tensor<D>) {
        let FisherKind::Sampled { samples } = self.config.fisher else {
            return (Capture::new(), input);
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
        let kind = self.config.fisher;
        let [rows, classes] = logits.dims();
        let n = check_targets(rows, classes, &targets, |n| {
            n + (kind.copies() - 1) * self.curvature_rows(n)
        })?;
        let m = self.curvature_rows(n);
        if !capture.is_enabled() || capture.is_empty() {
            return Err(NatGradError::InvalidInput(
                "the capture recorded no layer: run the forward pass with the capture from \
                 `NaturalGradient::capture` and route each Linear layer through \
                 `Capture::linear`"
                    .into(),
            ));
        }
        let labels = labels_for(kind, &logits, targets, m);
        let per_row = cross_entropy_rows(logits.clone(), labels);
        let data_loss = per_row.clone().slice(0..n).mean().inner();
        let gradients = per_row.sum().div_scalar(n as f64).backward();
        let layers = capture.into_factors(&gradients)?;
        let mut grads = GradientsParams::from_grads(gradients, model);

        // Every row is scaled alike, so that the Fisher is UᵀU; the gradient is then
        // g = Σ xᵢᵀΔᵢ = U_dᵀ(1/scale · 1) over the data rows U_d, left implicit (the capture kept
        // autodiff from computing it). Empirical over the whole batch: the data rows are the
        // Fisher rows. Empirical with a curvature batch: the Fisher rows are the first m data
        // rows. Sampled: the data rows come first, then the Fisher's.
        let scale = fisher_scale(kind, n, m).sqrt();
        let w = Tensor::<1>::from_floats([1.0 / scale as f32], &logits.clone().inner().device());
        grads.register(gradient_weight_id(), w);
        for layer in &layers {
            for (id, block) in layer.blocks() {
                let is_weight = matches!(block, BlockFactors::Weight { .. });
                let (fisher, data) = match kind {
                    FisherKind::Empirical if m == n => (block, None),
                    FisherKind::Empirical => (
                        block.clone().slice_rows(0, m),
                        // The Fisher rows' input is the first m rows of the data's.
                        Some((block, is_weight)),
                    ),
                    FisherKind::Sampled { .. } => {
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
        }
        // Every parameter with a gradient must now have factors: names those the capture missed.
        Factors::from_grads(model, &grads)?;
        Ok(NaturalGradientOutput {
            loss: data_loss,
            logits: logits.slice(0..n).inner(),
            grads,
        })
    }

    /// Computes the natural-gradient directions for `module` from `grads` (as returned by
    /// [`classification`](Self::classification) or
    /// [`per_example_classification`](crate::per_example_classification)), with the learning
    /// rate `lr` for the trust region. Nothing is consumed: on error the caller keeps its module.
    pub fn precondition<M: Module>(
        &self,
        module: &M,
        lr: LearningRate,
        grads: &GradientsParams,
    ) -> Result<Preconditioned, NatGradError> {
        let factors = Factors::from_grads(module, grads)?;
        let c = &self.config;
        let cg = CgOptions {
            max_iters: c.cg_max_iters,
            tolerance: c.cg_tolerance,
            check_every: c.cg_check_every,
        };
        let groups: Vec<Vec<usize>> = if c.block_diagonal {
            factors.by_group()
        } else {
            vec![(0..factors.blocks.len()).collect()]
        };
        let mut directions: Vec<Option<Tensor<2>>> = vec![None; factors.blocks.len()];
        let mut quadratic: Option<Tensor<1>> = None;
        let mut residual: Option<Tensor<1>> = None;
        let mut iterations = 0;
        for group in groups {
            let blocks: Vec<_> = group.iter().map(|&i| &factors.blocks[i]).collect();
            let gradient = match &factors.gradient_weight {
                Some(w) if blocks.iter().all(|b| b.grad.is_none()) => Gradient::Implicit(w.clone()),
                _ => Gradient::Explicit(group.iter().map(|&i| factors.gradient(i)).collect()),
            };
            let solution = solve(&blocks, gradient, c.solver, c.damping, &cg);
            let q = solution.ud.clone().square().sum();
            quadratic = Some(match quadratic {
                Some(acc) => acc + q,
                None => q,
            });
            if let Some(r) = solution.residual {
                residual = Some(match residual {
                    Some(acc) => acc.max_pair(r),
                    None => r,
                });
            }
            iterations = iterations.max(solution.iterations);
            for (&i, d) in group.iter().zip(solution.direction) {
                directions[i] = Some(d);
            }
        }
        // One host read: dᵀFd, plus the CG residual; also a finiteness probe of the direction,
        // since a NaN anywhere in d reaches dᵀFd = ‖U d‖² unless U is zero there, and the sum
        // of d catches that case.
        let probe = directions
            .iter()
            .flatten()
            .map(|d| d.clone().sum())
            .reduce(|a, b| a + b)
            .expect("at least one block");
        let mut read = vec![
            quadratic.expect("at least one group"),
            probe.mul_scalar(0.0),
        ];
        if let Some(r) = residual.clone() {
            read.push(r);
        }
        let values: Vec<f64> = Tensor::cat(read, 0)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .expect("float data");
        let quadratic = values[0];
        let finite = values.iter().all(|v| v.is_finite());
        let residual_value = values.get(2).copied().unwrap_or(0.0);

        let mut shared = self.shared.lock().expect("natgrad lock");
        let stats = &mut shared.stats;
        stats.last_cg_iters = iterations;
        stats.last_residual = residual_value;
        if !finite {
            stats.skipped += 1;
            log::warn!(
                "natural gradient: non-finite direction or residual (dᵀFd = {quadratic}, CG \
                 residual = {residual_value}); step skipped, weights unchanged ({} skipped so far)",
                stats.skipped
            );
            return Ok(Preconditioned {
                directions: None,
                quadratic,
                scale: 0.0,
            });
        }
        let scale = match c.kl_max {
            Some(kl_max) if quadratic > 0.0 && lr > 0.0 => {
                (2.0 * kl_max / (lr * lr * quadratic)).sqrt().min(1.0)
            }
            _ => 1.0,
        };
        stats.steps += 1;
        stats.last_scale = scale;
        stats.last_kl = 0.5 * lr * lr * quadratic * scale * scale;
        shared.pending = factors.blocks.len();
        drop(shared);

        let mut out = GradientsParams::new();
        for (block, d) in factors.blocks.iter().zip(directions) {
            let d = d.expect("every block solved");
            let d = if scale < 1.0 { d.mul_scalar(scale) } else { d };
            register_shaped(&mut out, block.id, d, &block.dims);
        }
        Ok(Preconditioned {
            directions: Some(out),
            quadratic,
            scale,
        })
    }

    /// One natural-gradient step: [`precondition`](Self::precondition), then the per-tensor
    /// update (weight decay, momentum, learning rate) by `optim`. A skipped step returns the
    /// module unchanged. Call it from `TrainStep::optimize`, or from a custom loop.
    ///
    /// # Panics
    /// With a message saying what to change, if `grads` carry no factors (e.g. gradient
    /// accumulation or multi-device training was enabled) or miss some parameters; use
    /// [`precondition`](Self::precondition) to handle those errors.
    pub fn step<M: Module>(
        &self,
        optim: &mut ModuleOptimizer,
        lr: impl Into<ModuleLearningRate>,
        module: M,
        grads: GradientsParams,
    ) -> M {
        let lr = lr.into();
        let pre = self
            .precondition(&module, lr.base(), &grads)
            .unwrap_or_else(|e| panic!("{e}"));
        match pre.directions {
            Some(directions) => optim.step(lr, module, directions),
            None => module,
        }
    }
}

/// Registers a matrix-view tensor under `id` with the parameter's rank and shape.
fn register_shaped(out: &mut GradientsParams, id: ParamId, d: Tensor<2>, dims: &[usize]) {
    macro_rules! reg {
        ($r:literal) => {{
            let shape: [usize; $r] = dims.try_into().expect("rank");
            out.register::<$r>(id, d.reshape(shape))
        }};
    }
    match dims.len() {
        1 => reg!(1),
        2 => reg!(2),
        3 => reg!(3),
        4 => reg!(4),
        5 => reg!(5),
        6 => reg!(6),
        r => panic!("natural gradient: parameters of rank {r} are not supported (at most 6)"),
    }
}

impl Optimizer for NaturalGradient {
    type State<const D: usize> = SgdState<D>;

    /// The per-tensor part: `grad` is the natural-gradient direction computed by
    /// [`NaturalGradient::precondition`]; weight decay, momentum and `lr` are applied as Burn's
    /// SGD applies them.
    ///
    /// # Panics
    /// When handed more tensors than the last [`precondition`](NaturalGradient::precondition)
    /// produced, i.e. raw gradients: `TrainStep::optimize` was not overridden, the Learner ran
    /// multi-device training (`optimize_multi`), or the [`ModuleOptimizer`] comes from another
    /// `NaturalGradient` than the one that preconditioned.
    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        {
            let mut shared = self.shared.lock().expect("natgrad lock");
            if shared.pending == 0 {
                drop(shared);
                panic!("{}", NatGradError::NotPreconditioned);
            }
            shared.pending -= 1;
        }
        self.sgd.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        Sgd::to_device(state, device)
    }
}
