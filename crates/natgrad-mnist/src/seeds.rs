//! Comparisons over seeds: one seed decides nothing (end-of-epoch test accuracy moves by 1–2
//! points between seeds), so the table reports each optimizer's mean and range per epoch.

use std::fmt::Write as _;

use crate::run::{table_header, RunResult};

/// The CSV of every run: `optimizer,hyper_parameters,seed,epoch,test_accuracy,train_loss,median_step_ms`.
pub fn seeds_csv(runs: &[(u64, RunResult)]) -> String {
    let mut out = String::from(
        "optimizer,hyper_parameters,seed,epoch,test_accuracy,train_loss,median_step_ms\n",
    );
    for (seed, r) in runs {
        for e in &r.epochs {
            let _ = writeln!(
                out,
                "{},\"{}\",{seed},{},{:.4},{:.4},{:.3}",
                r.spec.name(),
                r.describe(),
                e.epoch,
                e.test_accuracy,
                e.train_loss,
                r.median_step_ms
            );
        }
    }
    out
}

/// Mean and range of the test accuracy per optimizer (in first-run order) and epoch, and the
/// median over seeds of each run's step time as a ratio to SGD's run of the same seed.
pub fn seeds_table(runs: &[(u64, RunResult)]) -> String {
    let mut specs: Vec<String> = Vec::new();
    for (_, r) in runs {
        let key = r.describe();
        if !specs
            .iter()
            .any(|s| *s == format!("{}|{key}", r.spec.name()))
        {
            specs.push(format!("{}|{key}", r.spec.name()));
        }
    }
    let epochs = runs.iter().map(|(_, r)| r.epochs.len()).max().unwrap_or(0);
    let mut out = table_header(
        &["optimizer", "hyper-parameters", "seeds"],
        epochs,
        |e| format!("epoch {e}: mean (min–max)"),
        &["step / SGD step"],
    );
    for spec in &specs {
        let mine: Vec<&(u64, RunResult)> = runs
            .iter()
            .filter(|(_, r)| format!("{}|{}", r.spec.name(), r.describe()) == *spec)
            .collect();
        let (name, describe) = spec.split_once('|').expect("key");
        let _ = write!(out, "| {name} | {describe} | {} |", mine.len());
        for e in 0..epochs {
            let accs: Vec<f64> = mine
                .iter()
                .filter_map(|(_, r)| r.epochs.get(e).map(|x| 100.0 * x.test_accuracy))
                .collect();
            let mean = accs.iter().sum::<f64>() / accs.len().max(1) as f64;
            let (lo, hi) = accs
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
            let _ = write!(out, " {mean:.2}% ({lo:.2}–{hi:.2}) |");
        }
        let mut ratios: Vec<f64> = mine
            .iter()
            .filter_map(|(seed, r)| {
                runs.iter()
                    .find(|(s, o)| s == seed && o.spec.name() == "sgd")
                    .map(|(_, sgd)| r.median_step_ms / sgd.median_step_ms)
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        match ratios.get(ratios.len() / 2) {
            Some(r) => {
                let _ = writeln!(out, " {r:.2}× |");
            }
            None => out.push_str(" - |\n"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{EpochResult, OptimizerSpec};

    fn run(spec: OptimizerSpec, accs: [f64; 2], ms: f64) -> RunResult {
        RunResult {
            spec,
            epochs: accs
                .iter()
                .enumerate()
                .map(|(i, a)| EpochResult {
                    epoch: i + 1,
                    test_accuracy: *a,
                    test_loss: 0.2,
                    train_loss: 0.1,
                })
                .collect(),
            step_losses: vec![],
            median_step_ms: ms,
            skipped_steps: 0,
            reused_steps: 0,
            final_damping: None,
            evals: vec![],
            average: None,
        }
    }

    #[test]
    fn the_table_gives_mean_and_range_per_optimizer_and_epoch() {
        let sgd = || OptimizerSpec::Sgd { lr: 0.5 };
        let adam = || OptimizerSpec::Adam { lr: 0.003 };
        let runs = vec![
            (1, run(sgd(), [0.90, 0.95], 1.0)),
            (1, run(adam(), [0.92, 0.96], 3.0)),
            (2, run(sgd(), [0.94, 0.97], 2.0)),
            (2, run(adam(), [0.93, 0.98], 2.0)),
        ];
        let table = seeds_table(&runs);
        assert!(
            table.contains(
                "| sgd | lr 0.5 | 2 | 92.00% (90.00–94.00) | 96.00% (95.00–97.00) | 1.00× |"
            ),
            "{table}"
        );
        // Adam's ratios are 3× and 1×: the median of two is the upper one.
        assert!(
            table.contains(
                "| adam | lr 0.003 | 2 | 92.50% (92.00–93.00) | 97.00% (96.00–98.00) | 3.00× |"
            ),
            "{table}"
        );
        assert_eq!(seeds_csv(&runs).lines().count(), 9);
    }
}
