//! KFAC's damped factor inverses: the π-corrected factored Tikhonov damping (Martens & Grosse
//! 2015, §6.3), planned per block ([`plan`]) and then computed for all blocks due at a step
//! together, each a host Cholesky inverse in `f64`, spread over the machine's cores ([`run`]):
//! the inverses of one step are independent, and on a CPU they are the largest part of KFAC's
//! cost. A factor wider than four times
//! [`KfacInverse::LowRank`](crate::KfacInverse::LowRank) gets a low-rank-plus-identity
//! inverse instead ([`low_rank`](crate::linalg::low_rank)), formed while planning: its products with
//! the factor run on the factor's device, so the factor is never read back.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::apply::FactorInverse;
use super::Kind;
use crate::linalg::cholesky::cholesky_inverse;
use crate::linalg::low_rank::low_rank_inverse;

/// `(F + δI)⁻¹` of one square factor, to be computed on the host.
pub(crate) struct HostJob {
    data: Vec<f64>,
    n: usize,
    damping: f64,
}

/// The rank of a Kronecker factor's inverse of side `n` under the setting `rank`: `Some(r)`
/// when the factor is wider than `4r` (its products then cost at most half the dense ones),
/// `None` (dense) otherwise.
pub(crate) fn factor_rank(n: usize, rank: Option<usize>) -> Option<usize> {
    rank.filter(|&r| r > 0 && n > 4 * r)
}

/// One factor's inverse: a host job (and which factor it is), the index of its job once
/// handed to [`invert_all`], already formed (a diagonal's reciprocal, a low-rank inverse), or
/// which factor could not be inverted.
enum Inverse {
    Host(HostJob, &'static str),
    Job(usize, &'static str),
    Done(Box<FactorInverse>),
    Failed(&'static str),
}

/// A host inverse: the factor's size and its values, or `None` if it was not positive definite.
type Inverted = Option<(usize, Vec<f64>)>;

/// A block's inverses `(left⁻¹, right⁻¹)`, or which factor could not be inverted.
pub(crate) type BlockInverses = Result<(Option<FactorInverse>, FactorInverse), &'static str>;

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

/// The inverse of a full factor `f` (trace `trace`): low-rank when `rank` says so (formed now,
/// its products on `f`'s device), else a host job.
fn job(
    f: &Tensor<2>,
    trace: f64,
    damping: f64,
    rank: Option<usize>,
    which: &'static str,
) -> Inverse {
    let [n, _] = f.dims();
    let Some(r) = factor_rank(n, rank) else {
        return Inverse::Host(
            HostJob {
                data: host(f),
                n,
                damping,
            },
            which,
        );
    };
    let device = f.device();
    let product = |y: &[f64], k: usize| -> Vec<f64> {
        let y: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        host(
            &f.clone()
                .matmul(Tensor::from_data(TensorData::new(y, [n, k]), &device)),
        )
    };
    match low_rank_inverse(product, trace, n, r, damping) {
        Some(l) => Inverse::Done(Box::new(FactorInverse::low_rank(&l, n, &device))),
        None => Inverse::Failed(which),
    }
}

/// `tr F / dim F` of a square factor, or of a diagonal one stored as a column or row. The
/// trace of a factor that gets a low-rank inverse (`gather`) sums its `n` diagonal entries,
/// gathered; a dense one's sums `I ⊙ F` (`n²` products, 1.8 ms at `n = 784` on flex), the
/// summation order its documented runs were measured with.
fn mean_eigenvalue(f: &Tensor<2>, gather: bool) -> f64 {
    let [r, c] = f.dims();
    let trace = if r == c && r > 1 && gather {
        let step = r as i64 + 1;
        let diagonal = Tensor::<1, Int>::arange(0..r as i64, &f.device()) * step;
        f.clone().reshape([r * r]).select(0, diagonal).sum()
    } else if r == c && r > 1 {
        (Tensor::<2>::eye(r, &f.device()) * f.clone()).sum()
    } else {
        f.clone().sum()
    };
    trace.into_scalar::<f64>() / r.max(c) as f64
}

/// The damped inverses a block's factors need: `(A + π√λ I)⁻¹` and `(G + √λ/π I)⁻¹` for a
/// Kronecker or gather block (π balances the damping between the factors; 1 when either is
/// degenerate), `(F + λI)⁻¹` for a whole block, the reciprocal for a diagonal. A Kronecker or
/// gather block's full factors wider than `4 · rank` get low-rank-plus-identity inverses.
pub(crate) fn plan(
    kind: Kind,
    left: Option<&Tensor<2>>,
    right: &Tensor<2>,
    damping: f64,
    rank: Option<usize>,
) -> Planned {
    let device = right.device();
    let done = |inv: Tensor<2>| Inverse::Done(Box::new(FactorInverse { inv, coef: None }));
    let (left, right) = match (kind, left) {
        (Kind::Kronecker | Kind::Gather, Some(left)) => {
            // Whether `job` gives the factor a low-rank inverse.
            let low = |f: &Tensor<2>| factor_rank(f.dims()[0], rank).is_some();
            let n = |f: &Tensor<2>| f.dims()[0] as f64;
            let mean_left = mean_eigenvalue(left, kind == Kind::Kronecker && low(left));
            let mean_right = mean_eigenvalue(right, low(right));
            let pi = (mean_left / mean_right).sqrt();
            let pi = if pi.is_finite() && pi > 0.0 { pi } else { 1.0 };
            let root = damping.sqrt();
            let which = "its input factor A";
            let left = if kind == Kind::Kronecker {
                let trace = mean_left * n(left);
                job(left, trace, pi * root, rank, which)
            } else {
                done(left.clone().add_scalar(pi * root).recip())
            };
            let trace = mean_right * n(right);
            let right = job(
                right,
                trace,
                root / pi,
                rank,
                "its output-gradient factor G",
            );
            (Some(left), right)
        }
        (Kind::Full, None) => (
            None,
            job(right, f64::NAN, damping, None, "its Fisher block"),
        ),
        (Kind::Diagonal, None) => (None, done(right.clone().add_scalar(damping).recip())),
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
    let finish = |inverse: Inverse, device: &Device| -> Result<FactorInverse, &'static str> {
        match inverse {
            Inverse::Job(i, which) => {
                let (n, values) = results[i].as_ref().ok_or(which)?;
                Ok(FactorInverse::dense(values, *n, device))
            }
            Inverse::Done(f) => Ok(*f),
            Inverse::Failed(which) => Err(which),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::devices::cpu_devices;
    use burn::tensor::Distribution;

    /// The gathered diagonal and the identity mask give the same mean eigenvalue, the host
    /// trace's; a column or row is summed.
    #[test]
    fn both_traces_are_the_host_trace() {
        for device in cpu_devices() {
            let n = 7;
            let f = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
            let values = host(&f);
            let expected = (0..n).map(|i| values[i * n + i]).sum::<f64>() / n as f64;
            for gather in [true, false] {
                let mean = mean_eigenvalue(&f, gather);
                assert!(
                    (mean - expected).abs() < 1e-6,
                    "{gather}: {mean} vs {expected}"
                );
            }
            let column = f.narrow(1, 0, 1);
            let sum = host(&column).iter().sum::<f64>() / n as f64;
            assert!((mean_eigenvalue(&column, true) - sum).abs() < 1e-6);
        }
    }
}
