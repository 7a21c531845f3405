//! The step that is applied, formed from the fresh natural-gradient directions: weight decay and
//! momentum (as Burn's SGD forms them), then the KL trust region on the result, so that
//! [`kl_max`](crate::NaturalGradientConfig::kl_max) bounds what moves the weights.
//!
//! For each parameter, with its fresh direction `d`, its value `θ`, the penalty `w` and the
//! momentum `μ` with dampening `τ` (Burn's `SgdConfig`):
//!
//! * `g = d + w θ`;
//! * `v = μ v_prev + (1 − τ) g` (`v = g` on the first step), `u = v`, or `u = g + μ v` with
//!   Nesterov's momentum; without momentum `u = g`;
//! * the trust region's factor `s ≤ 1` with `½ lr² s² uᵀFu ≤ kl_max` (Pascanu & Bengio 2014),
//!   `F` the curvature the direction was solved with;
//! * the applied step is `−lr s u`, and the velocity kept for the next step is `s v`, so that
//!   momentum carries the steps actually taken (as kfac-jax's momentum carries the previous
//!   update; Martens & Grosse 2015, §7).
//!
//! The quadratic model of the adaptive damping uses the same applied step: `gᵀu`, `‖u‖²` and
//! `uᵀFu` (see [`LastStep`](crate::optim::damping::LastStep)).

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate};
use burn::tensor::Tensor;

use crate::curvature::kfac::KfacState;
use crate::optim::optimizer::NaturalGradient;
use crate::optim::precondition::{register_shaped, trust_scale, Preconditioned};

/// One parameter's fresh direction in its matrix view.
pub(crate) struct Entry {
    pub id: ParamId,
    pub dims: Vec<usize>,
    pub d: Tensor<2>,
}

/// `vᵀFv` of vectors given for a step's covered entries, in their views.
pub(crate) type QuadraticForm<'a> = Box<dyn Fn(&[Tensor<2>]) -> Tensor<1> + 'a>;

/// What a preconditioning path hands over to form the applied step.
pub(crate) struct Fresh<'a> {
    /// The directions: the curvature's blocks first (in the order `quadratic` takes them), then
    /// the parameters outside it (a zero Fisher block).
    pub entries: Vec<Entry>,
    /// How many of `entries` the curvature covers.
    pub covered: usize,
    /// `dᵀFd` of the fresh directions, when the solve gave it for free.
    pub fresh_quadratic: Option<Tensor<1>>,
    /// `vᵀFv` of vectors given for the covered entries, in their views.
    pub quadratic: QuadraticForm<'a>,
    /// The gradient of entry `i` in its view (for the adaptive damping's `gᵀu`).
    pub gradient: Box<dyn Fn(usize) -> Tensor<2> + 'a>,
    /// More values to read with the same host read (a CG residual), checked for finiteness.
    pub extra: Option<Tensor<1>>,
}

/// The applied step's values read on the host.
pub(crate) struct Formed {
    pub directions: GradientsParams,
    pub count: usize,
    pub quadratic: f64,
    pub scale: f64,
    pub predicted: Option<(f64, f64)>,
    pub extra: Option<f64>,
    pub velocities: Vec<(ParamId, Tensor<1>)>,
    pub params: Vec<(ParamId, Vec<usize>)>,
}

/// The float parameters of a module, flattened, by id (for the weight decay).
struct Values(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().inner();
        let numel = value.shape().num_elements();
        self.0.insert(param.id, value.reshape([numel]));
    }
}

impl NaturalGradient {
    /// Forms the applied step from `fresh` for the learning rate `lr`, or the reason to skip it
    /// (a value that is not finite: the direction, a weight, a velocity or `extra`).
    pub(crate) fn form_step<M: Module>(
        &self,
        module: &M,
        lr: LearningRate,
        fresh: Fresh<'_>,
    ) -> Result<Formed, (String, f64, Option<f64>)> {
        let c = &self.config;
        let penalty = c.weight_decay.as_ref().map(|w| w.penalty);
        let momentum = c.momentum.as_ref();
        let values = penalty.map(|_| {
            let mut values = Values(HashMap::new());
            module.visit(&mut values);
            values.0
        });
        let previous: Vec<Option<Tensor<2>>> = {
            let shared = self.lock();
            fresh
                .entries
                .iter()
                .map(|e| {
                    let v = momentum.and(shared.velocity.get(&e.id).cloned());
                    v.filter(|v| v.dims()[0] == e.d.shape().num_elements())
                        .map(|v| v.reshape(e.d.dims()))
                })
                .collect()
        };
        let mut velocities = Vec::new();
        let mut steps = Vec::with_capacity(fresh.entries.len());
        for (e, previous) in fresh.entries.iter().zip(previous) {
            let view = e.d.dims();
            let g = match (penalty, &values) {
                (Some(w), Some(values)) => {
                    let theta = values[&e.id].clone().reshape(view);
                    e.d.clone() + theta.mul_scalar(w)
                }
                _ => e.d.clone(),
            };
            let u = match momentum {
                Some(m) => {
                    let v = match previous {
                        Some(v) => {
                            g.clone().mul_scalar(1.0 - m.dampening) + v.mul_scalar(m.momentum)
                        }
                        _ => g.clone(),
                    };
                    velocities.push((e.id, v.clone()));
                    if m.nesterov {
                        v.mul_scalar(m.momentum) + g
                    } else {
                        v
                    }
                }
                None => g,
            };
            steps.push(u);
        }
        let unchanged = penalty.is_none() && momentum.is_none();
        let needs_quadratic = c.kl_max.is_some() || c.adaptive_damping.is_some();
        let quadratic = match fresh.fresh_quadratic {
            Some(q) if unchanged => Some(q),
            _ if needs_quadratic => Some((fresh.quadratic)(&steps[..fresh.covered])),
            _ => None,
        };
        // One host read: uᵀFu, a finiteness probe of the step (the sum of each tensor: finite
        // exactly when its entries are, barring an overflow of the sum), the adaptive damping's
        // gᵀu and ‖u‖², and `extra`.
        let probe = steps
            .iter()
            .map(|u| u.clone().sum())
            .reduce(|a, b| a + b)
            .expect("at least one parameter");
        let device = probe.device();
        let mut read = vec![
            quadratic
                .clone()
                .unwrap_or_else(|| Tensor::zeros([1], &device)),
            probe.mul_scalar(0.0),
        ];
        let adaptive = c.adaptive_damping.is_some();
        if adaptive {
            let (gu, uu) = steps
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let g = (fresh.gradient)(i);
                    ((g * u.clone()).sum(), u.clone().square().sum())
                })
                .reduce(|(a, b), (x, y)| (a + x, b + y))
                .expect("at least one parameter");
            read.push(gu);
            read.push(uu);
        }
        read.extend(fresh.extra.clone());
        let values: Vec<f64> = Tensor::cat(read, 0)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .expect("float data");
        let q = if quadratic.is_some() {
            values[0]
        } else {
            f64::NAN
        };
        let predicted = adaptive.then(|| (values[2], values[3]));
        let extra = fresh.extra.is_some().then(|| values[values.len() - 1]);
        if !values.iter().all(|v| v.is_finite()) {
            let what = if unchanged {
                "direction"
            } else {
                "step (direction with weight decay and momentum)"
            };
            return Err((
                format!(
                    "non-finite {what} or residual (dᵀFd = {q}, CG residual = {}): a NaN or \
                     infinity in the input batch, the loss, the factors, the solve or the weights",
                    extra.unwrap_or(0.0)
                ),
                q,
                extra,
            ));
        }
        let scale = trust_scale(c.kl_max, lr, q);
        let mut directions = GradientsParams::new();
        let count = steps.len();
        for (e, u) in fresh.entries.iter().zip(steps) {
            let u = if scale < 1.0 { u.mul_scalar(scale) } else { u };
            register_shaped(&mut directions, e.id, u, &e.dims);
        }
        let velocities = velocities
            .into_iter()
            .map(|(id, v)| {
                let numel = v.shape().num_elements();
                let v = v.reshape([numel]);
                (id, if scale < 1.0 { v.mul_scalar(scale) } else { v })
            })
            .collect();
        let params = fresh
            .entries
            .iter()
            .map(|e| (e.id, e.dims.clone()))
            .collect();
        Ok(Formed {
            directions,
            count,
            quadratic: q,
            scale,
            predicted,
            extra,
            velocities,
            params,
        })
    }
}

impl Formed {
    /// The step for [`NaturalGradient::apply`].
    pub(crate) fn into_preconditioned(
        self,
        lr: LearningRate,
        cg_iters: usize,
        kfac: Vec<KfacState>,
        damping: f64,
        reused: bool,
    ) -> Preconditioned {
        Preconditioned {
            directions: Some(self.directions),
            quadratic: self.quadratic,
            scale: self.scale,
            lr,
            cg_iters,
            residual: self.extra.unwrap_or(0.0),
            skip_reason: None,
            count: self.count,
            params: self.params,
            velocities: self.velocities,
            kfac,
            predicted: self.predicted,
            damping,
            reused,
        }
    }
}

impl Preconditioned {
    /// The skipped step of a [`NaturalGradient::form_step`] refusal.
    pub(crate) fn not_finite(
        lr: LearningRate,
        (reason, quadratic, residual): (String, f64, Option<f64>),
        cg_iters: usize,
    ) -> Self {
        Self {
            cg_iters,
            residual: residual.unwrap_or(0.0),
            quadratic,
            ..Preconditioned::skipped(lr, reason)
        }
    }
}
