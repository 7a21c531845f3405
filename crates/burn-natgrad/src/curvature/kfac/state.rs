//! The per-parameter state of the optimizer's per-tensor part, the one Burn's
//! `ModuleOptimizer` keeps, records and checkpoints: SGD's momentum, and each block's KFAC
//! factors and inverses, so that a run resumed from a checkpoint continues the moving averages
//! (and the inverses' schedule) where it stopped.
//!
//! Burn's per-tensor `Optimizer::step` is not told which parameter it steps; the directions are
//! applied in module order, which is also the order of [`ParamOrder`], so the optimizer hands
//! each call the state of the next parameter in that order, and checks its shape.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, RecordState};
use burn::tensor::{Device, Tensor};

use super::Kind;

/// The KFAC state of one parameter tensor: the moving averages of its factors and their damped
/// inverses (see [`Curvature::Kfac`](crate::Curvature::Kfac)).
#[derive(RecordState, Clone, Debug)]
pub struct KfacState {
    /// The parameter's id (a check that the state is handed to the right parameter).
    pub(crate) param: u64,
    /// The block's kind ([`Kind`] as a byte).
    pub(crate) kind: u8,
    /// The input factor `A` (`[in, in]`), or the gather's diagonal (`[vocab, 1]`).
    pub(crate) left: Option<Tensor<2>>,
    /// The output-gradient factor `G`, the whole block, or its diagonal (`[1, n]`).
    pub(crate) right: Tensor<2>,
    /// The damped inverse of `left`, or the basis `U` of its low-rank-plus-identity form
    /// ([`KfacInverse::LowRank`](crate::KfacInverse::LowRank); see `left_coef`).
    pub(crate) left_inv: Option<Tensor<2>>,
    /// The damped inverse of `right`, or the basis of its low-rank form.
    pub(crate) right_inv: Tensor<2>,
    /// `[c₁ … c_r, s]` of a low-rank-plus-identity left inverse `U diag(c) Uᵀ + sI`; `None`
    /// for a dense one (and in records written before the rank existed).
    pub(crate) left_coef: Option<Tensor<2>>,
    /// The same for the right inverse.
    pub(crate) right_coef: Option<Tensor<2>>,
    /// How many batches the averages hold.
    pub(crate) updates: u64,
    /// The damping the inverses were computed with (they are recomputed when it moves).
    pub(crate) damping: f64,
    /// Steps that reused these factors since their last update, with a
    /// [`factor_update_steps`](crate::KfacConfig::factor_update_steps) above 1 (`None`:
    /// none, and in records written before the factor period existed).
    pub(crate) reused: Option<u64>,
}

impl KfacState {
    pub(crate) fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }

    /// How many batches the moving averages hold.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// How many steps reused these factors since their last update (see
    /// [`factor_update_steps`](crate::KfacConfig::factor_update_steps)).
    pub fn reused(&self) -> u64 {
        self.reused.unwrap_or(0)
    }

    /// The parameter's matrix view, `[rows, columns]`, that the factors act on (`left · V ·
    /// right`): the parameter read row-major.
    pub(crate) fn view(&self) -> [usize; 2] {
        let columns = self.right.dims()[1];
        match (self.kind(), &self.left) {
            (Some(Kind::Kronecker | Kind::Gather), Some(left)) => [left.dims()[0], columns],
            _ => [1, columns],
        }
    }

    fn moved_to(self, device: &Device) -> Self {
        let move_to = |t: Tensor<2>| t.to_device(device);
        Self {
            left: self.left.map(move_to),
            right: move_to(self.right),
            left_inv: self.left_inv.map(move_to),
            right_inv: move_to(self.right_inv),
            left_coef: self.left_coef.map(move_to),
            right_coef: self.right_coef.map(move_to),
            ..self
        }
    }
}

/// The momentum's velocity of one parameter (recorded under the names of Burn's
/// `MomentumState`, `momentum.velocity`), the trust-region-scaled velocity of the applied step
/// (see [`applied`](crate::optim::applied)).
#[derive(RecordState, Clone)]
pub struct Velocity<const D: usize> {
    pub(crate) velocity: Tensor<D>,
}

/// The per-parameter state of [`NaturalGradient`](crate::NaturalGradient)'s per-tensor part:
/// the momentum's velocity and, with [`Curvature::Kfac`](crate::Curvature::Kfac), the KFAC
/// state, and with adaptive damping the damping in force and the count of applied steps.
#[derive(RecordState, Clone)]
pub struct NaturalGradientState<const D: usize> {
    pub(crate) momentum: Option<Velocity<D>>,
    pub(crate) kfac: Option<KfacState>,
    /// With adaptive damping: the damping in force (the same in every parameter's state).
    pub(crate) damping: Option<f64>,
    /// With adaptive damping: the steps applied up to this one, all runs resumed from this
    /// record included (the adaptation's schedule).
    pub(crate) steps: Option<u64>,
}

impl<const D: usize> NaturalGradientState<D> {
    /// The KFAC state, when the optimizer uses KFAC.
    pub fn kfac(&self) -> Option<&KfacState> {
        self.kfac.as_ref()
    }

    pub(crate) fn moved_to(self, device: &Device) -> Self {
        Self {
            momentum: self.momentum.map(|m| Velocity {
                velocity: m.velocity.to_device(device),
            }),
            kfac: self.kfac.map(|k| k.moved_to(device)),
            damping: self.damping,
            steps: self.steps,
        }
    }
}

/// The ids and shapes of a module's float parameters, in module order (the order in which
/// Burn's `ModuleOptimizer` steps them): all of them, or those `grads` holds.
pub(crate) struct ParamOrder<'a> {
    pub grads: Option<&'a GradientsParams>,
    pub order: Vec<(ParamId, Vec<usize>)>,
}

impl ModuleVisitor for ParamOrder<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.grads.is_none_or(|g| g.get::<D>(param.id).is_some()) {
            self.order.push((param.id, param.val().dims().to_vec()));
        }
    }
}

/// Zero gradients for every float parameter of a module: a step with them reaches every
/// parameter's per-tensor state (to read it back), in module order.
pub(crate) fn zero_grads<M: Module>(module: &M) -> GradientsParams {
    struct Zeros(GradientsParams);
    impl ModuleVisitor for Zeros {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let zeros = Tensor::<D>::zeros(value.shape(), &value.device());
            self.0.register(param.id, zeros);
        }
    }
    let mut zeros = Zeros(GradientsParams::new());
    module.visit(&mut zeros);
    zeros.0
}
