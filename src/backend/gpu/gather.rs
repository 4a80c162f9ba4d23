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

/// Records `entry` of `shader` with one invocation per element of the
/// index view (`outer · m · inner`) after `before` (which may record a
/// zero-fill of the output); `op` names the op in errors.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Arc<Context>,
    op: &'static str,
    (shader, entry): (Shader, &'static str),
    n: usize,
    x: &GpuBuffer,
    idx: &GpuBuffer,
    mut p: GatherParams,
    before: impl FnOnce(&Arc<super::Pooled>) -> crate::Result<()>,
) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    let invocations = p.outer as usize * p.m as usize * p.inner as usize;
    ctx.compute(op, n, &[x, idx], |ins, out| {
        before(out)?;
        let kernel = Kernel::Static { shader, entry, constants: &[("WG", wg as f64)] };
        let check = ctx.check(op)?;
        (p.check_slot, p.check_id) = (check.slot, check.id);
        let binds = [Bind::read(0, ins[0]), Bind::read(1, ins[1]), Bind::write(2, out), ctx.errors(3)];
        let patches = super::capture::Patches::check(
            op,
            std::mem::offset_of!(GatherParams, check_slot),
            std::mem::offset_of!(GatherParams, check_id),
        );
        ctx.record_patched(&kernel, &binds, &p, ctx.groups_1d(invocations, wg), patches)?;
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
    run(ctx, op, (Shader::Gather, "gather"), n, x, idx.0, params(v, idx.1, m), |_| Ok(()))
}

/// `out[o, l, i] = Σ_j [idx[o, j, i] = l] · g[o, j, i]`: a zero fill, then
/// one invocation per index element adding into its row with an atomic
/// compare-and-swap (`shaders/scatter.wgsl`), so the cost is proportional
/// to the indices, not to rows × indices.
pub(crate) fn scatter_add(
    ctx: &Arc<Context>,
    op: &'static str,
    g: &GpuBuffer,
    v: AxisView,
    idx: (&GpuBuffer, &Strided),
    m: usize,
) -> GpuBuffer {
    let n = v.outer * v.len * v.inner;
    let zero = |out: &Arc<super::Pooled>| super::elementwise::record_fill(ctx, out, n, 0.0);
    run(ctx, op, (Shader::Scatter, "scatter_add"), n, g, idx.0, params(v, idx.1, m), zero)
}
