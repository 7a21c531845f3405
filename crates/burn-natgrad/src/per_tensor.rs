//! The per-tensor part of [`NaturalGradient`], the Burn [`Optimizer`] that Burn's
//! `ModuleOptimizer` wraps: it applies weight decay, momentum and the learning rate to the
//! preconditioned directions as Burn's SGD does, refuses raw gradients, and keeps each
//! parameter's state for the record ([`NaturalGradientState`]); and the thread-local modes in
//! which it only looks: the ownership probe (which also finds the `NaturalGradient` a
//! `ModuleOptimizer` belongs to) and the reading of recorded KFAC states.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer, Optimizer, SgdState};
use burn::tensor::{Device, Tensor};

use crate::error::NatGradError;
use crate::kfac::{KfacState, NaturalGradientState};
use crate::optimizer::NaturalGradient;

thread_local! {
    /// While [`NaturalGradient::owns`] runs on this thread: the address of the probing
    /// optimizer's shared state, and whether its per-tensor part was reached. Every
    /// `NaturalGradient`'s per-tensor part then only notes the call and changes nothing.
    pub(crate) static PROBE: std::cell::Cell<Option<(usize, bool)>> =
        const { std::cell::Cell::new(None) };
    /// While [`NaturalGradient::resume_from`] runs on this thread: the address of the reading
    /// optimizer's shared state, and the states (KFAC, damping) its per-tensor part was handed,
    /// in order.
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
    /// Clears the probe even if the optimizer under test panics, so that this thread's
    /// per-tensor steps do not stay no-ops.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            PROBE.with(|p| p.set(None));
        }
    }
    PROBE.with(|p| p.set(Some((address, false))));
    let _clear = Clear;
    let _ = optim.clone().step(0.0, probe, grads);
    PROBE.with(|p| p.get()).is_some_and(|(_, reached)| reached)
}

/// The `NaturalGradient` whose per-tensor part `optim` applies, if any (see
/// [`NaturalGradient::find`]).
pub(crate) fn find(optim: &ModuleOptimizer, device: &Device) -> Option<NaturalGradient> {
    let reached = probe(optim, device, FIND);
    FOUND.with(|f| f.borrow_mut().take()).filter(|_| reached)
}

/// What a parameter's recorded state holds for the shared state: its KFAC state and the damping.
pub(crate) type Recorded = (Option<KfacState>, Option<f64>);

impl Optimizer for NaturalGradient {
    type State<const D: usize> = NaturalGradientState<D>;

    /// The per-tensor part: `grad` is the natural-gradient direction computed by
    /// [`NaturalGradient::precondition`]; weight decay, momentum and `lr` are applied as Burn's
    /// SGD applies them.
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
        if let Some((address, _)) = PROBE.with(|p| p.get()) {
            if address == self.address() || address == FIND {
                PROBE.with(|p| p.set(Some((address, true))));
            }
            if address == FIND {
                FOUND.with(|f| *f.borrow_mut() = Some(self.clone()));
            }
            return (tensor, state);
        }
        let reading = READ.with(|r| match r.borrow_mut().as_mut() {
            Some((address, read)) if *address == self.address() => {
                read.push(
                    state
                        .as_ref()
                        .map_or((None, None), |s| (s.kfac.clone(), s.damping)),
                );
                true
            }
            _ => false,
        });
        if reading {
            return (tensor, state);
        }
        let (kfac, damping) = {
            let mut shared = self.lock();
            let damping = self
                .config
                .adaptive_damping
                .is_some()
                .then(|| shared.damping.unwrap_or(self.config.damping));
            if shared.pending == 0 {
                drop(shared);
                panic!("{}", NatGradError::NotPreconditioned);
            }
            shared.pending -= 1;
            match shared.order.pop_front() {
                Some((id, dims)) => {
                    assert_eq!(
                        dims,
                        tensor.dims().to_vec(),
                        "natural gradient: Burn's ModuleOptimizer stepped the parameters in \
                         another order than the module's"
                    );
                    (shared.kfac.get(&id).cloned(), damping)
                }
                None => (None, damping),
            }
        };
        let momentum = state.and_then(|s| s.momentum);
        let (tensor, sgd) = self
            .sgd
            .step(lr, tensor, grad, Some(SgdState::new(momentum)));
        let momentum = sgd.and_then(|s| s.momentum);
        let state = NaturalGradientState {
            momentum,
            kfac,
            damping,
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moved_to(device)
    }
}
