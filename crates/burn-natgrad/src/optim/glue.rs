//! The plug-in into Burn's `TrainStep`: the body of `step` as one call
//! ([`classification_step`]), and `optimize` as one line
//! ([`natural_gradient_optimize!`](crate::natural_gradient_optimize)),
//! without a field in the model.
//!
//! `TrainStep::step` sees only the model and the batch, so [`classification_step`] uses the
//! [`NaturalGradient`] created last on this thread ([`NaturalGradient::current`]; the Learner
//! runs a single-device training on the thread that launched it); `optimize` finds the one the
//! Learner's `ModuleOptimizer` belongs to ([`NaturalGradient::find`]) and refuses a batch that
//! was captured for another. A model that trains several natural gradients on one thread keeps
//! each in a field instead (`natural_gradient_optimize!(field)`).

use std::cell::{Cell, RefCell};
use std::sync::{Mutex, Weak};

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use burn::train::{ClassificationOutput, TrainOutput};

use crate::error::NatGradError;
use crate::factors::{gradient_weight_id, reuse_marker_id};
use crate::optim::config::NaturalGradientConfig;
use crate::optim::optimizer::{NaturalGradient, Shared};

/// A `NaturalGradient` held without keeping it alive.
struct WeakNaturalGradient {
    config: NaturalGradientConfig,
    shared: Weak<Mutex<Shared>>,
}

thread_local! {
    /// The `NaturalGradient` created last on this thread.
    static CURRENT: RefCell<Option<WeakNaturalGradient>> = const { RefCell::new(None) };
    /// The address of the `NaturalGradient` the last `train_step` on this thread (also through
    /// [`classification_step`]) captured for.
    static CAPTURED: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Notes that this thread's last captured batch (`train_step`) was for `ng`.
pub(crate) fn captured_for(ng: &NaturalGradient) {
    CAPTURED.with(|c| c.set(Some(ng.address())));
}

/// Makes `ng` this thread's current `NaturalGradient` (called when one is created).
pub(crate) fn register(ng: &NaturalGradient) {
    let weak = WeakNaturalGradient {
        config: ng.config.clone(),
        shared: std::sync::Arc::downgrade(&ng.shared),
    };
    CURRENT.with(|c| *c.borrow_mut() = Some(weak));
}

impl NaturalGradient {
    /// The `NaturalGradient` created last on this thread (by
    /// [`NaturalGradientConfig::init`] or [`build`](NaturalGradientConfig::build)), if it or a
    /// clone (its `ModuleOptimizer` holds one) is still alive.
    pub fn current() -> Option<NaturalGradient> {
        CURRENT.with(|c| {
            let c = c.borrow();
            let weak = c.as_ref()?;
            Some(NaturalGradient {
                config: weak.config.clone(),
                shared: weak.shared.upgrade()?,
            })
        })
    }

    /// The `NaturalGradient` whose per-tensor part `optim` applies (its
    /// [`module_optimizer`](Self::module_optimizer), or the `ModuleOptimizer` of
    /// [`NaturalGradientConfig::init`]), found as [`owns`](Self::owns) does; `None` for another
    /// optimizer (Burn's SGD, Adam). `device` is the model's.
    pub fn find(optim: &ModuleOptimizer, device: &Device) -> Option<NaturalGradient> {
        crate::optim::per_tensor::find(optim, device)
    }
}

/// The body of `TrainStep::step` for a softmax classifier made of the drop-in layers of
/// [`crate::nn`]: [`NaturalGradient::train_step`] of this thread's
/// [`current`](NaturalGradient::current) natural gradient on the model's own `forward`, as the
/// Learner's `TrainOutput`.
///
/// ```ignore
/// fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
///     burn_natgrad::classification_step(self, batch.images, batch.targets, |x| self.forward(x))
/// }
/// burn_natgrad::natural_gradient_optimize!();
/// ```
///
/// # Panics
/// With [`NatGradError::NoNaturalGradient`] when no `NaturalGradient` created on this thread is
/// alive, and as [`NaturalGradient::classification`].
pub fn classification_step<M: Module, const D: usize>(
    model: &M,
    input: Tensor<D>,
    targets: Tensor<1, Int>,
    forward: impl FnOnce(Tensor<D>) -> Tensor<2>,
) -> TrainOutput<ClassificationOutput> {
    let ng =
        NaturalGradient::current().unwrap_or_else(|| panic!("{}", NatGradError::NoNaturalGradient));
    ng.train_step(model, input, targets.clone(), forward)
        .into_train_output(targets)
}

/// What `natural_gradient_optimize!()` runs: the natural-gradient step of the `NaturalGradient`
/// `optim` belongs to, after checking that the batch was captured for it; Burn's own step for
/// another optimizer, unless the gradients carry natural-gradient factors.
pub fn optimize<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    lr: ModuleLearningRate,
    grads: GradientsParams,
) -> M {
    let device = model.devices().into_iter().next();
    match device.and_then(|d| NaturalGradient::find(optim, &d)) {
        Some(ng) => {
            let captured = CAPTURED.with(|c| c.get());
            assert!(
                captured.is_none_or(|a| a == ng.address()),
                "{}",
                NatGradError::CapturedForAnother
            );
            ng.step(optim, lr, model, grads)
        }
        None => {
            assert!(
                grads.get::<1>(gradient_weight_id()).is_none()
                    && grads.get::<1>(reuse_marker_id()).is_none(),
                "{}",
                NatGradError::ForeignOptimizer
            );
            optim.step(lr, model, grads)
        }
    }
}

/// A model field that holds the [`NaturalGradient`]: the optimizer itself, or an `Option` of it
/// (a model that also trains with Burn's optimizers).
pub trait NaturalGradientField {
    /// The optimizer, if there is one.
    fn natural_gradient(&self) -> Option<&NaturalGradient>;
}

impl NaturalGradientField for NaturalGradient {
    fn natural_gradient(&self) -> Option<&NaturalGradient> {
        Some(self)
    }
}

impl NaturalGradientField for Option<NaturalGradient> {
    fn natural_gradient(&self) -> Option<&NaturalGradient> {
        self.as_ref()
    }
}

/// Writes `TrainStep::optimize`. Without an argument, for a model whose `step` calls
/// [`classification_step`]: the `NaturalGradient` is the one the Learner's `ModuleOptimizer`
/// belongs to (with Burn's own optimizer, Burn's step as usual). With a field, for a model whose
/// field `$field` holds its [`NaturalGradient`] (or an `Option` of one: with `None`, Burn's
/// optimizer steps as usual):
///
/// ```ignore
/// impl TrainStep for Model {
///     // type Input, type Output, fn step …
///     burn_natgrad::natural_gradient_optimize!();
/// }
/// ```
#[macro_export]
macro_rules! natural_gradient_optimize {
    (@optimize $model:ident, $optim:ident, $lr:ident, $grads:ident => $body:expr) => {
        fn optimize(
            self,
            $optim: &mut $crate::__private::ModuleOptimizer,
            $lr: $crate::__private::ModuleLearningRate,
            $grads: $crate::__private::GradientsParams,
        ) -> Self {
            let $model = self;
            $body
        }
    };
    () => {
        $crate::natural_gradient_optimize!(@optimize model, optim, lr, grads =>
            $crate::__private::optimize(model, optim, lr, grads));
    };
    ($field:ident) => {
        $crate::natural_gradient_optimize!(@optimize model, optim, lr, grads =>
            match $crate::NaturalGradientField::natural_gradient(&model.$field).cloned() {
                Some(natgrad) => natgrad.step(optim, lr, model, grads),
                None => optim.step(lr, model, grads),
            });
    };
}

/// Paths the macro needs, whatever the caller imports.
#[doc(hidden)]
pub mod __private {
    pub use super::optimize;
    pub use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
    pub use burn::optim::{GradientsParams, ModuleOptimizer};
}
