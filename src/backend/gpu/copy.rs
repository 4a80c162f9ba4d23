//! Data movement kernels: strided gather/scatter copies (permute,
//! broadcast_to, narrow, cat and their backwards) and gather/scatter-add
//! along an axis by index.

use super::elementwise::padded;
use super::{Bind, Context, GpuBuffer, Kernel, Output, Shader, launch};
use crate::backend::AxisView;
use crate::shape::{Strided, coalesce};
use std::sync::Arc;

/// Immediate data for a strided view: n, rank, offset, pad, dims, strides.
fn view_params(view: &Strided, what: &str) -> (usize, Vec<u32>) {
    let n: usize = view.dims.iter().product();
    let mut strides = vec![view.strides.clone()];
    let dims = coalesce(&view.dims, &mut strides);
    let mut params = vec![n as u32, dims.len() as u32, view.offset as u32, 0];
    params.extend(padded(&dims, what));
    params.extend(padded(&strides[0], what));
    (n, params)
}

pub(crate) fn copy_strided(ctx: &Arc<Context>, x: &GpuBuffer, view: &Strided) -> GpuBuffer {
    let (n, params) = view_params(view, "copy");
    let wg = ctx.tuning.elementwise_wg;
    let kernel = Kernel { shader: Shader::Copy, entry: "gather_strided", constants: &[("WG", wg as f64)] };
    launch(ctx, Output { op: "copy", n, slot: 1 }, &kernel, &[Bind::read(0, x)], &params, ctx.groups_1d(n, wg))
}

pub(crate) fn copy_into(ctx: &Arc<Context>, out: &mut GpuBuffer, dst: &Strided, x: &GpuBuffer) {
    let (n, params) = view_params(dst, "copy_into");
    let wg = ctx.tuning.elementwise_wg;
    let kernel = Kernel { shader: Shader::Copy, entry: "scatter_strided", constants: &[("WG", wg as f64)] };
    let result = ctx.dispatch(&kernel, &[Bind::read(0, x), Bind::write(1, out)], &params, ctx.groups_1d(n, wg));
    if let Err(e) = result {
        *out = GpuBuffer::poisoned(e);
    }
}

/// `gather` (or, with `scatter`, its adjoint `scatter_add`) along the middle
/// axis of `v`; `idx` is a `[outer, m, inner]` strided view of the indices.
pub(crate) fn gather(
    ctx: &Arc<Context>,
    x: &GpuBuffer,
    v: AxisView,
    idx: (&GpuBuffer, &Strided),
    m: usize,
    scatter: bool,
) -> GpuBuffer {
    let layout = idx.1;
    assert_eq!(layout.dims, [v.outer, m, v.inner], "gather: index view must be [outer, m, inner]");
    let mut params = vec![v.outer as u32, v.len as u32, v.inner as u32, m as u32, layout.offset as u32];
    params.extend(layout.strides.iter().map(|&s| s as u32));
    let n = if scatter { v.outer * v.len * v.inner } else { v.outer * m * v.inner };
    let wg = ctx.tuning.elementwise_wg;
    let entry = if scatter { "scatter_add" } else { "gather" };
    let kernel = Kernel { shader: Shader::Gather, entry, constants: &[("WG", wg as f64)] };
    launch(
        ctx,
        Output { op: entry, n, slot: 2 },
        &kernel,
        &[Bind::read(0, x), Bind::read(1, idx.0)],
        &params,
        ctx.groups_1d(n, wg),
    )
}
