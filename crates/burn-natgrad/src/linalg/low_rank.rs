//! A low-rank-plus-identity damped inverse `(F + δI)⁻¹ ≈ U diag(c) Uᵀ + s I` of a symmetric
//! positive semi-definite `n × n` matrix, on the host in `f64`.
//!
//! The top `r` eigenpairs `(μᵢ, uᵢ)` of `F` come from randomized subspace iteration and a
//! Rayleigh–Ritz step (Halko, Martinsson & Tropp, "Finding structure with randomness:
//! probabilistic algorithms for constructing approximate matrix decompositions", 2011,
//! Algorithms 4.4 and 5.3), the eigenvalues of the small projected matrix by cyclic Jacobi
//! (Golub & Van Loan, "Matrix Computations", §8.5). This is how randomized KFAC avoids the
//! factors' `n³` inverses (Puiu, "Randomized K-FACs: Speeding up K-FAC with Randomized Numerical
//! Linear Algebra", 2022, which truncates the spectrum to its leading eigenmodes). Here the rest
//! of the spectrum is replaced by its mean `σ = (tr F − Σ μᵢ) / (n − r)` instead, so that the
//! approximation keeps the trace, and the inverse is
//! `Σ uᵢuᵢᵀ/(μᵢ + δ) + (I − UUᵀ)/(σ + δ)`: `s = 1/(σ + δ)` and `cᵢ = 1/(μᵢ + δ) − s`.
//!
//! `F` is seen only through its products with `n × (r + p)` matrices (`p` oversampling
//! columns), `q + 2` of them (`q` power iterations), which KFAC runs on the factor's device;
//! the rest is `O(n (r + p)²)` on the host, against the `n³` of a dense inverse.

use crate::linalg::cholesky::dot_f64;

/// Columns drawn beyond the rank (Halko et al.'s `p`).
const OVERSAMPLING: usize = 10;

/// Power iterations (Halko et al.'s `q`): each sharpens the subspace by the spectrum's decay.
const POWER_ITERATIONS: usize = 2;

/// A damped inverse `U diag(coef) Uᵀ + scale · I`.
#[derive(Debug)]
pub(crate) struct LowRankInverse {
    /// `U`, `n × r` row-major, orthonormal columns (a column may be zero where `F` has fewer
    /// than `r` independent directions).
    pub basis: Vec<f64>,
    /// `cᵢ = 1/(μᵢ + δ) − s`, in decreasing order of `μᵢ`.
    pub coef: Vec<f64>,
    /// `s = 1/(σ + δ)`.
    pub scale: f64,
}

/// `dst = a · b` for row-major `a` (`m × k`, or its transpose when `a_t`, stored `k × m`) and
/// row-major `b` (`k × n`); `dst` is `m × n` row-major.
pub(crate) fn matmul(a: &[f64], a_t: bool, b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    assert!(
        a.len() == m * k && b.len() == k * n,
        "low_rank::matmul: shapes"
    );
    let mut dst = vec![0.0f64; m * n];
    let (a_cs, a_rs) = if a_t { (m, 1) } else { (1, k) };
    // SAFETY: the three buffers are distinct and hold `m·n`, `m·k` and `k·n` values, which the
    // strides (row-major, or the transpose of a row-major `k × m`) stay inside.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    dst
}

/// Orthonormalises the `k` columns of the row-major `n × k` matrix `y` in place by classical
/// Gram–Schmidt applied twice ("twice is enough"), on a column-major copy so that its dot
/// products are contiguous; a column that is (numerically) in the span of the ones before it
/// becomes zero.
fn orthonormalise(y: &mut [f64], n: usize, k: usize) {
    let mut cols: Vec<f64> = (0..k * n).map(|i| y[(i % n) * k + i / n]).collect();
    let mut proj = vec![0.0f64; k];
    for j in 0..k {
        let (done, rest) = cols.split_at_mut(j * n);
        let col = &mut rest[..n];
        let norm0 = dot_f64(col, col).sqrt();
        for _ in 0..2 {
            // Projections on the earlier columns, then their removal.
            for (p, q) in proj.iter_mut().zip(done.chunks_exact(n)) {
                *p = dot_f64(q, col);
            }
            for (p, q) in proj.iter().zip(done.chunks_exact(n)) {
                for (c, qi) in col.iter_mut().zip(q) {
                    *c -= p * qi;
                }
            }
        }
        let norm = dot_f64(col, col).sqrt();
        let scale = if norm > 1e-10 * norm0 && norm > f64::MIN_POSITIVE {
            1.0 / norm
        } else {
            0.0
        };
        col.iter_mut().for_each(|c| *c *= scale);
    }
    for (i, v) in y.iter_mut().enumerate() {
        *v = cols[(i % k) * n + i / k];
    }
}

/// Eigenvalues and eigenvectors (the columns of the row-major `k × k` result) of the symmetric
/// `k × k` matrix `b`, by cyclic Jacobi rotations, in decreasing order of the eigenvalues.
pub(crate) fn symmetric_eigen(mut b: Vec<f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    let total: f64 = b.iter().map(|x| x * x).sum();
    for _sweep in 0..60 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| b[i * k + j] * b[i * k + j])
            .sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let bpq = b[p * k + q];
                if bpq == 0.0 {
                    continue;
                }
                let theta = (b[q * k + q] - b[p * k + p]) / (2.0 * bpq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // B ← Jᵀ B J, with J the rotation in the (p, q) plane; V ← V J.
                for r in 0..k {
                    let (brp, brq) = (b[r * k + p], b[r * k + q]);
                    b[r * k + p] = c * brp - s * brq;
                    b[r * k + q] = s * brp + c * brq;
                }
                for r in 0..k {
                    let (bpr, bqr) = (b[p * k + r], b[q * k + r]);
                    b[p * k + r] = c * bpr - s * bqr;
                    b[q * k + r] = s * bpr + c * bqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| b[j * k + j].total_cmp(&b[i * k + i]));
    let values = order.iter().map(|&i| b[i * k + i]).collect();
    let mut vectors = vec![0.0f64; k * k];
    for (new, &old) in order.iter().enumerate() {
        for r in 0..k {
            vectors[r * k + new] = v[r * k + old];
        }
    }
    (values, vectors)
}

/// Standard normal draws from a fixed seed (xorshift64* and Box–Muller), so that the inverse
/// of a factor does not depend on anything but the factor.
pub(crate) fn gaussian(count: usize) -> Vec<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..count)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

/// Makes the row-major `k × k` matrix `b` exactly symmetric: each pair of entries becomes
/// their mean.
pub(crate) fn symmetrise(b: &mut [f64], k: usize) {
    for i in 0..k {
        for j in 0..i {
            let mean = 0.5 * (b[i * k + j] + b[j * k + i]);
            b[i * k + j] = mean;
            b[j * k + i] = mean;
        }
    }
}

/// The coefficients `cᵢ = 1/(μᵢ + δ) − s` and the scale `s = 1/(σ + δ)` of the inverse of a
/// side-`n` matrix with top eigenvalues `mu` (`r` of them, `≥ 0`) and trace `trace`, the rest
/// of the spectrum at its mean `σ = (tr F − Σ μᵢ) / (n − r)`; `None` if they are not finite.
pub(crate) fn trace_keeping(
    mu: &[f64],
    trace: f64,
    n: usize,
    damping: f64,
) -> Option<(Vec<f64>, f64)> {
    let tail = ((trace - mu.iter().sum::<f64>()) / (n - mu.len()) as f64).max(0.0);
    let scale = 1.0 / (tail + damping);
    let coef: Vec<f64> = mu.iter().map(|m| 1.0 / (m + damping) - scale).collect();
    if tail + damping <= 0.0 || !scale.is_finite() || coef.iter().any(|c| !c.is_finite()) {
        return None;
    }
    Some((coef, scale))
}

/// The low-rank-plus-identity `(F + δI)⁻¹` of a symmetric positive semi-definite `n × n`
/// matrix `F` with `r` eigenpairs (`0 < r < n`), seen only through its products: `product(Y,
/// k)` is `F Y` for a row-major `n × k` matrix `Y` (row-major `n × k`), and `trace` is `tr F`.
/// `None` if a product or the trace is not finite, or the damped matrix is not positive
/// definite.
pub(crate) fn low_rank_inverse(
    mut product: impl FnMut(&[f64], usize) -> Vec<f64>,
    trace: f64,
    n: usize,
    r: usize,
    damping: f64,
) -> Option<LowRankInverse> {
    assert!(0 < r && r < n, "low_rank_inverse: rank {r} of a side {n}");
    let k = (r + OVERSAMPLING).min(n);
    let mut apply = |y: &[f64]| {
        let fy = product(y, k);
        assert_eq!(fy.len(), n * k, "low_rank_inverse: the product's shape");
        fy.iter().all(|v| v.is_finite()).then_some(fy)
    };
    if !trace.is_finite() {
        return None;
    }
    let mut y = apply(&gaussian(n * k))?;
    for _ in 0..POWER_ITERATIONS {
        orthonormalise(&mut y, n, k);
        y = apply(&y)?;
    }
    orthonormalise(&mut y, n, k);
    let q = y;
    // Rayleigh–Ritz: B = Qᵀ F Q (symmetrised), B = V diag(μ) Vᵀ, U = Q V.
    let fq = apply(&q)?;
    let mut b = matmul(&q, true, &fq, k, n, k);
    symmetrise(&mut b, k);
    let (mu, v) = symmetric_eigen(b, k);
    let u_all = matmul(&q, false, &v, n, k, k);
    let mu: Vec<f64> = mu[..r].iter().map(|m| m.max(0.0)).collect();
    let (coef, scale) = trace_keeping(&mu, trace, n, damping)?;
    let basis = (0..n)
        .flat_map(|i| u_all[i * k..i * k + r].iter().copied())
        .collect();
    Some(LowRankInverse { basis, coef, scale })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Host helpers the tests of the low-rank inverses share.
    use super::LowRankInverse;

    /// `U diag(coef) Uᵀ + scale I` as a dense row-major matrix.
    pub(crate) fn dense(l: &LowRankInverse, n: usize) -> Vec<f64> {
        let r = l.coef.len();
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let low: f64 = (0..r)
                    .map(|t| l.basis[i * r + t] * l.coef[t] * l.basis[j * r + t])
                    .sum();
                out[i * n + j] = low + if i == j { l.scale } else { 0.0 };
            }
        }
        out
    }

    /// The largest entry of `|a − b|` over the largest of `|b|`.
    pub(crate) fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{dense, max_rel};
    use super::*;
    use crate::linalg::cholesky::cholesky_inverse;

    /// [`low_rank_inverse`] of a host matrix.
    fn of(f: &[f64], n: usize, r: usize, damping: f64) -> Option<LowRankInverse> {
        let trace = (0..n).map(|i| f[i * n + i]).sum();
        low_rank_inverse(|y, k| matmul(f, false, y, n, n, k), trace, n, r, damping)
    }

    /// A symmetric matrix `Q diag(spectrum) Qᵀ` with a random orthogonal `Q`.
    fn with_spectrum(spectrum: &[f64]) -> Vec<f64> {
        let n = spectrum.len();
        let mut q = gaussian(2 * n * n)[n * n..].to_vec();
        orthonormalise(&mut q, n, n);
        let scaled: Vec<f64> = (0..n * n).map(|i| q[i] * spectrum[i % n]).collect();
        matmul(&scaled, false, &transpose(&q, n), n, n, n)
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|i| a[(i % n) * n + i / n]).collect()
    }

    /// A spectrum of `r` large eigenvalues over a flat tail is represented exactly, so the
    /// low-rank inverse is the dense one.
    #[test]
    fn a_flat_tail_gives_the_exact_inverse() {
        let (n, r) = (60, 8);
        let spectrum: Vec<f64> = (0..n)
            .map(|i| if i < r { 1000.0 / (i + 1) as f64 } else { 0.2 })
            .collect();
        let f = with_spectrum(&spectrum);
        let l = of(&f, n, r, 0.1).expect("positive definite");
        let exact = cholesky_inverse(f.clone(), n, 0.1).expect("positive definite");
        let err = max_rel(&dense(&l, n), &exact);
        assert!(err < 1e-7, "relative error {err:e}");
        // The tail is the mean of the rest of the spectrum.
        assert!((l.scale - 1.0 / 0.3).abs() < 1e-9, "scale {}", l.scale);
    }

    /// On a decaying spectrum the top eigenpairs are found: `U diag(c) Uᵀ + sI` applied to the
    /// leading eigenvectors' span matches the dense inverse, and the trace of the approximation
    /// of `F` is kept.
    #[test]
    fn a_decaying_spectrum_keeps_its_leading_eigenvalues_and_its_trace() {
        let (n, r) = (80, 12);
        let spectrum: Vec<f64> = (0..n).map(|i| 0.7f64.powi(i as i32)).collect();
        let f = with_spectrum(&spectrum);
        let damping = 1e-3;
        let l = of(&f, n, r, damping).expect("positive definite");
        let mu: Vec<f64> = l
            .coef
            .iter()
            .map(|c| 1.0 / (c + l.scale) - damping)
            .collect();
        for (i, m) in mu.iter().enumerate() {
            assert!(
                (m - spectrum[i]).abs() < 1e-6 * spectrum[0],
                "μ{i} {m} against {}",
                spectrum[i]
            );
        }
        let tail = 1.0 / l.scale - damping;
        let total = mu.iter().sum::<f64>() + tail * (n - r) as f64;
        assert!((total - spectrum.iter().sum::<f64>()).abs() < 1e-9);
    }

    /// A matrix of rank below the basis (a factor of fewer samples than its side) gives zero
    /// basis columns rather than noise, and still the exact inverse where the tail is empty.
    #[test]
    fn a_rank_deficient_matrix_is_handled() {
        let (n, r) = (40, 12);
        let spectrum: Vec<f64> = (0..n)
            .map(|i| if i < 5 { (i + 1) as f64 } else { 0.0 })
            .collect();
        let f = with_spectrum(&spectrum);
        let l = of(&f, n, r, 0.5).expect("positive definite");
        let exact = cholesky_inverse(f, n, 0.5).expect("positive definite");
        let err = max_rel(&dense(&l, n), &exact);
        assert!(err < 1e-8, "relative error {err:e}");
    }

    #[test]
    fn non_finite_or_undamped_singular_matrices_are_refused() {
        let n = 20;
        let mut f = with_spectrum(&[1.0; 20]);
        f[3] = f64::NAN;
        assert!(of(&f, n, 4, 1.0).is_none());
        let zero = vec![0.0; n * n];
        assert!(of(&zero, n, 4, 0.0).is_none());
        assert!(of(&zero, n, 4, 1.0).is_some());
    }

    #[test]
    fn jacobi_diagonalises_a_small_symmetric_matrix() {
        let b = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 1.0];
        let (values, vectors) = symmetric_eigen(b.clone(), 3);
        for j in 0..3 {
            for i in 0..3 {
                let bv: f64 = (0..3).map(|t| b[i * 3 + t] * vectors[t * 3 + j]).sum();
                assert!((bv - values[j] * vectors[i * 3 + j]).abs() < 1e-12);
            }
        }
        assert!(values[0] >= values[1] && values[1] >= values[2]);
    }
}
