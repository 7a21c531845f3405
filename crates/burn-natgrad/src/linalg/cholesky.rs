//! The host Cholesky solve of the `M × M` Gram system, in `f64`: blocked, right-looking, with
//! the trailing updates as matrix products (the `gemm` crate) (Golub & Van Loan, "Matrix
//! Computations", §4.2).

/// `Σ a[i] b[i]` with eight independent accumulators over exact chunks (no bounds checks in the
/// loop), so that it vectorises.
pub(crate) fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// Block rows of the inverse's two products (`L⁻¹` and `L⁻ᵀ L⁻¹`): wider than the
/// factorisation's, so that the products are less thin.
const INVERSE_BLOCK: usize = 128;

/// Block size of the host Cholesky: diagonal blocks and panels are factorised by dot products,
/// the trailing matrix is updated by matrix products (the `gemm` crate).
const CHOLESKY_BLOCK: usize = 32;

/// Solves `(A + λI) x = b` for a symmetric `m × m` row-major `A` by Cholesky (blocked, right-
/// looking: the trailing updates, `m³/6` of the `m³/6 + O(m²·64)` multiply-adds, run as matrix
/// products); `None` if the matrix is not positive definite or not finite. Reads only the lower
/// triangle of `A`.
#[cfg(any(test, feature = "testing"))]
pub fn cholesky_solve(a: &[f64], b: &[f64], m: usize, damping: f64) -> Option<Vec<f64>> {
    cholesky_factor_solve(a.to_vec(), b, m, damping)
}

/// [`cholesky_solve`] in place: `l` holds `A` and is overwritten by its factor.
pub(crate) fn cholesky_factor_solve(
    mut l: Vec<f64>,
    b: &[f64],
    m: usize,
    damping: f64,
) -> Option<Vec<f64>> {
    assert!(l.len() == m * m && b.len() == m, "cholesky_solve: shapes");
    if !factor_in_place(&mut l, m, damping) {
        return None;
    }
    // L y = b, then Lᵀ x = y.
    let mut y = vec![0.0f64; m];
    for i in 0..m {
        y[i] = (b[i] - dot_f64(&l[i * m..i * m + i], &y[..i])) / l[i * m + i];
    }
    let mut x = vec![0.0f64; m];
    for i in (0..m).rev() {
        let mut s = y[i];
        for p in i + 1..m {
            s -= l[p * m + i] * x[p];
        }
        x[i] = s / l[i * m + i];
    }
    Some(x)
}

/// `(A + λI)⁻¹` of a symmetric `m × m` row-major `A` (only its lower triangle is read), by
/// Cholesky: `X = L⁻¹` by block rows, then `(A + λI)⁻¹ = Xᵀ X`, both as matrix products;
/// `None` if the matrix is not positive definite or not finite. KFAC's factor inverses use it.
pub(crate) fn cholesky_inverse(mut l: Vec<f64>, m: usize, damping: f64) -> Option<Vec<f64>> {
    assert!(l.len() == m * m, "cholesky_inverse: shapes");
    if !factor_in_place(&mut l, m, damping) {
        return None;
    }
    let x = lower_inverse(&l, m);
    // (A + λI)⁻¹ = Xᵀ X = Σ over block rows k of X_kᵀ X_k, where block row k (rows k0..k1) is
    // zero right of column k1: a third of a full product's multiply-adds.
    let mut inverse = vec![0.0f64; m * m];
    for k0 in (0..m).step_by(INVERSE_BLOCK) {
        let k1 = (k0 + INVERSE_BLOCK).min(m);
        // SAFETY: `inverse` and `x` are distinct `m × m` row-major buffers; the product reads
        // rows k0..k1, columns 0..k1 of `x` (as `X_kᵀ`, column stride m, and as `X_k`) and
        // writes rows and columns 0..k1 of `inverse` only.
        unsafe {
            gemm::gemm(
                k1,
                k1,
                k1 - k0,
                inverse.as_mut_ptr(),
                1,
                m as isize,
                true,
                x.as_ptr().add(k0 * m),
                m as isize,
                1,
                x.as_ptr().add(k0 * m),
                1,
                m as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    Some(inverse)
}

/// `L⁻¹` (lower triangular, row-major `m × m`) of the lower triangle of `l`, by block rows of
/// `INVERSE_BLOCK`: with `I` the block row `k0..k1`, `X_II = L_II⁻¹` (each of its rows an
/// accumulation of the rows above it) and `X_{I,<I} = −X_II · (L_{I,<I} · X_{<I,<I})`, the two
/// products by `gemm`.
fn lower_inverse(l: &[f64], m: usize) -> Vec<f64> {
    let mut x = vec![0.0f64; m * m];
    let mut t = vec![0.0f64; INVERSE_BLOCK * m];
    let mut xd = vec![0.0f64; INVERSE_BLOCK * INVERSE_BLOCK];
    for k0 in (0..m).step_by(INVERSE_BLOCK) {
        let k1 = (k0 + INVERSE_BLOCK).min(m);
        let b = k1 - k0;
        // X_II = L_II⁻¹: row i is (e_i − Σ_{k<i} L[i, k] X[k, ..]) / L[i, i], within the block.
        xd[..b * b].fill(0.0);
        for i in 0..b {
            let (done, rest) = xd.split_at_mut(i * b);
            let row = &mut rest[..b];
            row[i] = 1.0;
            for k in 0..i {
                let c = l[(k0 + i) * m + k0 + k];
                for (r, v) in row[..=k].iter_mut().zip(&done[k * b..k * b + k + 1]) {
                    *r -= c * v;
                }
            }
            let pivot = l[(k0 + i) * m + k0 + i];
            for r in row[..=i].iter_mut() {
                *r /= pivot;
            }
        }
        for i in 0..b {
            x[(k0 + i) * m + k0..(k0 + i) * m + k1].copy_from_slice(&xd[i * b..(i + 1) * b]);
        }
        if k0 == 0 {
            continue;
        }
        // SAFETY: every pointer stays inside its buffer: `t` holds `b × k0` (row stride k0) of
        // its `INVERSE_BLOCK · m`; `l` and `x` are read at rows < k1 and columns < k0 (row
        // stride m); `xd` is `b × b` (row stride b); the second product writes rows k0..k1,
        // columns 0..k0 of `x`, which neither of its operands (`xd`, `t`) aliases.
        unsafe {
            gemm::gemm(
                b,
                k0,
                k0,
                t.as_mut_ptr(),
                1,
                k0 as isize,
                false,
                l.as_ptr().add(k0 * m),
                1,
                m as isize,
                x.as_ptr(),
                1,
                m as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            gemm::gemm(
                b,
                k0,
                b,
                x.as_mut_ptr().add(k0 * m),
                1,
                m as isize,
                false,
                xd.as_ptr(),
                1,
                b as isize,
                t.as_ptr(),
                1,
                k0 as isize,
                0.0,
                -1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    x
}

/// Overwrites the lower triangle of `l` (holding `A`) by the Cholesky factor of `A + λI`;
/// false if it is not positive definite or not finite.
fn factor_in_place(l: &mut [f64], m: usize, damping: f64) -> bool {
    // L overwrites the lower triangle of A + λI; the upper triangle is scratch.
    for i in 0..m {
        l[i * m + i] += damping;
    }
    for k0 in (0..m).step_by(CHOLESKY_BLOCK) {
        let k1 = (k0 + CHOLESKY_BLOCK).min(m);
        // Columns k0..k1 of L, rows k0..m: each entry from the already-updated A and the
        // entries of L to its left within the panel.
        for i in k0..m {
            for j in k0..k1.min(i + 1) {
                let s =
                    l[i * m + j] - dot_f64(&l[i * m + k0..i * m + j], &l[j * m + k0..j * m + j]);
                if i == j {
                    if s.is_nan() || s <= 0.0 || s.is_infinite() {
                        return false;
                    }
                    l[i * m + i] = s.sqrt();
                } else {
                    l[i * m + j] = s / l[j * m + j];
                }
            }
        }
        // Trailing update A[r, c] -= Σ_{p in k0..k1} L[r, p] L[c, p] for k1 <= c <= r, one
        // block row of rows r0..r1 (columns k1..r1) per product.
        for r0 in (k1..m).step_by(CHOLESKY_BLOCK) {
            let r1 = (r0 + CHOLESKY_BLOCK).min(m);
            trailing_update(l, m, k0, k1, r0, r1);
        }
    }
    // A NaN or infinity anywhere in the lower triangle reaches a later pivot `s` (every entry of
    // row i enters L[i, i]), which the check above rejects.
    true
}

/// `L[r0..r1, k1..r1] -= L[r0..r1, k0..k1] · L[k1..r1, k0..k1]ᵀ` in the row-major `m × m`
/// buffer `l` (the columns written, `k1..`, are disjoint from the columns read, `k0..k1`).
fn trailing_update(l: &mut [f64], m: usize, k0: usize, k1: usize, r0: usize, r1: usize) {
    assert!(k0 < k1 && k1 <= r0 && r0 < r1 && r1 <= m && l.len() == m * m);
    let base = l.as_mut_ptr();
    let stride = m as isize;
    // SAFETY: every pointer derives from `base` and stays inside the `m × m` buffer: the
    // destination spans rows r0..r1 and columns k1..r1, the left operand rows r0..r1 and
    // columns k0..k1, the right operand rows k1..r1 and columns k0..k1 (all < m, asserted).
    // The destination's columns (>= k1) do not overlap the operands' (< k1), and nothing else
    // touches `l` during the call.
    unsafe {
        gemm::gemm(
            r1 - r0,
            r1 - k1,
            k1 - k0,
            base.add(r0 * m + k1),
            1,
            stride,
            true,
            base.add(r0 * m + k0) as *const f64,
            1,
            stride,
            base.add(k1 * m + k0) as *const f64,
            stride,
            1,
            1.0,
            -1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook (unblocked) Cholesky solve, as the oracle of the blocked one.
    fn reference_solve(a: &[f64], b: &[f64], m: usize, damping: f64) -> Vec<f64> {
        let mut l = vec![0.0f64; m * m];
        for i in 0..m {
            for j in 0..=i {
                let mut s = a[i * m + j] + if i == j { damping } else { 0.0 };
                for p in 0..j {
                    s -= l[i * m + p] * l[j * m + p];
                }
                l[i * m + j] = if i == j { s.sqrt() } else { s / l[j * m + j] };
            }
        }
        let mut y = vec![0.0; m];
        for i in 0..m {
            y[i] = (b[i] - (0..i).map(|p| l[i * m + p] * y[p]).sum::<f64>()) / l[i * m + i];
        }
        let mut x = vec![0.0; m];
        for i in (0..m).rev() {
            x[i] = (y[i] - (i + 1..m).map(|p| l[p * m + i] * x[p]).sum::<f64>()) / l[i * m + i];
        }
        x
    }

    /// A random Gram matrix `G Gᵀ / m` (`m × m`, rank ≤ 40, so that damping matters) and `b`.
    fn system(m: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let r = 40;
        let g: Vec<f64> = (0..m * r).map(|_| next()).collect();
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                a[i * m + j] = (0..r).map(|p| g[i * r + p] * g[j * r + p]).sum::<f64>() / m as f64;
            }
        }
        let b = (0..m).map(|_| next()).collect();
        (a, b)
    }

    #[test]
    fn blocked_cholesky_matches_the_textbook_one() {
        for (m, damping) in [
            (1, 0.5),
            (63, 1e-3),
            (64, 0.1),
            (65, 1.0),
            (150, 1e-2),
            (257, 1e-4),
        ] {
            let (a, b) = system(m, m as u64);
            let x = cholesky_solve(&a, &b, m, damping).expect("positive definite");
            let expected = reference_solve(&a, &b, m, damping);
            let scale = expected.iter().fold(0.0f64, |acc, v| acc.max(v.abs()));
            let err = x
                .iter()
                .zip(&expected)
                .fold(0.0f64, |acc, (u, v)| acc.max((u - v).abs()));
            assert!(err <= 1e-9 * scale.max(1.0), "m = {m}: max error {err:e}");
        }
    }

    #[test]
    fn blocked_cholesky_rejects_a_nan_in_a_late_block() {
        let m = 130;
        let (mut a, b) = system(m, 3);
        a[129 * m + 3] = f64::NAN;
        assert!(cholesky_solve(&a, &b, m, 0.1).is_none());
        let (mut a, b) = system(m, 4);
        a[100 * m + 100] = -1e3;
        assert!(cholesky_solve(&a, &b, m, 0.1).is_none());
    }

    #[test]
    fn cholesky_solves_a_small_spd_system() {
        // A = [[4, 2], [2, 3]], λ = 1 -> [[5, 2], [2, 4]]; b = [1, 2] -> x = [0, 0.5].
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[1.0, 2.0], 2, 1.0).unwrap();
        assert!(
            (x[0] - 0.0).abs() < 1e-12 && (x[1] - 0.5).abs() < 1e-12,
            "{x:?}"
        );
    }

    #[test]
    fn cholesky_rejects_indefinite_and_nan() {
        assert!(cholesky_solve(&[-1.0], &[1.0], 1, 0.5).is_none());
        assert!(cholesky_solve(&[f64::NAN], &[1.0], 1, 0.5).is_none());
    }

    #[test]
    fn cholesky_inverse_times_the_matrix_is_the_identity() {
        for (m, damping) in [(1, 0.5), (33, 1e-2), (70, 0.1), (300, 1e-2)] {
            let (a, _) = system(m, 7 + m as u64);
            let inv = cholesky_inverse(a.clone(), m, damping).expect("positive definite");
            let mut err = 0.0f64;
            for i in 0..m {
                for j in 0..m {
                    let p: f64 = (0..m)
                        .map(|k| {
                            let aik = a[i * m + k] + if i == k { damping } else { 0.0 };
                            aik * inv[k * m + j]
                        })
                        .sum();
                    err = err.max((p - if i == j { 1.0 } else { 0.0 }).abs());
                }
            }
            assert!(err < 1e-8, "m = {m}: ‖(A + λI) A⁻¹ − I‖∞ = {err:e}");
        }
        assert!(cholesky_inverse(vec![f64::NAN], 1, 0.5).is_none());
    }
}
