//! Softmax and log-softmax along one axis of an `[outer, len, inner]` view.
//! A row holding NaN or +∞ is NaN throughout (as `exp(v - max)` makes it).

use super::math::{exp, nan_max, row_max, row_sum};
use super::output_overwritten;
use super::simd::for_rows;
use crate::Result;
use crate::backend::AxisView;

pub(super) fn softmax(x: &[f32], v: AxisView, log: bool) -> Result<Vec<f32>> {
    let AxisView { outer, len, inner } = v;
    let mut out = output_overwritten(outer * len * inner)?;
    for_rows(
        &mut out,
        (len * inner).max(1),
        #[inline(always)]
        |o, block| {
            let src = &x[o * len * inner..];
            if inner == 1 {
                // A contiguous row: the loops vectorise.
                let (row, out) = (&src[..len], &mut block[..len]);
                let max = row_max(row);
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = exp(v - max);
                }
                let sum = row_sum(out);
                if log {
                    // (v - max) - lse, not v - (max + lse): the latter loses
                    // lse's low bits when |max| is large.
                    let lse = sum.ln();
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = (v - max) - lse;
                    }
                } else {
                    let inv = 1.0 / sum;
                    for o in out.iter_mut() {
                        *o *= inv;
                    }
                }
                return;
            }
            for i in 0..inner {
                let at = |l: usize| l * inner + i;
                let max = (0..len).fold(f32::NEG_INFINITY, |m, l| nan_max(m, src[at(l)]));
                let mut sum = 0.0f32;
                for l in 0..len {
                    let e = exp(src[at(l)] - max);
                    block[at(l)] = e;
                    sum += e;
                }
                if log {
                    let lse = sum.ln();
                    for l in 0..len {
                        block[at(l)] = src[at(l)] - max - lse;
                    }
                } else {
                    let inv = 1.0 / sum;
                    for l in 0..len {
                        block[at(l)] *= inv;
                    }
                }
            }
        },
    );
    Ok(out)
}

/// The gradient of [`softmax`] (or log-softmax, `log`) from its output `y`
/// and the output's gradient `g`: per line `y·(g - Σ g·y)`, or
/// `g - exp(y)·Σ g`.
pub(super) fn softmax_backward(y: &[f32], g: &[f32], v: AxisView, log: bool) -> Result<Vec<f32>> {
    let AxisView { outer, len, inner } = v;
    let mut out = output_overwritten(outer * len * inner)?;
    for_rows(
        &mut out,
        (len * inner).max(1),
        #[inline(always)]
        |o, block| {
            let (ys, gs) = (&y[o * len * inner..(o + 1) * len * inner], &g[o * len * inner..(o + 1) * len * inner]);
            for i in 0..inner {
                let at = |l: usize| l * inner + i;
                let mut total = 0.0f32;
                for l in 0..len {
                    total += if log { gs[at(l)] } else { gs[at(l)] * ys[at(l)] };
                }
                for l in 0..len {
                    block[at(l)] =
                        if log { gs[at(l)] - exp(ys[at(l)]) * total } else { ys[at(l)] * (gs[at(l)] - total) };
                }
            }
        },
    );
    Ok(out)
}
