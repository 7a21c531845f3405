//! A learning rate that is not a finite number > 0 never reaches the weights, and too many
//! skipped steps in a row stop training with the reason.

use crate::common::*;
use burn::tensor::{Tensor, TensorData};
use burn_natgrad::{NatGradError, NaturalGradientConfig};

fn weights(model: &Mlp) -> Vec<Vec<f64>> {
    model.layers.iter().map(|l| host(l.weight.val())).collect()
}

#[test]
fn a_bad_learning_rate_skips_the_step() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 5, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new().build();
        let mut optim = ng.module_optimizer();
        for (i, lr) in [f64::NAN, f64::INFINITY, -0.1, 0.0].into_iter().enumerate() {
            let (mut cap, x) = ng.capture(tensor(1, [6, 4], 1.0, &device));
            let logits = model.logits2(x, &mut cap);
            let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
            let pre = ng.precondition(&model, lr, &out.grads).unwrap();
            assert!(pre.directions.is_none(), "{name}: lr {lr} accepted");
            let reason = pre.skip_reason.clone().unwrap();
            assert!(reason.contains("learning rate"), "{reason}");
            let after = ng.apply(&mut optim, model.clone(), pre);
            assert_eq!(
                weights(&after),
                weights(&model),
                "{name}: lr {lr} moved weights"
            );
            let stats = ng.stats();
            assert_eq!(stats.skipped, i as u64 + 1);
            assert_eq!(stats.steps, 0);
            assert_eq!(stats.last_skip_reason.as_deref(), Some(reason.as_str()));
        }
        assert!(
            optim.to_record().is_empty(),
            "{name}: momentum state created"
        );
    }
}

#[test]
fn too_many_skips_in_a_row_stop_training() {
    for (name, device) in backends() {
        let model = Mlp::new(&[4, 3], true, 1, &device);
        let ng = NaturalGradientConfig::new()
            .with_max_consecutive_skips(Some(3))
            .build();
        let mut optim = ng.module_optimizer();
        let mut nan = values(1, 24);
        nan[0] = f32::NAN;
        let bad = Tensor::<2>::from_data(TensorData::new(nan, [6, 4]), &device);
        let step = |x: Tensor<2>, optim: &mut burn::optim::ModuleOptimizer| {
            let (mut cap, x) = ng.capture(x);
            let logits = model.logits2(x, &mut cap);
            let out = ng.classification(&model, cap, logits, labels(2, 6, 3, &device));
            ng.step(optim, 0.1, model.clone(), out.grads)
        };
        // Two skips, a good step (the count restarts), two more skips: no stop.
        step(bad.clone(), &mut optim);
        step(bad.clone(), &mut optim);
        step(tensor(1, [6, 4], 1.0, &device), &mut optim);
        assert_eq!(ng.stats().consecutive_skipped, 0, "{name}");
        step(bad.clone(), &mut optim);
        step(bad.clone(), &mut optim);
        // The third skip in a row stops training.
        let msg = panic_message(|| {
            step(bad.clone(), &mut optim);
        });
        assert!(
            msg.contains("3 steps in a row were skipped") && msg.contains("non-finite"),
            "{name}: {msg}"
        );
        assert_eq!(ng.stats().skipped, 5);
        assert_eq!(ng.stats().steps, 1);
    }
    let err = NaturalGradientConfig::new()
        .with_max_consecutive_skips(Some(0))
        .try_build()
        .unwrap_err();
    assert!(matches!(
        err,
        NatGradError::InvalidConfig {
            field: "max_consecutive_skips",
            ..
        }
    ));
}
