//! Cross-entropy from logits with integer labels, forward and backward. A
//! label that is not an integer in `0..classes` fails the whole result with
//! [`crate::Error::IndexOutOfRange`].

use super::gather::check_index;
use super::math::{exp, row_max, row_sum};
use super::simd::{for_rows, simd};
use super::{output, output_overwritten};
use crate::Result;

const OP: &str = "cross_entropy";

/// The first label that is not a class index.
fn check_labels(labels: &[f32], classes: usize) -> Result<()> {
    labels.iter().try_for_each(|&l| check_index(l, classes, OP).map(drop))
}

pub(super) fn cross_entropy(x: &[f32], y: &[f32], rows: usize, classes: usize) -> Result<Vec<f32>> {
    check_labels(&y[..rows], classes)?;
    let mut out = output(rows)?;
    let mut exps = output(classes)?;
    simd(
        #[inline(always)]
        || {
            for (r, o) in out.iter_mut().enumerate() {
                let row = &x[r * classes..(r + 1) * classes];
                let max = row_max(row);
                for (e, &v) in exps.iter_mut().zip(row) {
                    *e = exp(v - max);
                }
                *o = max + row_sum(&exps).ln() - row[y[r] as usize];
            }
        },
    );
    Ok(out)
}

/// The gradient of the logits for the per-row gradient `g`, or with
/// `scale`, for `g[0] · scale` in every row (the mean loss's, unexpanded).
pub(super) fn cross_entropy_backward(
    x: &[f32],
    y: &[f32],
    g: &[f32],
    rows: usize,
    classes: usize,
    scale: Option<f32>,
) -> Result<Vec<f32>> {
    check_labels(&y[..rows], classes)?;
    let mut out = output_overwritten(rows * classes)?;
    for_rows(
        &mut out,
        classes,
        #[inline(always)]
        |r, o| {
            let row = &x[r * classes..(r + 1) * classes];
            let max = row_max(row);
            for (o, &v) in o.iter_mut().zip(row) {
                *o = exp(v - max);
            }
            let sum = row_sum(o);
            let g = match scale {
                Some(s) => g[0] * s,
                None => g[r],
            };
            let scale = g / sum;
            for o in o.iter_mut() {
                *o *= scale;
            }
            o[y[r] as usize] -= g;
        },
    );
    Ok(out)
}
