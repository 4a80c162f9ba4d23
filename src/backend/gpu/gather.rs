//! Gather along an axis by index, and its adjoint scatter-add
//! (`shaders/gather.wgsl`): index_select, gather and their backwards.

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer};
use crate::backend::AxisView;
use crate::shape::Strided;
use std::sync::Arc;

params! {
    /// An `[outer, len, inner]` input and an `[outer, m, inner]` index view.
    GatherParams {
        outer: u32,
        len: u32,
        inner: u32,
        m: u32,
        idx_offset: u32,
        idx_strides: [u32; 3],
        check_slot: u32,
        check_id: u32,
    }
}

fn params(v: AxisView, idx: &Strided, m: usize) -> GatherParams {
    assert_eq!(idx.dims, [v.outer, m, v.inner], "gather: index view must be [outer, m, inner]");
    GatherParams {
        outer: v.outer as u32,
        len: v.len as u32,
        inner: v.inner as u32,
        m: m as u32,
        idx_offset: idx.offset as u32,
        idx_strides: [idx.strides[0] as u32, idx.strides[1] as u32, idx.strides[2] as u32],
        ..Default::default()
    }
}

/// Runs `entry` writing `n` elements with `invocations` invocations; `op`
/// names the op in errors.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Arc<Context>,
    op: &'static str,
    entry: &'static str,
    n: usize,
    invocations: usize,
    x: &GpuBuffer,
    idx: &GpuBuffer,
    mut p: GatherParams,
) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    ctx.compute(op, n, &[x, idx], |ins, out| {
        let kernel = Kernel::Static { shader: Shader::Gather, entry, constants: &[("WG", wg as f64)] };
        let check = ctx.check(op)?;
        (p.check_slot, p.check_id) = (check.slot, check.id);
        let binds = [Bind::read(0, ins[0]), Bind::read(1, ins[1]), Bind::write(2, out), ctx.errors(3)];
        ctx.record(&kernel, &binds, &p, ctx.groups_1d(invocations, wg))?;
        out.taint.add(check);
        Ok(())
    })
}

/// `out[o, j, i] = x[o, idx[o, j, i], i]`.
pub(crate) fn gather(
    ctx: &Arc<Context>,
    op: &'static str,
    x: &GpuBuffer,
    v: AxisView,
    idx: (&GpuBuffer, &Strided),
    m: usize,
) -> GpuBuffer {
    let n = v.outer * m * v.inner;
    run(ctx, op, "gather", n, n, x, idx.0, params(v, idx.1, m))
}

/// `out[o, l, i] = Σ_j [idx[o, j, i] = l] · g[o, j, i]`.
pub(crate) fn scatter_add(
    ctx: &Arc<Context>,
    op: &'static str,
    g: &GpuBuffer,
    v: AxisView,
    idx: (&GpuBuffer, &Strided),
    m: usize,
) -> GpuBuffer {
    let n = v.outer * v.len * v.inner;
    // Over an empty axis there is nothing to write, but the indices are
    // still checked: one invocation each (see gather.wgsl).
    let invocations = if v.len == 0 { v.outer * m * v.inner } else { n };
    run(ctx, op, "scatter_add", n, invocations, g, idx.0, params(v, idx.1, m))
}
