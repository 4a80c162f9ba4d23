//! Strided copies: read a view into a new contiguous buffer, or write a
//! contiguous buffer into a view, in place.

use super::simd::for_rows;
use super::{output_overwritten, row_offset};
use crate::Result;
use crate::shape::{Strided, coalesce};

pub(super) fn copy_strided(x: &[f32], src: &Strided) -> Result<Vec<f32>> {
    let n: usize = src.dims.iter().product();
    let mut out = output_overwritten(n)?;
    let mut strides = vec![src.strides.clone()];
    let dims = coalesce(&src.dims, &mut strides);
    let s = &strides[0];
    let step = s[s.len() - 1];
    for_rows(
        &mut out,
        dims[dims.len() - 1],
        #[inline(always)]
        |r, row| {
            let p = src.offset + row_offset(&dims, s, r);
            if step == 1 {
                row.copy_from_slice(&x[p..p + row.len()]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = x[p + j * step];
                }
            }
        },
    );
    Ok(out)
}

pub(super) fn copy_into(out: &mut [f32], dst: &Strided, x: &[f32]) {
    let n: usize = dst.dims.iter().product();
    if n == 0 {
        return;
    }
    let mut strides = vec![dst.strides.clone()];
    let dims = coalesce(&dst.dims, &mut strides);
    let s = &strides[0];
    let step = s[s.len() - 1];
    let row_len = dims[dims.len() - 1];
    for (r, row) in x[..n].chunks(row_len).enumerate() {
        let p = dst.offset + row_offset(&dims, s, r);
        for (j, &v) in row.iter().enumerate() {
            out[p + j * step] = v;
        }
    }
}
