//! KFAC's damped factor inverses: the π-corrected factored Tikhonov damping (Martens & Grosse
//! 2015, §6.3), planned per block ([`plan`]) and then computed for all blocks due at a step
//! together, each a host Cholesky inverse in `f64`, spread over the machine's cores
//! ([`run`]): the inverses of one step are independent, and on a CPU they are the largest
//! part of KFAC's cost.

use burn::tensor::{Device, Tensor, TensorData};

use super::Kind;
use crate::cholesky::cholesky_inverse;

/// `(F + δI)⁻¹` of one square factor, to be computed on the host.
pub(crate) struct HostJob {
    data: Vec<f64>,
    n: usize,
    damping: f64,
}

/// One factor's inverse: a host job (and which factor it is), the index of its job once
/// handed to [`invert_all`], or already formed (a diagonal's reciprocal).
enum Inverse {
    Host(HostJob, &'static str),
    Job(usize, &'static str),
    Done(Box<Tensor<2>>),
}

/// A host inverse: the factor's size and its values, or `None` if it was not positive definite.
type Inverted = Option<(usize, Vec<f64>)>;

/// A block's inverses `(left⁻¹, right⁻¹)`, or which factor could not be inverted.
pub(crate) type BlockInverses = Result<(Option<Tensor<2>>, Tensor<2>), &'static str>;

/// The inverses a block needs, before the host jobs run.
pub(crate) struct Planned {
    left: Option<Inverse>,
    right: Inverse,
    device: Device,
}

/// A square matrix on the host, in `f64`.
pub(crate) fn host(t: &Tensor<2>) -> Vec<f64> {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("float data")
}

fn job(f: &Tensor<2>, damping: f64, which: &'static str) -> Inverse {
    let [n, _] = f.dims();
    Inverse::Host(
        HostJob {
            data: host(f),
            n,
            damping,
        },
        which,
    )
}

/// `tr F / dim F` of a square factor, or of a diagonal one stored as a column or row.
fn mean_eigenvalue(f: &Tensor<2>) -> f64 {
    let [r, c] = f.dims();
    let trace = if r == c && r > 1 {
        (Tensor::<2>::eye(r, &f.device()) * f.clone()).sum()
    } else {
        f.clone().sum()
    };
    trace.into_scalar::<f64>() / r.max(c) as f64
}

/// The damped inverses a block's factors need: `(A + π√λ I)⁻¹` and `(G + √λ/π I)⁻¹` for a
/// Kronecker or gather block (π balances the damping between the factors; 1 when either is
/// degenerate), `(F + λI)⁻¹` for a whole block, the reciprocal for a diagonal.
pub(crate) fn plan(
    kind: Kind,
    left: Option<&Tensor<2>>,
    right: &Tensor<2>,
    damping: f64,
) -> Planned {
    let device = right.device();
    let (left, right) = match (kind, left) {
        (Kind::Kronecker | Kind::Gather, Some(left)) => {
            let pi = (mean_eigenvalue(left) / mean_eigenvalue(right)).sqrt();
            let pi = if pi.is_finite() && pi > 0.0 { pi } else { 1.0 };
            let root = damping.sqrt();
            let left = if kind == Kind::Kronecker {
                job(left, pi * root, "its input factor A")
            } else {
                Inverse::Done(Box::new(left.clone().add_scalar(pi * root).recip()))
            };
            (
                Some(left),
                job(right, root / pi, "its output-gradient factor G"),
            )
        }
        (Kind::Full, None) => (None, job(right, damping, "its Fisher block")),
        (Kind::Diagonal, None) => (
            None,
            Inverse::Done(Box::new(right.clone().add_scalar(damping).recip())),
        ),
        _ => unreachable!("a left factor exactly for Kronecker and gather blocks"),
    };
    Planned {
        left,
        right,
        device,
    }
}

/// Runs the host jobs of every planned block, largest first, each on the least loaded of the
/// machine's cores, and returns the blocks' inverses `(left⁻¹, right⁻¹)`, in order; `Err` says
/// which factor of a block is not positive definite or not finite.
pub(crate) fn run(planned: Vec<Planned>) -> Vec<BlockInverses> {
    let mut jobs: Vec<(usize, HostJob)> = Vec::new();
    let mut slots: Vec<(Option<Inverse>, Inverse, Device)> = Vec::new();
    for p in planned {
        let mut take = |inverse: Inverse| match inverse {
            Inverse::Host(job, which) => {
                jobs.push((jobs.len(), job));
                Inverse::Job(jobs.len() - 1, which)
            }
            other => other,
        };
        let left = p.left.map(&mut take);
        let right = take(p.right);
        slots.push((left, right, p.device));
    }
    let results = invert_all(jobs);
    let finish = |inverse: Inverse, device: &Device| -> Result<Tensor<2>, &'static str> {
        match inverse {
            Inverse::Job(i, which) => {
                let (n, values) = results[i].as_ref().ok_or(which)?;
                let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Ok(Tensor::from_data(TensorData::new(values, [*n, *n]), device))
            }
            Inverse::Done(t) => Ok(*t),
            Inverse::Host(..) => unreachable!("every host job was handed over"),
        }
    };
    slots
        .into_iter()
        .map(|(left, right, device)| {
            let left = left.map(|l| finish(l, &device)).transpose()?;
            Ok((left, finish(right, &device)?))
        })
        .collect()
}

/// The inverses of `jobs` (`(n, values)`, or `None` where not positive definite), in order,
/// computed on up to as many threads as the machine has cores.
fn invert_all(jobs: Vec<(usize, HostJob)>) -> Vec<Inverted> {
    let count = jobs.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count)
        .max(1);
    // Largest first, each to the thread with the least work (multiply-adds ~ n³).
    let mut sorted = jobs;
    sorted.sort_by_key(|(_, j)| std::cmp::Reverse(j.n));
    let mut bins: Vec<Vec<(usize, HostJob)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut load = vec![0.0f64; threads];
    for (i, job) in sorted {
        let t = (0..threads)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .expect("at least one thread");
        load[t] += (job.n as f64).powi(3);
        bins[t].push((i, job));
    }
    let invert = |bin: Vec<(usize, HostJob)>| -> Vec<(usize, Inverted)> {
        bin.into_iter()
            .map(|(i, j)| {
                (
                    i,
                    cholesky_inverse(j.data, j.n, j.damping).map(|v| (j.n, v)),
                )
            })
            .collect()
    };
    let mut out: Vec<Inverted> = (0..count).map(|_| None).collect();
    let mut bins = bins.into_iter();
    let first = bins.next().unwrap_or_default();
    let done: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = bins.map(|bin| s.spawn(move || invert(bin))).collect();
        let mut done = invert(first);
        for h in handles {
            done.extend(h.join().expect("a host inverse does not panic"));
        }
        done
    });
    for (i, r) in done {
        out[i] = r;
    }
    out
}
