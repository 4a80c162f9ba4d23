//! Gather along an axis by index and its adjoint, scatter-add. An index that
//! is not an integer in `0..len` fails the whole result with
//! [`Error::IndexOutOfRange`], as the GPU's device-side check does.

use super::{output, output_overwritten};
use crate::backend::AxisView;
use crate::shape::Strided;
use crate::{Error, Result};

/// `v` as an index below `len`.
#[inline]
pub(super) fn check_index(v: f32, len: usize, op: &'static str) -> Result<usize> {
    // An integer: it converts to usize and back unchanged (`fract` is a
    // libm call on baseline x86-64). NaN fails `>=`; ∞ saturates and fails.
    let u = v as usize;
    if v >= 0.0 && u as f32 == v && u < len { Ok(u) } else { Err(Error::IndexOutOfRange { op, index: v, bound: len }) }
}

/// Whether the index is the same for all `inner` elements of each output
/// row (an embedding's or `index_select`'s ids, broadcast along the row):
/// its trailing axes of stride 0 cover whole rows.
fn index_per_row(layout: &Strided, inner: usize) -> bool {
    let mut run = 1usize;
    for (&d, &s) in layout.dims.iter().zip(&layout.strides).rev() {
        if s != 0 && d != 1 {
            break;
        }
        run = run.saturating_mul(d);
    }
    inner > 1 && run % inner == 0
}

pub(super) fn gather(op: &'static str, x: &[f32], v: AxisView, idx: (&[f32], &Strided), m: usize) -> Result<Vec<f32>> {
    let (ids, layout) = idx;
    let AxisView { outer, len, inner } = v;
    let mut out = output_overwritten(outer * m * inner)?;
    if index_per_row(layout, inner) {
        // One index per row: check it once, copy the row.
        for (r, row) in out.chunks_exact_mut(inner).enumerate() {
            let oi = r / m;
            let l = check_index(ids[layout.index_of(r * inner)], len, op)?;
            row.copy_from_slice(&x[(oi * len + l) * inner..][..inner]);
        }
        return Ok(out);
    }
    for (e, o) in out.iter_mut().enumerate() {
        let (oi, i) = (e / (m * inner), e % inner);
        let l = check_index(ids[layout.index_of(e)], len, op)?;
        *o = x[(oi * len + l) * inner + i];
    }
    Ok(out)
}

pub(super) fn scatter_add(
    op: &'static str,
    g: &[f32],
    v: AxisView,
    idx: (&[f32], &Strided),
    m: usize,
) -> Result<Vec<f32>> {
    let (ids, layout) = idx;
    let AxisView { outer, len, inner } = v;
    let mut out = output(outer * len * inner)?;
    if index_per_row(layout, inner) {
        for (r, row) in g[..outer * m * inner].chunks_exact(inner).enumerate() {
            let oi = r / m;
            let l = check_index(ids[layout.index_of(r * inner)], len, op)?;
            for (o, &gv) in out[(oi * len + l) * inner..][..inner].iter_mut().zip(row) {
                *o += gv;
            }
        }
        return Ok(out);
    }
    for (e, &gv) in g[..outer * m * inner].iter().enumerate() {
        let (oi, i) = (e / (m * inner), e % inner);
        let l = check_index(ids[layout.index_of(e)], len, op)?;
        out[(oi * len + l) * inner + i] += gv;
    }
    Ok(out)
}
