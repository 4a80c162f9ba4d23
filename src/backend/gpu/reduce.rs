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

/// The most rows [`argmax_hits`] counts in its one workgroup (each
/// invocation walks up to 64 of them with 256 invocations, 256 with 64;
/// a batch of fewer rows gets a narrower workgroup).
const HITS_MAX_ROWS: usize = 1 << 14;

/// How many of `rows` rows of `len` values have their argmax equal to their
/// label, plus `base` if given, in one dispatch (a one-element buffer),
/// when the rows are short and few enough for one workgroup (a
/// classifier's batch: the argmax, the comparison and the sum would be
/// three dispatches, and the add to a running total a fused kernel every
/// few batches); `None` otherwise.
pub(crate) fn argmax_hits(
    ctx: &Arc<Context>,
    x: &GpuBuffer,
    labels: &GpuBuffer,
    base: Option<&GpuBuffer>,
    rows: usize,
    len: usize,
) -> Option<GpuBuffer> {
    // The count is exact whatever the width.
    let wg = ctx.one_group_width(rows);
    let fits = (1..=SHORT_LINE).contains(&len) && (1..=HITS_MAX_ROWS).contains(&rows);
    fits.then(|| {
        let mut inputs = vec![x, labels];
        inputs.extend(base);
        ctx.compute("argmax_hits", 1, &inputs, |ins, out| {
            let constants = [
                ("OP", ReduceOp::ArgMax as u32 as f64),
                ("WG", wg as f64),
                ("ACCUMULATE", base.is_some() as u32 as f64),
            ];
            let kernel = Kernel::Static { shader: Shader::Reduce, entry: "argmax_hits", constants: &constants };
            // Without a base the kernel reads none, but binds one: the labels again.
            let base = ins.get(2).copied().unwrap_or(ins[1]);
            let binds = [Bind::read(0, ins[0]), Bind::write(1, out), Bind::read(2, ins[1]), Bind::read(3, base)];
            let v = AxisView { outer: rows, len, inner: 1 };
            ctx.record(&kernel, &binds, &AxisParams::of(v), [1, 1, 1])
        })
    })
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
