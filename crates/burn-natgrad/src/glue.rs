//! The `TrainStep::optimize` override as one line: [`natural_gradient_optimize!`].

use crate::optimizer::NaturalGradient;

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

/// Writes `TrainStep::optimize` for a model whose field `$field` holds its [`NaturalGradient`]
/// (or an `Option` of one: with `None`, Burn's optimizer steps as usual):
///
/// ```ignore
/// impl TrainStep for Model {
///     // type Input, type Output, fn step …
///     burn_natgrad::natural_gradient_optimize!(natgrad);
/// }
/// ```
#[macro_export]
macro_rules! natural_gradient_optimize {
    ($field:ident) => {
        fn optimize(
            self,
            optim: &mut $crate::__private::ModuleOptimizer,
            lr: $crate::__private::ModuleLearningRate,
            grads: $crate::__private::GradientsParams,
        ) -> Self {
            match $crate::NaturalGradientField::natural_gradient(&self.$field).cloned() {
                Some(natgrad) => natgrad.step(optim, lr, self, grads),
                None => optim.step(lr, self, grads),
            }
        }
    };
}

/// Paths the macro needs, whatever the caller imports.
#[doc(hidden)]
pub mod __private {
    pub use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
    pub use burn::optim::{GradientsParams, ModuleOptimizer};
}
