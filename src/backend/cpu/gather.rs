//! Gather along an axis by index and its adjoint, scatter-add. An index that
//! is not an integer in `0..len` fails the whole result with
//! [`Error::IndexOutOfRange`], as the GPU's device-side check does.

use super::{output, output_overwritten};
use crate::backend::AxisView;
use crate::shape::Strided;
use crate::{Error, Result};

/// `v` as an index below `len`.
pub(super) fn check_index(v: f32, len: usize, op: &'static str) -> Result<usize> {
    if v >= 0.0 && v.fract() == 0.0 && (v as usize) < len {
        Ok(v as usize)
    } else {
        Err(Error::IndexOutOfRange { op, index: v, bound: len })
    }
}

pub(super) fn gather(op: &'static str, x: &[f32], v: AxisView, idx: (&[f32], &Strided), m: usize) -> Result<Vec<f32>> {
    let (ids, layout) = idx;
    let AxisView { outer, len, inner } = v;
    let mut out = output_overwritten(outer * m * inner)?;
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
    for (e, &gv) in g[..outer * m * inner].iter().enumerate() {
        let (oi, i) = (e / (m * inner), e % inner);
        let l = check_index(ids[layout.index_of(e)], len, op)?;
        out[(oi * len + l) * inner + i] += gv;
    }
    Ok(out)
}
