//! KFAC's input factors kept as streaming Nyström sketches
//! ([`kfac_sketch`](crate::NaturalGradientConfig::kfac_sketch); Tropp, Yurtsever, Udell &
//! Cevher, "Fixed-Rank Approximation of a Positive-Semidefinite Matrix from Streaming Data",
//! 2017; the host algebra is [`nystrom`](crate::nystrom)).
//!
//! An input factor `A` (`n × n`) that gets a low-rank inverse of rank `r` is stored as
//! `[A Ω | diag A]` (`[n, k + 1]`, `k` = [`sketch_width`]`(r)`) instead: a batch's rows `X`
//! (`[R, n]`) contribute `[Xᵀ(XΩ) | Σ x²] / R` (`2·R·n·k` multiply-adds instead of the `R·n²`
//! of `XᵀX`), the moving average is the same average of these, and the inverse comes from the
//! sketch alone. The test matrix `Ω` is a function of `(n, k)` (fixed seed), so it is not
//! recorded. A factor too narrow for a sketch to pay (`k + 1 ≥ n`) stays dense; the output
//! gradient factor `G` stays dense (it is `b × b` for `b` outputs, and formed from the batch's
//! `R·b²`).

use burn::tensor::{Tensor, TensorData};

use super::inverse::{factor_rank, host};
use super::KfacOptions;
use crate::low_rank::LowRankInverse;
use crate::nystrom::{nystrom_inverse, sketch_width, test_matrix};

/// The sketch width of an input factor of side `n` under `o`, or `None` when it is kept
/// dense: no sketch asked for, a dense inverse, or a factor no wider than the sketch.
pub(crate) fn width(n: usize, o: &KfacOptions) -> Option<usize> {
    let r = factor_rank(n, o.rank).filter(|_| o.sketch)?;
    let k = sketch_width(r);
    (k + 1 < n).then_some(k)
}

/// Whether a Kronecker block's left factor `f` is a sketch `[n, k + 1]` rather than `[n, n]`.
pub(crate) fn is_sketch(f: &Tensor<2>) -> bool {
    let [n, m] = f.dims();
    1 < m && m < n
}

/// The test matrix `Ω` (`[n, k]`, [`test_matrix`]) on `device`.
fn omega(n: usize, k: usize, device: &burn::tensor::Device) -> Tensor<2> {
    let omega: Vec<f32> = test_matrix(n, k).iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(omega, [n, k]), device)
}

/// A batch's sketch `[Xᵀ(XΩ) | Σ x²] / R` of `XᵀX / R` for rows `x` (`[R, n]`), `k` columns.
pub(crate) fn batch_sketch(x: Tensor<2>, k: usize) -> Tensor<2> {
    let [rows, n] = x.dims();
    let omega = omega(n, k, &x.device());
    let y = x.clone().transpose().matmul(x.clone().matmul(omega));
    let diagonal = x.square().sum_dim(0).transpose();
    Tensor::cat(vec![y, diagonal], 1).div_scalar(rows as f64)
}

/// A sketched factor read to the host: `Y = A Ω` (`n × k`, row-major) and `tr A`.
pub(crate) struct HostSketch {
    pub n: usize,
    pub k: usize,
    pub y: Vec<f64>,
    pub trace: f64,
}

impl HostSketch {
    /// Reads the sketched factor `f` (`[n, k + 1]`) in one host read.
    pub(crate) fn read(f: &Tensor<2>) -> Self {
        let [n, m] = f.dims();
        let k = m - 1;
        let values = host(f);
        let trace = values.chunks_exact(m).map(|row| row[k]).sum();
        let y = values
            .chunks_exact(m)
            .flat_map(|row| row[..k].iter().copied())
            .collect();
        Self { n, k, y, trace }
    }

    /// `(A + δI)⁻¹` of rank `r`, from the sketch alone.
    pub(crate) fn inverse(&self, r: usize, damping: f64) -> Option<LowRankInverse> {
        nystrom_inverse(&self.y, self.trace, self.n, self.k, r, damping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factors::BlockFactors;
    use crate::kfac::{direction, update};
    use crate::low_rank::test_support::max_rel;
    use crate::test_devices::cpu_devices;
    use burn::module::ParamId;
    use burn::tensor::Distribution;

    fn options(sketch: bool) -> KfacOptions {
        KfacOptions {
            decay: 0.8,
            inverse_period: 1,
            damping: 0.3,
            block_limit: 2048,
            rank: Some(2),
            sketch,
        }
    }

    fn weight(rows: usize, a: usize, b: usize, device: &burn::tensor::Device) -> BlockFactors {
        let normal = Distribution::Normal(0.0, 1.0);
        BlockFactors::Weight {
            input: Tensor::random([rows, 1, a], normal, device),
            output_grad: Tensor::random([rows, 1, b], normal, device),
        }
    }

    /// Over two updates the sketched state is the sketch of the dense moving average, `[A Ω |
    /// diag A]`; a factor no wider than the sketch stays dense.
    #[test]
    fn the_sketch_is_the_sketch_of_the_average() {
        for device in cpu_devices() {
            let (a, k) = (40, sketch_width(2));
            let id = ParamId::new();
            let (first, second) = (weight(6, a, 3, &device), weight(6, a, 3, &device));
            let (dense, sketched) = (options(false), options(true));
            let d = update(None, id, &first, &dense).unwrap();
            let d = update(Some(&d), id, &second, &dense).unwrap();
            let s = update(None, id, &first, &sketched).unwrap();
            let s = update(Some(&s), id, &second, &sketched).unwrap();
            let full = d.left.clone().unwrap();
            let diagonal = (full.clone() * Tensor::<2>::eye(a, &device)).sum_dim(1);
            let expected = host(&Tensor::cat(
                vec![full.matmul(omega(a, k, &device)), diagonal],
                1,
            ));
            let got = host(s.left.as_ref().unwrap());
            assert_eq!(got.len(), a * (k + 1));
            let err = max_rel(&got, &expected);
            assert!(err < 1e-5, "relative error {err:e}");
            let full_host = host(d.left.as_ref().unwrap());
            let dense_trace: f64 = (0..a).map(|i| full_host[i * a + i]).sum();
            let sketch_trace = HostSketch::read(s.left.as_ref().unwrap()).trace;
            let err = (sketch_trace - dense_trace).abs() / dense_trace;
            assert!(err < 1e-5, "trace: relative error {err:e}");
            let narrow = update(None, id, &weight(6, k + 1, 3, &device), &sketched).unwrap();
            assert_eq!(narrow.left.unwrap().dims(), [k + 1, k + 1]);
        }
    }

    /// An input factor of rank below the sketch's width (fewer rows than columns of `Ω`) is
    /// captured exactly by its sketch: the direction equals the one from the dense factor's
    /// low-rank inverse.
    #[test]
    fn a_factor_of_low_rank_gives_the_dense_factors_direction() {
        for device in cpu_devices() {
            let (a, b) = (40, 3);
            let id = ParamId::new();
            let block = weight(5, a, b, &device);
            let g = Tensor::<2>::random([a, b], Distribution::Normal(0.0, 1.0), &device);
            let dense = update(None, id, &block, &options(false)).unwrap();
            let sketched = update(None, id, &block, &options(true)).unwrap();
            assert!(is_sketch(sketched.left.as_ref().unwrap()));
            let expected = host(&direction(&dense, g.clone()));
            let err = max_rel(&host(&direction(&sketched, g)), &expected);
            assert!(err < 1e-5, "relative error {err:e}");
        }
    }
}
