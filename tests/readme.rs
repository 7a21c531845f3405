//! The result tables of README.md and docs/results.md are generated from the data files in
//! `docs/data/`: each block between `<!-- table: KIND FILE... -->` and `<!-- end -->` must be
//! what this test computes from those files. `NATGRAD_WRITE_README=1 cargo test --test readme`
//! writes them instead.
//!
//! Kinds: `seeds` (test accuracy per optimizer over seeds, mean and range per epoch, from the
//! examples' `seeds.csv`), `reach` (training seconds until each optimizer first reaches Adam's
//! final accuracy of the same seed, from the examples' evaluations with a `seed` column) and
//! `cost` (the benchmark's mean step and peak memory, `examples/bench.rs`'s CSV; `column=value`
//! arguments keep the rows with that value).

use std::collections::BTreeMap;
use std::path::Path;

/// The rows of a CSV file with a header, fields by column name (RFC 4180 quotes).
fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.is_empty()).map(split_csv);
    let header = lines.next().expect("a header");
    lines
        .map(|fields| header.iter().cloned().zip(fields).collect())
        .collect()
}

fn split_csv(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

fn num(row: &BTreeMap<String, String>, key: &str) -> f64 {
    row.get(key)
        .unwrap_or_else(|| panic!("no column {key}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// `mean (min–max)`, with `digits` decimals.
fn spread(values: &[f64], unit: &str, digits: usize) -> String {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{mean:.digits$}{unit} ({min:.digits$}–{max:.digits$})")
}

/// An optimizer's label: its name and, where the file has them, its settings without the
/// defaults that say nothing.
fn label(row: &BTreeMap<String, String>) -> (String, String) {
    let settings = row
        .get("hyper_parameters")
        .map(|h| {
            h.replace("kl_max none, ", "")
                .replace(", momentum none", "")
        })
        .unwrap_or_default();
    (row["optimizer"].clone(), settings)
}

/// Rows in the order the files first name them, each with its values.
fn grouped<T>(
    rows: &[BTreeMap<String, String>],
    value: impl Fn(&BTreeMap<String, String>) -> Option<T>,
) -> Vec<((String, String), Vec<T>)> {
    let mut out: Vec<((String, String), Vec<T>)> = Vec::new();
    for row in rows {
        let key = label(row);
        let Some(v) = value(row) else { continue };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, vs)) => vs.push(v),
            None => out.push((key, vec![v])),
        }
    }
    out
}

fn seeds(root: &Path, files: &[&str]) -> String {
    let rows: Vec<_> = files.iter().flat_map(|f| read_csv(&root.join(f))).collect();
    // One value per optimizer and seed: a baseline run by several commands (each runs SGD on
    // the same seeds) counts once, its first run.
    let epochs = |e: &str| {
        let all = grouped(&rows, |r| {
            (r["epoch"] == e).then(|| (num(r, "seed") as u64, 100.0 * num(r, "test_accuracy")))
        });
        all.into_iter()
            .map(|(key, runs)| {
                let mut seen = Vec::new();
                let runs: Vec<f64> = runs
                    .into_iter()
                    .filter(|(seed, _)| {
                        let new = !seen.contains(seed);
                        seen.push(*seed);
                        new
                    })
                    .map(|(_, a)| a)
                    .collect();
                (key, runs)
            })
            .collect::<Vec<_>>()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut table: Vec<_> = epochs("1").into_iter().zip(epochs("2")).collect();
    // Best mean after the last epoch first.
    table.sort_by(|a, b| mean(&b.1 .1).total_cmp(&mean(&a.1 .1)));
    let settings = table.iter().any(|((key, _), _)| !key.1.is_empty());
    let mut out = if settings {
        String::from(
            "| optimizer | settings | epoch 1: mean (min–max) | epoch 2: mean (min–max) | seeds |\n\
             |---|---|---|---|---|\n",
        )
    } else {
        String::from(
            "| optimizer | epoch 1: mean (min–max) | epoch 2: mean (min–max) | seeds |\n\
             |---|---|---|---|\n",
        )
    };
    for (((name, hyper), one), (_, two)) in &table {
        let settings = if settings {
            format!(" {hyper} |")
        } else {
            String::new()
        };
        out += &format!(
            "| {name} |{settings} {} | {} | {} |\n",
            spread(one, "%", 2),
            spread(two, "%", 2),
            one.len()
        );
    }
    out
}

/// One optimizer's evaluations of one run: (training seconds, test accuracy in %).
type Evals = Vec<(f64, f64)>;

fn reach(root: &Path, files: &[&str]) -> String {
    let rows: Vec<_> = files.iter().flat_map(|f| read_csv(&root.join(f))).collect();
    // Per seed: every optimizer's evaluations (seconds, accuracy) in order.
    let mut runs: BTreeMap<u64, Vec<(String, Evals)>> = BTreeMap::new();
    for r in &rows {
        let seed = num(r, "seed") as u64;
        let evals = (num(r, "seconds"), 100.0 * num(r, "test_accuracy"));
        let per_seed = runs.entry(seed).or_default();
        match per_seed.iter_mut().find(|(n, _)| *n == r["optimizer"]) {
            Some((_, e)) => e.push(evals),
            None => per_seed.push((r["optimizer"].clone(), vec![evals])),
        }
    }
    let names: Vec<String> = runs
        .values()
        .next()
        .expect("a seed")
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let mut out = String::from(
        "| optimizer | training seconds to Adam's final accuracy: mean (min–max) | seeds reaching it | two epochs' training seconds: mean (min–max) |\n\
         |---|---|---|---|\n",
    );
    for name in names {
        let (mut reached, mut total) = (Vec::new(), Vec::new());
        for per_seed in runs.values() {
            let target = &per_seed
                .iter()
                .find(|(n, _)| n == "adam")
                .expect("an Adam run")
                .1;
            let target = target.last().expect("evaluations").1;
            let evals = &per_seed
                .iter()
                .find(|(n, _)| *n == name)
                .expect("every optimizer")
                .1;
            total.push(evals.last().expect("evaluations").0);
            if let Some((t, _)) = evals.iter().find(|(_, a)| *a >= target) {
                reached.push(*t);
            }
        }
        let reach = if reached.is_empty() {
            "never".to_string()
        } else {
            spread(&reached, " s", 2)
        };
        out += &format!(
            "| {name} | {reach} | {} of {} | {} |\n",
            reached.len(),
            runs.len(),
            spread(&total, " s", 2)
        );
    }
    out
}

/// The benchmark's rows; an argument `column=value` keeps only the rows with that value.
fn cost(root: &Path, args: &[&str]) -> String {
    let (filters, files): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| a.contains('='));
    let rows: Vec<_> = files
        .iter()
        .flat_map(|f| read_csv(&root.join(f)))
        .filter(|r| {
            filters.iter().all(|f| {
                let (column, value) = f.split_once('=').expect("column=value");
                r.get(column).is_some_and(|v| v == value)
            })
        })
        .collect();
    let mut out = String::from(
        "| backend | batch | method | mean step (ms) | mean step / SGD's | peak memory (MB) |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &rows {
        out += &format!(
            "| {} | {} | {} | {:.2} | {:.2}× | {:.1} |\n",
            r["backend"],
            r["batch"],
            r["method"],
            num(r, "mean_ms"),
            num(r, "mean_ratio_vs_sgd"),
            num(r, "peak_mb")
        );
    }
    out
}

/// README with every generated block recomputed.
fn generated(root: &Path, readme: &str) -> String {
    let mut out = String::new();
    let mut rest = readme;
    while let Some(start) = rest.find("<!-- table: ") {
        let open_end = start + rest[start..].find("-->").expect("a closed marker") + 3;
        let spec: Vec<&str> = rest[start + 12..open_end - 3].split_whitespace().collect();
        let close = open_end
            + rest[open_end..]
                .find("<!-- end -->")
                .expect("an end marker");
        let table = match spec[0] {
            "seeds" => seeds(root, &spec[1..]),
            "reach" => reach(root, &spec[1..]),
            "cost" => cost(root, &spec[1..]),
            other => panic!("unknown table kind {other}"),
        };
        out += &rest[..open_end];
        out += "\n";
        out += &table;
        rest = &rest[close..];
    }
    out + rest
}

#[test]
fn readme_tables_are_generated_from_the_data_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["README.md", "docs/results.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains("<!-- table: "),
            "{file} has no generated table"
        );
        let expected = generated(root, &text);
        if std::env::var_os("NATGRAD_WRITE_README").is_some() {
            std::fs::write(root.join(file), &expected).unwrap();
            continue;
        }
        if expected != text {
            let diff: Vec<String> = expected
                .lines()
                .zip(text.lines())
                .filter(|(e, r)| e != r)
                .take(5)
                .map(|(e, r)| format!("expected: {e}\n   found: {r}"))
                .collect();
            panic!(
                "{file}'s tables differ from docs/data (NATGRAD_WRITE_README=1 cargo test \
                 --test readme writes them):\n{}",
                diff.join("\n")
            );
        }
    }
}

#[test]
fn the_tables_are_computed_as_documented() {
    // Two seeds of "ngd" (seed 2 run twice: the second run does not count); then two seeds of
    // two optimizers, Adam ending at 97%, which "ngd" first reaches after 2 s on seed 1 and
    // never on seed 2.
    let dir = std::env::temp_dir().join(format!("natgrad-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("seeds.csv"),
        "optimizer,hyper_parameters,seed,epoch,test_accuracy\n\
         ngd,\"lr 1, kl_max none, x\",1,1,0.90\nngd,\"lr 1, kl_max none, x\",1,2,0.95\n\
         ngd,\"lr 1, kl_max none, x\",2,1,0.92\nngd,\"lr 1, kl_max none, x\",2,2,0.97\n\
         ngd,\"lr 1, kl_max none, x\",2,1,0.50\nngd,\"lr 1, kl_max none, x\",2,2,0.50\n",
    )
    .unwrap();
    let table = seeds(&dir, &["seeds.csv"]);
    assert!(
        table.contains("| ngd | lr 1, x | 91.00% (90.00–92.00) | 96.00% (95.00–97.00) | 2 |"),
        "{table}"
    );
    std::fs::write(
        dir.join("evals.csv"),
        "seed,optimizer,seconds,test_accuracy\n\
         1,ngd,1,0.96\n1,ngd,2,0.975\n1,adam,1,0.95\n1,adam,3,0.97\n\
         2,ngd,1,0.90\n2,ngd,2,0.96\n2,adam,1,0.95\n2,adam,3,0.97\n",
    )
    .unwrap();
    let table = reach(&dir, &["evals.csv"]);
    assert!(
        table.contains("| ngd | 2.00 s (2.00–2.00) | 1 of 2 | 2.00 s (2.00–2.00) |"),
        "{table}"
    );
    assert!(
        table.contains("| adam | 3.00 s (3.00–3.00) | 2 of 2 | 3.00 s (3.00–3.00) |"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
