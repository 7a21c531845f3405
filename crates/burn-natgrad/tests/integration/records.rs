//! Optimizer records round-trip: save the state mid-training, load it into a fresh optimizer,
//! continue, and land on the same weights as uninterrupted training. A `NaturalGradient` keeps
//! its momentum and KFAC state itself (mirrored in its `ModuleOptimizer`'s record), so each run
//! has its own: the restored run is a new `NaturalGradient` that reads the record back on its
//! first step.

use crate::common::*;
use burn::optim::momentum::MomentumConfig;
use burn::optim::ModuleOptimizer;
use burn_natgrad::{NaturalGradient, NaturalGradientConfig};

fn step(ng: &NaturalGradient, optim: &mut ModuleOptimizer, model: Mlp, seed: u64) -> Mlp {
    let device = model.layers[0].weight.val().device();
    let (mut cap, x) = ng.capture(tensor(seed, [16, 5], 1.0, &device));
    let logits = model.logits2(x, &mut cap);
    let out = ng.classification(&model, cap, logits, labels(seed + 1, 16, 3, &device));
    ng.step(optim, 0.5, model, out.grads)
}

#[test]
fn records_round_trip_continues_identically() {
    for (name, device) in backends() {
        let config = NaturalGradientConfig::new()
            .with_momentum(Some(MomentumConfig::new()))
            .with_kl_max(Some(0.05));
        let ng = config.build();
        let mut original = ng.module_optimizer();
        let mut model = Mlp::new(&[5, 8, 3], true, 3, &device);
        for s in 0..3 {
            model = step(&ng, &mut original, model, 100 + 2 * s);
        }
        let record = original.to_record();
        assert!(!record.is_empty(), "{name}: momentum state is recorded");
        let bytes = original.into_bytes().unwrap();
        let ng_restored = config.build();
        let mut restored = ng_restored.module_optimizer().from_bytes(bytes).unwrap();
        let mut a = model.clone();
        let mut b = model;
        for s in 3..5 {
            a = step(&ng, &mut original, a, 100 + 2 * s);
            b = step(&ng_restored, &mut restored, b, 100 + 2 * s);
        }
        for (la, lb) in a.layers.iter().zip(&b.layers) {
            let err = rel_err(
                &host(la.weight.val().inner()),
                &host(lb.weight.val().inner()),
            );
            assert!(
                err <= 1e-6,
                "{name}: weights differ after restore ({err:e})"
            );
        }
        // And the restored optimizer really carried momentum: a fresh one ends elsewhere.
        let (ng_fresh, ng_tmp) = (config.build(), config.build());
        let mut fresh = ng_fresh.module_optimizer();
        let mut c = Mlp::new(&[5, 8, 3], true, 3, &device);
        let mut tmp = ng_tmp.module_optimizer();
        for s in 0..3 {
            c = step(&ng_tmp, &mut tmp, c, 100 + 2 * s);
        }
        for s in 3..5 {
            c = step(&ng_fresh, &mut fresh, c, 100 + 2 * s);
        }
        let diff = rel_err(
            &host(c.layers[0].weight.val().inner()),
            &host(a.layers[0].weight.val().inner()),
        );
        assert!(
            diff > 1e-4,
            "{name}: momentum made no difference ({diff:e})"
        );
    }
}
