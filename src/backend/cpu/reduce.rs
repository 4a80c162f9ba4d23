//! Reductions along one axis of an `[outer, len, inner]` view: sum, max
//! and min (NaN wins, as in PyTorch), argmax and argmin (the first NaN,
//! else the first extreme).

use super::math::{nan_max, nan_min, row_sum};
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
                ReduceOp::Sum | ReduceOp::Mean if inner == 1 => row[0] = row_sum(block),
                ReduceOp::Sum | ReduceOp::Mean => {
                    for l in 0..len {
                        for (r, &v) in row.iter_mut().zip(&block[l * inner..]) {
                            *r += v;
                        }
                    }
                }
                ReduceOp::Max | ReduceOp::Min => {
                    if len == 0 {
                        row.fill(if op == ReduceOp::Max { f32::NEG_INFINITY } else { f32::INFINITY });
                        return;
                    }
                    row.copy_from_slice(&block[..inner]);
                    let pick = if op == ReduceOp::Max { nan_max } else { nan_min };
                    for l in 1..len {
                        for (r, &v) in row.iter_mut().zip(&block[l * inner..]) {
                            *r = pick(*r, v);
                        }
                    }
                }
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    let max = op == ReduceOp::ArgMax;
                    for (i, r) in row.iter_mut().enumerate() {
                        let mut best = 0;
                        let mut best_v = f32::NEG_INFINITY;
                        for l in 0..len {
                            let v = block[l * inner + i];
                            let better = if max { v > best_v } else { v < best_v };
                            if l == 0 || (!best_v.is_nan() && (better || v.is_nan())) {
                                best = l;
                                best_v = v;
                            }
                        }
                        *r = best as f32;
                    }
                }
            }
            if op == ReduceOp::Mean {
                // As the GPU and PyTorch: the sum over the length.
                for r in row.iter_mut() {
                    *r /= len as f32;
                }
            }
        },
    );
    Ok(out)
}
