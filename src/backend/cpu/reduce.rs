//! Reductions along one axis of an `[outer, len, inner]` view: sum, max
//! (NaN wins, as in PyTorch) and argmax (the first NaN, else the first
//! maximum).

use super::math::nan_max;
use super::output;
use super::simd::for_rows;
use crate::Result;
use crate::backend::{AxisView, ReduceOp};

pub(super) fn reduce(op: ReduceOp, x: &[f32], v: AxisView) -> Result<Vec<f32>> {
    let AxisView { outer, len, inner } = v;
    let mut out = output(outer * inner)?;
    for_rows(
        &mut out,
        inner,
        #[inline(always)]
        |o, row| {
            let block = &x[o * len * inner..(o + 1) * len * inner];
            match op {
                ReduceOp::Sum if inner == 1 => {
                    // Eight partial sums: vectorises, and sums long rows
                    // more accurately than one running total.
                    let mut acc = [0f32; 8];
                    let chunks = block.chunks_exact(8);
                    let rest: f32 = chunks.remainder().iter().sum();
                    for c in chunks {
                        for (a, &v) in acc.iter_mut().zip(c) {
                            *a += v;
                        }
                    }
                    row[0] = acc.iter().sum::<f32>() + rest;
                }
                ReduceOp::Sum => {
                    for l in 0..len {
                        for (r, &v) in row.iter_mut().zip(&block[l * inner..]) {
                            *r += v;
                        }
                    }
                }
                ReduceOp::Max => {
                    if len == 0 {
                        row.fill(f32::NEG_INFINITY);
                        return;
                    }
                    row.copy_from_slice(&block[..inner]);
                    for l in 1..len {
                        for (r, &v) in row.iter_mut().zip(&block[l * inner..]) {
                            *r = nan_max(*r, v);
                        }
                    }
                }
                ReduceOp::ArgMax => {
                    for (i, r) in row.iter_mut().enumerate() {
                        let mut best = 0;
                        let mut best_v = f32::NEG_INFINITY;
                        for l in 0..len {
                            let v = block[l * inner + i];
                            if l == 0 || (!best_v.is_nan() && (v > best_v || v.is_nan())) {
                                best = l;
                                best_v = v;
                            }
                        }
                        *r = best as f32;
                    }
                }
            }
        },
    );
    Ok(out)
}
