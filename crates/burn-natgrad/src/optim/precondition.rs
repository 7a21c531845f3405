//! The coupled preconditioning step, a query: `d = (F + λI)⁻¹ g` for every captured parameter,
//! the damped gradient `g / λ` for uncovered ones (under
//! [`UncoveredPolicy::DampedGradient`](crate::UncoveredPolicy)), the step applied from it
//! (weight decay, momentum, the KL trust region: [`applied`](crate::optim::applied)), and the decision
//! to skip a step whose learning rate, inputs or step are not finite. Nothing is counted or
//! consumed here: [`NaturalGradient::apply`] does that.

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{Module, ParamId};
use burn::optim::{GradientsParams, LearningRate};
use burn::tensor::Tensor;

use crate::curvature::full::{solve, FullConfig, Gradient};
use crate::curvature::kfac::{self, KfacOptions, KfacState};
use crate::error::NatGradError;
use crate::factors::products::project;
use crate::factors::{reuse_marker_id, Factors};
use crate::optim::applied::{Entry, Fresh};
use crate::optim::config::Curvature;
use crate::optim::optimizer::NaturalGradient;

/// A preconditioned step, ready for [`NaturalGradient::apply`].
#[derive(Debug)]
pub struct Preconditioned {
    /// The steps `u` to apply (`θ ← θ − lr·u`: the natural-gradient directions with weight
    /// decay, momentum and the trust region) under the parameters' ids, or `None` if the step
    /// is to be skipped ([`skip_reason`](Self::skip_reason) says why). Apply them with
    /// [`NaturalGradient::apply`] (which is what [`NaturalGradient::step`] does). Without
    /// momentum, weight decay and trust region they are the directions `(F + λI)⁻¹ g`.
    pub directions: Option<GradientsParams>,
    /// Predicted `uᵀFu` of the step before the trust region: with the batch's Fisher rows, or
    /// on a KFAC step that reuses its factors with the Kronecker approximation. NaN where it
    /// would cost a product that nothing needs: with momentum or weight decay, or on a KFAC
    /// step that reuses its factors, without a trust region or adaptive damping.
    pub quadratic: f64,
    /// Trust-region factor applied (1 when it did not bind).
    pub scale: f64,
    /// The learning rate: the one rate the [`ModuleLearningRate`] gives every parameter of the
    /// step. [`NaturalGradient::apply`] applies it.
    pub(crate) lr: LearningRate,
    /// Conjugate-gradient iterations (0 for the direct solve).
    pub cg_iters: usize,
    /// Final CG relative residual (0 for the direct solve).
    pub residual: f64,
    /// Why the step is skipped, when it is.
    pub skip_reason: Option<String>,
    /// How many tensors `directions` holds.
    pub(crate) count: usize,
    /// Their ids and shapes.
    pub(crate) params: Vec<(ParamId, Vec<usize>)>,
    /// With momentum: each parameter's new velocity, flattened.
    pub(crate) velocities: Vec<(ParamId, Tensor<1>)>,
    /// With KFAC: every block's updated state, which [`NaturalGradient::apply`] keeps.
    pub(crate) kfac: Vec<KfacState>,
    /// With adaptive damping: `(gᵀu, ‖u‖²)` of the step before the trust region.
    pub(crate) predicted: Option<(f64, f64)>,
    /// The damping `λ` the direction was solved with.
    pub(crate) damping: f64,
    /// A KFAC step that reused the factors in force.
    pub(crate) reused: bool,
}

impl Preconditioned {
    pub(crate) fn skipped(lr: LearningRate, reason: String) -> Self {
        Self {
            directions: None,
            quadratic: f64::NAN,
            scale: 0.0,
            lr,
            cg_iters: 0,
            residual: 0.0,
            skip_reason: Some(reason),
            count: 0,
            params: Vec::new(),
            velocities: Vec::new(),
            kfac: Vec::new(),
            predicted: None,
            damping: f64::NAN,
            reused: false,
        }
    }
}

impl Preconditioned {
    /// The learning rate the step was formed for, which [`NaturalGradient::apply`] applies.
    pub fn lr(&self) -> LearningRate {
        self.lr
    }
}

impl NaturalGradient {
    /// Computes the step for `module` from `grads` (as returned by
    /// [`classification`](Self::classification) or
    /// [`per_example_classification`](crate::per_example_classification)) for the learning rate
    /// `lr` (a number, or Burn's [`ModuleLearningRate`], which must give every parameter of the
    /// step the same rate). A query: nothing is consumed or counted (on error the caller keeps
    /// its module; [`stats`](Self::stats) is unchanged). A learning rate that is not a finite
    /// number > 0, or a direction, weight or residual that is not finite, gives a step to skip
    /// (`directions: None`, with the reason).
    pub fn precondition<M: Module>(
        &self,
        module: &M,
        lr: impl Into<ModuleLearningRate>,
        grads: &GradientsParams,
    ) -> Result<Preconditioned, NatGradError> {
        let lr = lr.into();
        if grads.get::<1>(reuse_marker_id()).is_some() || self.reuse_after_resume() {
            return self.precondition_reused(module, &lr, grads);
        }
        let c = &self.config;
        let damping = self.damping();
        let factors = Factors::collect(module, grads, c.uncovered)?;
        let params = factors
            .blocks
            .iter()
            .map(|b| (b.id, b.path.as_str()))
            .chain(factors.uncovered.iter().map(|u| (u.id, u.path.as_str())));
        let lr = match one_rate(&lr, params)? {
            Ok(lr) => lr,
            Err(skip) => return Ok(skip),
        };
        let solved = match &c.curvature {
            Curvature::Full(full) => self.solve_full(full, &factors, damping),
            Curvature::Kfac(k) => {
                let options = KfacOptions {
                    decay: k.factor_decay,
                    inverse_period: k.inverse_period(),
                    damping,
                    block_limit: k.block_limit,
                    rank: k.rank(),
                };
                match kfac::solve(&factors, |id| self.kfac_state(id), &options) {
                    Ok(s) => Solved {
                        directions: s.directions,
                        quadratic: s.ud.square().sum(),
                        residual: None,
                        iterations: 0,
                        kfac: s.states,
                        gradients: Some(s.gradients),
                    },
                    Err(reason) => return Ok(Preconditioned::skipped(lr, reason)),
                }
            }
        };
        let Solved {
            directions,
            quadratic,
            residual,
            iterations,
            kfac,
            gradients,
        } = solved;
        // Parameters no rule covers: their Fisher block is zero, `d = g / λ` (or `scale · g`).
        let uncovered_scale = c.uncovered.scale(damping);
        let covered = factors.blocks.len();
        let entries: Vec<Entry> = factors
            .blocks
            .iter()
            .zip(directions)
            .map(|(b, d)| Entry {
                id: b.id,
                dims: b.dims.clone(),
                d,
            })
            .chain(factors.uncovered.iter().map(|u| Entry {
                id: u.id,
                dims: u.dims.clone(),
                d: u.grad.clone().mul_scalar(uncovered_scale),
            }))
            .collect();
        let groups: Vec<Vec<usize>> = if c.curvature.as_full().is_some_and(|f| f.block_diagonal) {
            factors.by_group()
        } else {
            vec![(0..covered).collect()]
        };
        let fresh = Fresh {
            entries,
            covered,
            fresh_quadratic: Some(quadratic),
            quadratic: Box::new(|u: &[Tensor<2>]| {
                groups
                    .iter()
                    .map(|group| {
                        let blocks: Vec<_> = group.iter().map(|&i| &factors.blocks[i]).collect();
                        let v: Vec<_> = group.iter().map(|&i| u[i].clone()).collect();
                        project(&blocks, &v).square().sum()
                    })
                    .reduce(|a, b| a + b)
                    .expect("at least one group")
            }),
            gradient: Box::new(|i: usize| match &gradients {
                Some(g) if i < covered => g[i].clone(),
                _ if i < covered => factors.gradient(i),
                _ => factors.uncovered[i - covered].grad.clone(),
            }),
            extra: residual,
        };
        let formed = match self.form_step(module, lr, fresh) {
            Ok(formed) => formed,
            Err(e) => return Ok(Preconditioned::not_finite(lr, e, iterations)),
        };
        Ok(formed.into_preconditioned(lr, iterations, kfac, damping, false))
    }

    /// `(F + λI)⁻¹ g` with the batch's Fisher, coupled or per layer, by the configured solver.
    fn solve_full(&self, full: &FullConfig, factors: &Factors, damping: f64) -> Solved {
        let groups: Vec<Vec<usize>> = if full.block_diagonal {
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
            let solution = solve(&blocks, gradient, &full.solver, damping);
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
        Solved {
            directions: directions
                .into_iter()
                .map(|d| d.expect("every block solved"))
                .collect(),
            quadratic: quadratic.expect("at least one group"),
            residual,
            iterations,
            kfac: Vec::new(),
            gradients: None,
        }
    }
}

/// The directions of the captured blocks (in block order), `dᵀFd`, the largest CG residual, the
/// CG iterations and, with KFAC, the blocks' new states and the gradients it formed.
struct Solved {
    directions: Vec<Tensor<2>>,
    quadratic: Tensor<1>,
    residual: Option<Tensor<1>>,
    iterations: usize,
    kfac: Vec<KfacState>,
    gradients: Option<Vec<Tensor<2>>>,
}

/// The one rate `lr` gives every parameter of a step (`params`: ids and module paths, as Burn's
/// `ModuleOptimizer` matches them), or a step to skip when it is not a finite number > 0; an
/// error when the parameters get different rates.
pub(crate) fn one_rate<'a>(
    lr: &ModuleLearningRate,
    params: impl Iterator<Item = (ParamId, &'a str)>,
) -> Result<Result<LearningRate, Preconditioned>, NatGradError> {
    let mut rates: Vec<(f64, String)> = Vec::new();
    for (id, path) in params {
        let rate = lr.lr_from_param(id, Some(path));
        if !rates.iter().any(|(r, _)| r.to_bits() == rate.to_bits()) {
            rates.push((rate, path.to_string()));
        }
    }
    if rates.len() > 1 {
        return Err(NatGradError::GroupLearningRates { rates });
    }
    let lr = rates.first().map_or_else(|| lr.base(), |(r, _)| *r);
    Ok(if !lr.is_finite() || lr <= 0.0 {
        Err(Preconditioned::skipped(
            lr,
            format!("the learning rate is {lr}, not a finite number > 0"),
        ))
    } else {
        Ok(lr)
    })
}

/// Copies the rank-`rank` tensor registered under `id` from `from` into `to`.
pub(crate) fn copy_shaped(
    from: &GradientsParams,
    to: &mut GradientsParams,
    id: ParamId,
    rank: usize,
) {
    macro_rules! copy {
        ($r:literal) => {
            if let Some(t) = from.get::<$r>(id) {
                to.register::<$r>(id, t)
            }
        };
    }
    match rank {
        1 => copy!(1),
        2 => copy!(2),
        3 => copy!(3),
        4 => copy!(4),
        5 => copy!(5),
        6 => copy!(6),
        r => panic!("natural gradient: parameters of rank {r} are not supported (at most 6)"),
    }
}

/// The KL trust region's factor: the largest `s ≤ 1` with `½ lr² s² dᵀFd ≤ kl_max`.
pub(crate) fn trust_scale(kl_max: Option<f64>, lr: LearningRate, quadratic: f64) -> f64 {
    match kl_max {
        Some(kl_max) if quadratic > 0.0 => (2.0 * kl_max / (lr * lr * quadratic)).sqrt().min(1.0),
        _ => 1.0,
    }
}

/// Registers a matrix-view tensor under `id` with the parameter's rank and shape (the view is
/// the parameter read row-major, see the layer rules).
pub(crate) fn register_shaped(
    out: &mut GradientsParams,
    id: ParamId,
    d: Tensor<2>,
    dims: &[usize],
) {
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
