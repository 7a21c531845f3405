//! The per-tensor part of [`NaturalGradient`], the Burn [`Optimizer`] that Burn's
//! `ModuleOptimizer` wraps: it applies the learning rate to the steps that
//! [`NaturalGradient::precondition`] formed (weight decay and momentum are already in them, see
//! [`applied`](crate::optim::applied)), refuses raw gradients, and keeps each parameter's state for the
//! record ([`NaturalGradientState`]); and the thread-local modes in which it only looks: the
//! ownership probe (which counts the parameters it would step, and also finds the
//! `NaturalGradient` a `ModuleOptimizer` belongs to) and the reading of recorded states.

use burn::module::{Module, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::curvature::kfac::state::{zero_grads, ParamOrder};
use crate::curvature::kfac::{KfacState, NaturalGradientState, Velocity};
use crate::error::NatGradError;
use crate::optim::optimizer::NaturalGradient;
use crate::optim::precondition::copy_shaped;

thread_local! {
    /// While a probe runs on this thread: the address of the probing optimizer's shared state,
    /// and how many parameters its per-tensor part was handed. Every `NaturalGradient`'s
    /// per-tensor part then only counts the call and changes nothing.
    pub(crate) static PROBE: std::cell::Cell<Option<(usize, usize)>> =
        const { std::cell::Cell::new(None) };
    /// While [`NaturalGradient::resume_from`] runs on this thread: the address of the reading
    /// optimizer's shared state, and the states (KFAC, damping, velocity, step count) its
    /// per-tensor part was handed, in order.
    pub(crate) static READ: std::cell::RefCell<Option<(usize, Vec<Recorded>)>> =
        const { std::cell::RefCell::new(None) };
    /// The `NaturalGradient` whose per-tensor part a probe with address [`FIND`] reached.
    static FOUND: std::cell::RefCell<Option<NaturalGradient>> =
        const { std::cell::RefCell::new(None) };
}

/// The probe address that asks whichever `NaturalGradient` is reached to hand itself over.
const FIND: usize = usize::MAX;

/// A one-parameter module for the probes.
#[derive(Module, Debug)]
struct OwnershipProbe {
    value: Param<Tensor<1>>,
}

/// Steps a copy of `optim` on a one-element module (on `device`) with the probe set to
/// `address`: whether the per-tensor part of the `NaturalGradient` at `address` (any, for
/// [`FIND`]) was reached. Nothing is changed.
pub(crate) fn probe(optim: &ModuleOptimizer, device: &Device, address: usize) -> bool {
    let probe = OwnershipProbe {
        value: Param::from_tensor(Tensor::zeros([1], device)),
    };
    let mut grads = GradientsParams::new();
    grads.register(probe.value.id, Tensor::<1>::zeros([1], device));
    probe_module(optim, &probe, grads, address) > 0
}

/// Steps a copy of `optim` on a copy of `module` with `grads` and the probe set to `address`:
/// how many of the parameters in `grads` the per-tensor part of the `NaturalGradient` at
/// `address` (any, for [`FIND`]) was handed. A parameter that a group of another optimizer
/// (`ModuleOptimizer::with_group`) owns is stepped by that optimizer, on the copy only: the
/// module and `optim` are unchanged.
pub(crate) fn probe_module<M: Module>(
    optim: &ModuleOptimizer,
    module: &M,
    grads: GradientsParams,
    address: usize,
) -> usize {
    /// Clears the probe even if the optimizer under test panics, so that this thread's
    /// per-tensor steps do not stay no-ops.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            PROBE.with(|p| p.set(None));
        }
    }
    PROBE.with(|p| p.set(Some((address, 0))));
    let _clear = Clear;
    let _ = optim.clone().step(0.0, module.clone(), grads);
    PROBE.with(|p| p.get()).map_or(0, |(_, reached)| reached)
}

/// The `NaturalGradient` whose per-tensor part `optim` applies, if any (see
/// [`NaturalGradient::find`]).
pub(crate) fn find(optim: &ModuleOptimizer, device: &Device) -> Option<NaturalGradient> {
    let reached = probe(optim, device, FIND);
    FOUND.with(|f| f.borrow_mut().take()).filter(|_| reached)
}

/// What a parameter's recorded state holds for the shared state.
pub(crate) struct Recorded {
    pub kfac: Option<KfacState>,
    pub damping: Option<f64>,
    pub steps: Option<u64>,
    /// The velocity, flattened.
    pub velocity: Option<Tensor<1>>,
}

impl NaturalGradient {
    /// Whether `optim` applies this `NaturalGradient`'s per-tensor part to every float
    /// parameter of `module` (it was made by [`module_optimizer`](Self::module_optimizer) of
    /// this optimizer or a clone, with no `with_group` of another optimizer covering one of
    /// them), found by stepping copies of both: another optimizer (Adam, Muon) would apply its
    /// own rule to the natural-gradient steps. [`apply`](Self::apply) checks it (for the
    /// parameters it moves) before any weight moves.
    pub fn owns<M: Module>(&self, optim: &ModuleOptimizer, module: &M) -> bool {
        let grads = zero_grads(module);
        let mut order = ParamOrder {
            grads: None,
            order: Vec::new(),
        };
        module.visit(&mut order);
        probe_module(optim, module, grads, self.address()) == order.order.len()
    }

    /// [`owns`](Self::owns) for the parameters of `directions` (`params`), as an error naming
    /// what to change.
    pub(crate) fn check_owner<M: Module>(
        &self,
        optim: &ModuleOptimizer,
        module: &M,
        directions: &GradientsParams,
        params: &[(ParamId, Vec<usize>)],
    ) -> Result<(), NatGradError> {
        let mut grads = GradientsParams::new();
        for (id, dims) in params {
            copy_shaped(directions, &mut grads, *id, dims.len());
        }
        let reached = probe_module(optim, module, grads, self.address());
        if reached == 0 {
            Err(NatGradError::ForeignOptimizer)
        } else if reached == params.len() {
            Ok(())
        } else {
            Err(NatGradError::ForeignGroups {
                foreign: params.len() - reached,
                of: params.len(),
            })
        }
    }
}

impl Optimizer for NaturalGradient {
    type State<const D: usize> = NaturalGradientState<D>;

    /// The per-tensor part: `grad` is the step formed by [`NaturalGradient::precondition`]
    /// (weight decay, momentum and the trust region already in it), applied as `θ − lr·grad`.
    ///
    /// # Panics
    /// When handed more tensors than the last [`apply`](NaturalGradient::apply) holds, i.e. raw
    /// gradients: `TrainStep::optimize` was not overridden, the Learner ran multi-device
    /// training (`optimize_multi`), or the [`ModuleOptimizer`] comes from another
    /// `NaturalGradient` than the one that preconditioned.
    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if let Some((address, reached)) = PROBE.with(|p| p.get()) {
            if address == self.address() || address == FIND {
                PROBE.with(|p| p.set(Some((address, reached + 1))));
            }
            if address == FIND {
                FOUND.with(|f| *f.borrow_mut() = Some(self.clone()));
            }
            return (tensor, state);
        }
        let reading = READ.with(|r| match r.borrow_mut().as_mut() {
            Some((address, read)) if *address == self.address() => {
                read.push(Recorded {
                    kfac: state.as_ref().and_then(|s| s.kfac.clone()),
                    damping: state.as_ref().and_then(|s| s.damping),
                    steps: state.as_ref().and_then(|s| s.steps),
                    velocity: state.as_ref().and_then(|s| s.momentum.as_ref()).map(|m| {
                        let v = m.velocity.clone();
                        let numel = v.shape().num_elements();
                        v.reshape([numel])
                    }),
                });
                true
            }
            _ => false,
        });
        if reading {
            return (tensor, state);
        }
        let state = {
            let mut shared = self.lock();
            let adaptive = self.config.adaptive_damping.is_some();
            let damping = adaptive.then(|| shared.damping.unwrap_or(self.config.damping));
            let steps = adaptive.then_some(shared.applied);
            if shared.pending == 0 {
                drop(shared);
                panic!("{}", NatGradError::NotPreconditioned);
            }
            shared.pending -= 1;
            let id: Option<ParamId> = shared.order.pop_front().map(|(id, dims)| {
                assert_eq!(
                    dims,
                    tensor.dims().to_vec(),
                    "natural gradient: Burn's ModuleOptimizer stepped the parameters in \
                     another order than the module's"
                );
                id
            });
            let kfac = id.and_then(|id| shared.kfac.get(&id).cloned());
            let momentum = id
                .and_then(|id| shared.velocity.get(&id).cloned())
                .map(|v| Velocity {
                    velocity: v.reshape(tensor.shape()),
                });
            NaturalGradientState {
                momentum,
                kfac,
                damping,
                steps,
            }
        };
        (tensor - grad.mul_scalar(lr), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moved_to(device)
    }
}
