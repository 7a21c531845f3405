//! The coupled preconditioning step, a query: `d = (F + λI)⁻¹ g` for every captured parameter,
//! the damped gradient `g / λ` for uncovered ones (under
//! [`UncoveredPolicy::DampedGradient`](crate::UncoveredPolicy)), the KL trust region, and the
//! decision to skip a step whose inputs or direction are not finite. Nothing is counted or
//! consumed here: [`NaturalGradient::apply`] does that.

use burn::module::{Module, ParamId};
use burn::optim::{GradientsParams, LearningRate};
use burn::tensor::Tensor;

use crate::config::CurvatureKind;
use crate::error::NatGradError;
use crate::factors::{reuse_marker_id, Factors};
use crate::kfac::{self, KfacOptions, KfacState};
use crate::optimizer::NaturalGradient;
use crate::solver::{solve, CgOptions, Gradient};

/// A preconditioned step, ready for [`NaturalGradient::apply`].
#[derive(Debug)]
pub struct Preconditioned {
    /// The natural-gradient directions under the parameters' ids, or `None` if the step is to
    /// be skipped ([`skip_reason`](Self::skip_reason) says why). Apply them with
    /// [`NaturalGradient::apply`] (which is what [`NaturalGradient::step`] does).
    pub directions: Option<GradientsParams>,
    /// Predicted `dᵀFd` of the direction before the trust region: with the batch's Fisher rows,
    /// or on a KFAC step that reuses its factors with the Kronecker approximation (NaN there
    /// without a trust region, which is all it would be computed for).
    pub quadratic: f64,
    /// Trust-region factor applied (1 when it did not bind).
    pub scale: f64,
    /// The learning rate the trust region was computed for.
    pub lr: LearningRate,
    /// Conjugate-gradient iterations (0 for the direct solve).
    pub cg_iters: usize,
    /// Final CG relative residual (0 for the direct solve).
    pub residual: f64,
    /// Why the step is skipped, when it is.
    pub skip_reason: Option<String>,
    /// How many tensors `directions` holds.
    pub(crate) count: usize,
    /// With KFAC: every block's updated state, which [`NaturalGradient::apply`] keeps.
    pub(crate) kfac: Vec<KfacState>,
    /// With adaptive damping: `(gᵀd, ‖d‖²)` of the direction before the trust region.
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
            kfac: Vec::new(),
            predicted: None,
            damping: f64::NAN,
            reused: false,
        }
    }
}

impl NaturalGradient {
    /// Computes the natural-gradient directions for `module` from `grads` (as returned by
    /// [`classification`](Self::classification) or
    /// [`per_example_classification`](crate::per_example_classification)), with the learning
    /// rate `lr` for the trust region. A query: nothing is consumed or counted (on error the
    /// caller keeps its module; [`stats`](Self::stats) is unchanged). A learning rate that is not
    /// a finite number > 0, or a direction or residual that is not finite, gives a step to skip
    /// (`directions: None`, with the reason).
    pub fn precondition<M: Module>(
        &self,
        module: &M,
        lr: LearningRate,
        grads: &GradientsParams,
    ) -> Result<Preconditioned, NatGradError> {
        if grads.get::<1>(reuse_marker_id()).is_some() {
            return self.precondition_reused(module, lr, grads);
        }
        let c = &self.config;
        let damping = self.damping();
        let factors = Factors::collect(module, grads, c.uncovered)?;
        if let Some(skip) = invalid_lr(lr) {
            return Ok(skip);
        }
        let solved = match c.curvature {
            CurvatureKind::Full => self.solve_full(&factors, damping),
            CurvatureKind::Kfac {
                decay,
                inverse_period,
            } => {
                let options = KfacOptions {
                    decay,
                    inverse_period,
                    damping,
                    block_limit: self.config.kfac_block_limit,
                    rank: self.config.kfac_rank,
                    sketch: self.config.kfac_sketch,
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
        let uncovered: Vec<Tensor<2>> = factors
            .uncovered
            .iter()
            .map(|u| u.grad.clone().mul_scalar(uncovered_scale))
            .collect();
        // One host read: dᵀFd, plus the CG residual; also a finiteness probe of the direction,
        // since a NaN anywhere in d reaches dᵀFd = ‖U d‖² unless U is zero there, and the sum
        // of d catches that case.
        let probe = directions
            .iter()
            .chain(&uncovered)
            .map(|d| d.clone().sum())
            .reduce(|a, b| a + b)
            .expect("at least one block");
        let mut read = vec![quadratic, probe.mul_scalar(0.0)];
        // For the adaptive damping's predicted change: gᵀd and ‖d‖² (before the trust region).
        let adaptive = c.adaptive_damping.is_some();
        if adaptive {
            let gradients = gradients.unwrap_or_else(|| {
                (0..factors.blocks.len())
                    .map(|i| factors.gradient(i))
                    .collect()
            });
            let (gd, dd) = gradients
                .into_iter()
                .zip(&directions)
                .chain(
                    factors
                        .uncovered
                        .iter()
                        .map(|u| u.grad.clone())
                        .zip(&uncovered),
                )
                .map(|(g, d)| ((g * d.clone()).sum(), d.clone().square().sum()))
                .reduce(|(a, b), (x, y)| (a + x, b + y))
                .expect("at least one block");
            read.push(gd);
            read.push(dd);
        }
        if let Some(r) = residual {
            read.push(r);
        }
        let values: Vec<f64> = Tensor::cat(read, 0)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .expect("float data");
        let quadratic = values[0];
        let predicted = adaptive.then(|| (values[2], values[3]));
        let residual = values
            .get(if adaptive { 4 } else { 2 })
            .copied()
            .unwrap_or(0.0);
        if !values.iter().all(|v| v.is_finite()) {
            return Ok(Preconditioned {
                cg_iters: iterations,
                residual,
                quadratic,
                ..Preconditioned::skipped(
                    lr,
                    format!(
                        "non-finite direction or residual (dᵀFd = {quadratic}, CG residual = \
                         {residual}): a NaN or infinity in the input batch, the loss, the \
                         factors or the solve"
                    ),
                )
            });
        }
        let scale = trust_scale(c.kl_max, lr, quadratic);
        let mut out = GradientsParams::new();
        let count = factors.blocks.len() + factors.uncovered.len();
        let shaped = factors
            .blocks
            .iter()
            .zip(directions)
            .map(|(b, d)| (b.id, d, &b.dims))
            .chain(
                factors
                    .uncovered
                    .iter()
                    .zip(uncovered)
                    .map(|(u, d)| (u.id, d, &u.dims)),
            );
        for (id, d, dims) in shaped {
            let d = if scale < 1.0 { d.mul_scalar(scale) } else { d };
            register_shaped(&mut out, id, d, dims);
        }
        Ok(Preconditioned {
            directions: Some(out),
            quadratic,
            scale,
            lr,
            cg_iters: iterations,
            residual,
            skip_reason: None,
            count,
            kfac,
            predicted,
            damping,
            reused: false,
        })
    }

    /// `(F + λI)⁻¹ g` with the batch's Fisher, coupled or per layer, by the configured solver.
    fn solve_full(&self, factors: &Factors, damping: f64) -> Solved {
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
            let solution = solve(&blocks, gradient, c.solver, damping, &cg);
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

/// A step to skip when the learning rate is not a finite number > 0.
pub(crate) fn invalid_lr(lr: LearningRate) -> Option<Preconditioned> {
    (!lr.is_finite() || lr <= 0.0).then(|| {
        Preconditioned::skipped(
            lr,
            format!("the learning rate is {lr}, not a finite number > 0"),
        )
    })
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
