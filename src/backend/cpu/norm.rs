//! Layer normalisation over the last `cols` elements of each of `rows`
//! rows, forward and backward, with the affine weight and bias folded in.
//! Statistics are two-pass (mean, then the mean of squared deviations), as
//! PyTorch's CPU kernel computes them, so a row with a large offset loses
//! no precision to cancellation.

use super::math::row_sum;
use super::output_overwritten;
use super::simd::for_rows;
use crate::Result;

/// `y = (x - mean) · rstd · w + b` per row, and the per-row `[mean, rstd]`
/// the backward reuses.
pub(super) fn layer_norm(x: &[f32], w: &[f32], b: &[f32], rows: usize, cols: usize, eps: f32) -> Result<[Vec<f32>; 2]> {
    let mut y = output_overwritten(rows * cols)?;
    let mut stats = output_overwritten(rows * 2)?;
    for_rows(
        &mut stats,
        2,
        #[inline(always)]
        |row, s| {
            let r = &x[row * cols..(row + 1) * cols];
            let mean = row_sum(r) / cols as f32;
            let var = r.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
            s[0] = mean;
            s[1] = 1.0 / (var + eps).sqrt();
        },
    );
    let stats_ref = &stats;
    for_rows(
        &mut y,
        cols.max(1),
        #[inline(always)]
        |row, out| {
            let (mean, rstd) = (stats_ref[2 * row], stats_ref[2 * row + 1]);
            let r = &x[row * cols..(row + 1) * cols];
            for (((o, &v), &w), &b) in out.iter_mut().zip(r).zip(w).zip(b) {
                *o = (v - mean) * rstd * w + b;
            }
        },
    );
    Ok([y, stats])
}

/// The gradients of [`layer_norm`] for `gy`: `dx` per row,
/// `rstd · (g - mean(g) - x̂ · mean(g · x̂))` with `g = gy · w`, and the
/// weight's and bias's, `Σ_rows gy · x̂` and `Σ_rows gy`.
pub(super) fn layer_norm_backward(
    x: &[f32],
    stats: &[f32],
    w: &[f32],
    gy: &[f32],
    rows: usize,
    cols: usize,
) -> Result<[Vec<f32>; 3]> {
    let mut dx = output_overwritten(rows * cols)?;
    for_rows(
        &mut dx,
        cols.max(1),
        #[inline(always)]
        |row, out| {
            let (mean, rstd) = (stats[2 * row], stats[2 * row + 1]);
            let (r, g) = (&x[row * cols..(row + 1) * cols], &gy[row * cols..(row + 1) * cols]);
            let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
            for ((&v, &g), &w) in r.iter().zip(g).zip(w) {
                let gw = g * w;
                sum_g += gw;
                sum_gx += gw * (v - mean) * rstd;
            }
            let (a, c) = (sum_g / cols as f32, sum_gx / cols as f32);
            for (((o, &v), &g), &w) in out.iter_mut().zip(r).zip(g).zip(w) {
                let xhat = (v - mean) * rstd;
                *o = rstd * (g * w - a - xhat * c);
            }
        },
    );
    let mut dw = vec![0.0f32; cols];
    let mut db = vec![0.0f32; cols];
    for (row, s) in stats[..rows * 2].chunks(2).enumerate() {
        let (r, g) = (&x[row * cols..(row + 1) * cols], &gy[row * cols..(row + 1) * cols]);
        for (((dw, db), &v), &g) in dw.iter_mut().zip(db.iter_mut()).zip(r).zip(g) {
            *dw += g * (v - s[0]) * s[1];
            *db += g;
        }
    }
    Ok([dx, dw, db])
}
