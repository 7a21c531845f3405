//! A low-rank-plus-identity damped inverse `(F + δI)⁻¹ ≈ U diag(c) Uᵀ + s I` of a symmetric
//! positive semi-definite `n × n` matrix `F` known only through a sketch `Y = F Ω` with a fixed
//! Gaussian test matrix `Ω` (`n × k`), on the host in `f64`.
//!
//! This is the streaming Nyström approximation of Tropp, Yurtsever, Udell & Cevher ("Fixed-Rank
//! Approximation of a Positive-Semidefinite Matrix from Streaming Data", NeurIPS 2017):
//! `F̂ = Y (Ωᵀ Y)⁺ Yᵀ`, truncated to its top `r` eigenpairs. The core `Ωᵀ Y` is pseudo-inverted
//! through its eigendecomposition, its directions below the sketch's `f32` rounding dropped,
//! instead of their Algorithm 3's shift `Y + νΩ`: the shift must be of that rounding's size
//! here (the sketch is formed in `f32`), and it lowers every eigenvalue by up to `ν`, which is
//! comparable to KFAC's damping on small factors. Since `F ↦ F Ω` is linear, a moving
//! average of the factors is sketched by the same average of the batches' sketches, so KFAC
//! never forms the `n × n` factor: a batch costs `2·R·n·k` multiply-adds (`R` rows) instead of
//! `R·n²`, and the state holds `n·k` numbers instead of `n²`. As in [`low_rank`](crate::low_rank),
//! the rest of the spectrum is put at its mean, `σ = (tr F − Σ μᵢ) / (n − r)`, from the
//! separately averaged diagonal, so that the approximation keeps the trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::low_rank::{
    gaussian, matmul, symmetric_eigen, symmetrise, trace_keeping, LowRankInverse,
};

/// Sketch columns for an inverse of rank `r`: `2r + 10` (Tropp et al. recommend at least
/// `2r + 1` for a rank-`r` truncation; the 10 are Halko et al.'s oversampling).
pub(crate) fn sketch_width(r: usize) -> usize {
    2 * r + 10
}

/// The test matrices drawn so far, by shape `(n, k)`.
type Drawn = HashMap<(usize, usize), Arc<Vec<f64>>>;

/// The test matrix `Ω` (`n × k`, row-major) of a side-`n`, width-`k` sketch: standard normal
/// draws from a fixed seed, so that it is a function of its shape alone (a resumed run
/// regenerates it; nothing but the sketch is recorded). Drawn once per shape and process.
pub(crate) fn test_matrix(n: usize, k: usize) -> Arc<Vec<f64>> {
    static DRAWN: OnceLock<Mutex<Drawn>> = OnceLock::new();
    let mut drawn = DRAWN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    drawn
        .entry((n, k))
        .or_insert_with(|| Arc::new(gaussian(n * k)))
        .clone()
}

/// `(F + δI)⁻¹` with `r` eigenpairs (`0 < r < k ≤ n`) of the matrix `F` whose sketch is `y =
/// F Ω` (`n × k`, row-major; `Ω` from [`test_matrix`]) and whose trace is `trace`. `None` if
/// the sketch or the trace is not finite, or the damped matrix is not positive definite.
pub(crate) fn nystrom_inverse(
    y: &[f64],
    trace: f64,
    n: usize,
    k: usize,
    r: usize,
    damping: f64,
) -> Option<LowRankInverse> {
    assert!(
        0 < r && r < k && k <= n && y.len() == n * k,
        "nystrom_inverse: rank {r}, width {k}, side {n}"
    );
    if !trace.is_finite() || y.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let omega = test_matrix(n, k);
    // The core B = Ωᵀ Y = Ωᵀ F Ω (symmetrised), B = Q diag(β) Qᵀ, pseudo-inverted: directions
    // with β below the sketch's f32 rounding (a factor of rank below k) are dropped.
    let mut b = matmul(&omega, true, y, k, n, k);
    symmetrise(&mut b, k);
    let (beta, q) = symmetric_eigen(b, k);
    let floor = k as f64 * f32::EPSILON as f64 * beta[0].max(0.0);
    let kept = beta.iter().take_while(|&&v| v > floor && v > 0.0).count();
    // E = Y Q_kept diag(β)^(-1/2), so that F̂ = Y B⁺ Yᵀ = E Eᵀ.
    let scaled_q: Vec<f64> = (0..k * kept)
        .map(|i| q[(i / kept) * k + i % kept] / beta[i % kept].sqrt())
        .collect();
    let e = matmul(y, false, &scaled_q, n, k, kept);
    // The eigenpairs of E Eᵀ from those of Eᵀ E = V diag(σ²) Vᵀ: uⱼ = E vⱼ / σⱼ.
    let (sq, v) = if kept > 0 {
        symmetric_eigen(matmul(&e, true, &e, kept, n, kept), kept)
    } else {
        (Vec::new(), Vec::new())
    };
    let u_all = matmul(&e, false, &v, n, kept, kept);
    let top = sq.first().copied().unwrap_or(0.0).max(0.0);
    let mu: Vec<f64> = (0..r)
        .map(|j| sq.get(j).copied().unwrap_or(0.0).max(0.0))
        .collect();
    let inv_norms: Vec<f64> = mu
        .iter()
        .map(|&s| {
            if s > 1e-12 * top && s > 0.0 {
                1.0 / s.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let (coef, scale) = trace_keeping(&mu, trace, n, damping)?;
    let basis = (0..n)
        .flat_map(|i| (0..r).map(move |j| (i, j)))
        .map(|(i, j)| {
            if j < kept {
                u_all[i * kept + j] * inv_norms[j]
            } else {
                0.0
            }
        })
        .collect();
    Some(LowRankInverse { basis, coef, scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::low_rank::low_rank_inverse;
    use crate::low_rank::test_support::{dense, max_rel};

    /// `Z Zᵀ` for a random `n × m` `Z` whose column `j` is scaled by `scales[j]`.
    fn psd(n: usize, scales: &[f64]) -> Vec<f64> {
        let m = scales.len();
        let z: Vec<f64> = gaussian(n * m + 7)[7..]
            .iter()
            .enumerate()
            .map(|(i, v)| v * scales[i % m])
            .collect();
        let zt: Vec<f64> = (0..m * n).map(|i| z[(i % n) * m + i / n]).collect();
        matmul(&z, false, &zt, n, m, n)
    }

    fn both(f: &[f64], n: usize, k: usize, r: usize, damping: f64) -> (Vec<f64>, Vec<f64>) {
        let trace: f64 = (0..n).map(|i| f[i * n + i]).sum();
        let y = matmul(f, false, &test_matrix(n, k), n, n, k);
        let sketched = nystrom_inverse(&y, trace, n, k, r, damping).expect("positive definite");
        let iterated = low_rank_inverse(|y, w| matmul(f, false, y, n, n, w), trace, n, r, damping)
            .expect("positive definite");
        (dense(&sketched, n), dense(&iterated, n))
    }

    /// A matrix of rank at most the sketch's width is what its sketch says: the inverse from
    /// the sketch is the one from randomized subspace iteration on the matrix itself (both
    /// exact there), eigenpairs and trace-keeping tail alike.
    #[test]
    fn a_sketch_wider_than_the_rank_is_exact() {
        let (n, r) = (50, 3);
        let k = sketch_width(r);
        let f = psd(n, &[9.0, 5.0, 3.0, 1.0, 0.5, 0.25]);
        let (sketched, iterated) = both(&f, n, k, r, 0.1);
        let err = max_rel(&sketched, &iterated);
        assert!(err < 1e-8, "relative error {err:e}");
    }

    /// With a spectrum that decays but is not low-rank, the sketch's top eigenpairs are close
    /// to the matrix's: the inverses agree to a few parts in ten thousand (5.8e-4 measured).
    #[test]
    fn a_decaying_spectrum_is_close() {
        let (n, r) = (80, 4);
        let scales: Vec<f64> = (0..n).map(|j| 10.0 * 0.5f64.powi(j as i32)).collect();
        let f = psd(n, &scales);
        let (sketched, iterated) = both(&f, n, sketch_width(r), r, 0.05);
        let err = max_rel(&sketched, &iterated);
        assert!(err < 2e-3, "relative error {err:e}");
    }

    /// A zero sketch (a factor that saw only zero inputs) gives the damping's inverse; a
    /// non-finite one, none.
    #[test]
    fn zero_and_non_finite_sketches() {
        let (n, r) = (30, 2);
        let k = sketch_width(r);
        let zero = nystrom_inverse(&vec![0.0; n * k], 0.0, n, k, r, 0.5).expect("damped");
        assert!((zero.scale - 2.0).abs() < 1e-12);
        assert!(zero.coef.iter().all(|c| c.abs() < 1e-12));
        let mut bad = vec![1.0; n * k];
        bad[3] = f64::NAN;
        assert!(nystrom_inverse(&bad, 1.0, n, k, r, 0.5).is_none());
        assert!(nystrom_inverse(&vec![0.0; n * k], f64::INFINITY, n, k, r, 0.5).is_none());
    }
}
