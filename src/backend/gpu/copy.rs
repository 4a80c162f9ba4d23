//! Strided copies: permute, broadcast_to, narrow, cat and their backwards
//! read or write a view of a buffer through `shaders/copy.wgsl`.

use super::pipelines::{Kernel, Shader, params};
use super::pool::Pooled;
use super::{Bind, Context, GpuBuffer};
use crate::Result;
use crate::shape::{Strided, coalesce};
use std::sync::Arc;

/// Axes a view may have (after coalescing) to travel as immediate data;
/// views of more axes are read from a storage buffer.
pub(crate) const MAX_RANK: usize = 8;

params! {
    /// A strided view of `n` elements.
    ViewParams {
        n: u32,
        rank: u32,
        offset: u32,
        _pad: u32,
        dims: [u32; MAX_RANK],
        strides: [u32; MAX_RANK],
    }
}

/// The view coalesced: its element count, dims and strides.
fn coalesced(view: &Strided) -> (usize, Vec<usize>, Vec<usize>) {
    let n: usize = view.dims.iter().product();
    let mut strides = vec![view.strides.clone()];
    let dims = coalesce(&view.dims, &mut strides);
    let strides = strides.pop().expect("one view");
    (n, dims, strides)
}

/// Records `entry` (a gather or scatter through `view`) from `x` into `out`.
fn record(ctx: &Arc<Context>, entry: &'static str, view: &Strided, x: &Arc<Pooled>, out: &Arc<Pooled>) -> Result<()> {
    let (n, dims, strides) = coalesced(view);
    let wg = ctx.tuning.elementwise_wg;
    let groups = ctx.groups_1d(n, wg);
    let constants = [("WG", wg as f64)];
    let mut binds = vec![Bind::read(0, x), Bind::write(1, out)];
    let mut params =
        ViewParams { n: n as u32, rank: dims.len() as u32, offset: view.offset as u32, ..Default::default() };
    if dims.len() <= MAX_RANK {
        for (d, (&dim, &stride)) in dims.iter().zip(&strides).enumerate() {
            params.dims[d] = dim as u32;
            params.strides[d] = stride as u32;
        }
        let kernel = Kernel::Static { shader: Shader::Copy, entry, constants: &constants };
        return ctx.record(&kernel, &binds, &params, groups);
    }
    // [rank, offset, dims…, strides…] in a buffer.
    let mut words = vec![dims.len() as u32, view.offset as u32];
    words.extend(dims.iter().chain(&strides).map(|&v| v as u32));
    let meta = ctx.upload_words("copy", &words, Default::default())?;
    binds.push(Bind::read(2, &meta));
    let entry = if entry == "gather_strided" { "gather_strided_words" } else { "scatter_strided_words" };
    let kernel = Kernel::Static { shader: Shader::Copy, entry, constants: &constants };
    ctx.record(&kernel, &binds, &params, groups)
}

/// The view `src` of `x`, copied into a new contiguous buffer.
pub(crate) fn copy_strided(ctx: &Arc<Context>, x: &GpuBuffer, src: &Strided) -> GpuBuffer {
    if let Some(pending) = super::lazy::view(ctx, x, src) {
        return pending;
    }
    let n = src.dims.iter().product();
    ctx.compute("copy", n, &[x], |ins, out| record(ctx, "gather_strided", src, ins[0], out))
}

/// Writes contiguous `x` into the region `dst` of `out`, in place.
pub(crate) fn copy_into(ctx: &Arc<Context>, out: &mut GpuBuffer, dst: &Strided, x: &GpuBuffer) {
    ctx.modify(&mut [out], &[x], |bufs| record(ctx, "scatter_strided", dst, &bufs[1], &bufs[0]));
}
