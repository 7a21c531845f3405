//! The same inputs give the same natural-gradient directions on every compiled backend, on the
//! whole batch and on a curvature batch.

use crate::common::*;
use burn_natgrad::{CgConfig, FisherKind, NaturalGradientConfig, Solver};

fn directions(
    device: &burn::tensor::Device,
    solver: Solver,
    curvature_batch: Option<usize>,
) -> Vec<f64> {
    let model = Mlp::new(&[6, 8, 4], true, 50, device);
    let ng = NaturalGradientConfig::new()
        .with_fisher(FisherKind::Empirical)
        .with_curvature(full(solver, false))
        .with_damping(0.1)
        .with_curvature_batch(curvature_batch)
        .build();
    let (mut cap, x) = ng.capture(tensor(51, [16, 6], 1.0, device));
    let logits = model.logits2(x, &mut cap);
    let out = ng.classification(&model, cap, logits, labels(52, 16, 4, device));
    directions_of(&ng, &model, 0.1, &out.grads)
}

#[test]
fn backends_agree_on_directions() {
    let all = backends();
    println!(
        "backends: {:?}",
        all.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    let cg = CgConfig::new().with_max_iters(100).with_tolerance(1e-8);
    for (solver, curv) in solvers(cg)
        .into_iter()
        .flat_map(|s| [(s, None), (s, Some(5))])
    {
        let (ref_name, ref_device) = &all[0];
        let reference = directions(ref_device, solver, curv);
        for (name, device) in &all[1..] {
            let err = rel_err(&directions(device, solver, curv), &reference);
            println!("{solver:?} {curv:?}: {name} vs {ref_name}: rel err {err:e}");
            assert!(
                err <= 1e-4,
                "{solver:?} {curv:?}: {name} vs {ref_name}: rel err {err:e}"
            );
        }
    }
}
