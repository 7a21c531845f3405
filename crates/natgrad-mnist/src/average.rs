//! Iterate averaging: an exponential moving average of a model's weights, evaluated in place of
//! the last iterate (Polyak & Juditsky, "Acceleration of Stochastic Approximation by
//! Averaging", 1992; the exponential form of, e.g., Izmailov et al., "Averaging Weights Leads
//! to Wider Optima and Better Generalization", 2018). It does not change training: the average
//! is kept beside the model and only swapped in for evaluation, for any optimizer alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// `θ̄ ← β θ̄ + (1 − β) θ` after every step, from the first iterate; shared by its clones.
#[derive(Clone, Debug)]
pub struct WeightAverage {
    decay: f64,
    /// Every parameter's average, flattened, without autodiff.
    average: Arc<Mutex<HashMap<ParamId, Tensor<1>>>>,
}

impl WeightAverage {
    /// An empty average with decay `β` in `[0, 1)`.
    pub fn new(decay: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&decay),
            "the weight average's decay must lie in [0, 1), got {decay}"
        );
        Self {
            decay,
            average: Arc::default(),
        }
    }

    /// The decay `β`.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Folds the model's current weights into the average.
    pub fn update<M: Module>(&self, model: &M) {
        let mut average = self.average.lock().expect("not poisoned");
        model.visit(&mut Update {
            decay: self.decay,
            average: &mut average,
        });
    }

    /// `model` with the averaged weights (those it has no average for unchanged), for
    /// evaluation. A model on a plain device gets the averages of an autodiff one's weights.
    pub fn apply<M: Module>(&self, model: M) -> M {
        let average = self.average.lock().expect("not poisoned");
        model.map(&mut Apply { average: &average })
    }
}

struct Update<'a> {
    decay: f64,
    average: &'a mut HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for Update<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let value = if value.is_autodiff() {
            value.inner()
        } else {
            value
        };
        let numel = value.shape().num_elements();
        let flat = value.reshape([numel]);
        let next = match self.average.remove(&param.id) {
            Some(old) if old.dims() == [numel] => {
                old.mul_scalar(self.decay) + flat.mul_scalar(1.0 - self.decay)
            }
            _ => flat,
        };
        self.average.insert(param.id, next);
    }
}

struct Apply<'a> {
    average: &'a HashMap<ParamId, Tensor<1>>,
}

impl ModuleMapper for Apply<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(average) = self.average.get(&param.id).cloned() else {
            return param;
        };
        param.map(|value| {
            let dims = value.dims();
            let device = value.device();
            let averaged = Tensor::<D>::from_data(average.reshape(dims).into_data(), &device);
            if value.is_require_grad() {
                averaged.require_grad()
            } else {
                averaged
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    fn weights(layer: &Linear) -> Vec<f32> {
        layer.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    /// Two iterates `a`, `b` with decay `β` average to `β a + (1 − β) b`, the model's ids are
    /// kept, and the model it was taken from is untouched.
    #[test]
    fn the_average_is_the_moving_average_of_the_iterates() {
        #[allow(deprecated)]
        let device = Device::ndarray().autodiff();
        let a = LinearConfig::new(3, 2).init(&device);
        let b = LinearConfig::new(3, 2).init(&device);
        let b = Linear {
            weight: Param::initialized(a.weight.id, b.weight.val()),
            bias: a.bias.clone(),
        };
        let average = WeightAverage::new(0.75);
        average.update(&a);
        average.update(&b);
        let got = weights(&average.apply(b.clone()));
        let expected: Vec<f32> = weights(&a)
            .iter()
            .zip(weights(&b))
            .map(|(x, y)| 0.75 * x + 0.25 * y)
            .collect();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        assert_ne!(weights(&b), got, "the model itself is not averaged");
        let inner = average.apply(b.valid());
        assert_eq!(
            weights(&inner),
            got,
            "a plain-device model gets the same average"
        );
    }
}
