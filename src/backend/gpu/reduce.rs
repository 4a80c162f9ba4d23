//! Reductions along an axis: sum, max and argmax (`shaders/reduce.wgsl`).

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer};
use crate::backend::{AxisView, ReduceOp};
use std::sync::Arc;

params! {
    /// An `[outer, len, inner]` view reduced or normalised along `len`.
    AxisParams { outer: u32, len: u32, inner: u32 }
}

impl AxisParams {
    pub fn of(v: AxisView) -> Self {
        AxisParams { outer: v.outer as u32, len: v.len as u32, inner: v.inner as u32 }
    }
}

/// Lines (rows or columns) up to this long are walked by one invocation
/// each, however they lie: a workgroup per row would leave most of its
/// invocations idle and still wait at every step of its tree (a 10-class
/// cross-entropy row cost ~150 µs a dispatch on lavapipe, a 16-key
/// attention softmax the same pattern on any GPU).
pub(crate) const SHORT_LINE: usize = 32;

/// How the axis-wise kernels (reduce, softmax, scan) launch over `v`: the
/// entry point, its workgroup size and grid. Lines that are rows
/// (`inner == 1`) longer than [`SHORT_LINE`] get a workgroup each
/// (`rows`); otherwise each of the `outer · inner` lines gets an
/// invocation (`columns`).
pub(crate) fn axis_launch(ctx: &Context, v: AxisView) -> (&'static str, u32, [u32; 3]) {
    if v.inner == 1 && v.len > SHORT_LINE {
        ("rows", ctx.tuning.row_wg, ctx.spread(v.outer as u64))
    } else {
        let wg = ctx.tuning.elementwise_wg;
        ("columns", wg, ctx.groups_1d(v.outer * v.inner, wg))
    }
}

pub(crate) fn reduce(ctx: &Arc<Context>, op: ReduceOp, x: &GpuBuffer, v: AxisView) -> GpuBuffer {
    let n = v.outer * v.inner;
    let (entry, wg, groups) = axis_launch(ctx, v);
    ctx.compute("reduce", n, &[x], |ins, out| {
        let constants = [("OP", op as u32 as f64), ("WG", wg as f64)];
        let kernel = Kernel::Static { shader: Shader::Reduce, entry, constants: &constants };
        ctx.record(&kernel, &[Bind::read(0, ins[0]), Bind::write(1, out)], &AxisParams::of(v), groups)
    })
}
