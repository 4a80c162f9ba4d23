//! Row-wise kernels: reductions along an axis, softmax/log-softmax, and the
//! fused cross-entropy forward and backward.

use super::{Bind, Context, GpuBuffer, Kernel, Output, Shader, launch};
use crate::backend::{AxisView, ReduceOp};
use std::sync::Arc;

pub(crate) fn reduce(ctx: &Arc<Context>, op: ReduceOp, x: &GpuBuffer, v: AxisView) -> GpuBuffer {
    let params = [v.outer as u32, v.len as u32, v.inner as u32];
    let n = v.outer * v.inner;
    let (entry, wg, groups) = if v.inner == 1 {
        let wg = ctx.tuning.row_wg;
        ("rows", wg, ctx.spread(v.outer as u64))
    } else {
        let wg = ctx.tuning.elementwise_wg;
        ("columns", wg, ctx.groups_1d(n, wg))
    };
    let kernel = Kernel { shader: Shader::Reduce, entry, constants: &[("OP", op as u32 as f64), ("WG", wg as f64)] };
    launch(ctx, Output { op: "reduce", n, slot: 1 }, &kernel, &[Bind::read(0, x)], &params, groups)
}

pub(crate) fn softmax(ctx: &Arc<Context>, x: &GpuBuffer, v: AxisView, log: bool) -> GpuBuffer {
    let params = [v.outer as u32, v.len as u32, v.inner as u32];
    let n = v.outer * v.len * v.inner;
    let (entry, wg, groups) = if v.inner == 1 {
        let wg = ctx.tuning.row_wg;
        ("rows", wg, ctx.spread(v.outer as u64))
    } else {
        let wg = ctx.tuning.elementwise_wg;
        ("columns", wg, ctx.groups_1d(v.outer * v.inner, wg))
    };
    let constants = [("WG", wg as f64), ("LOG", log as u32 as f64)];
    let kernel = Kernel { shader: Shader::Softmax, entry, constants: &constants };
    launch(ctx, Output { op: "softmax", n, slot: 3 }, &kernel, &[Bind::read(0, x)], &params, groups)
}

/// Per-row losses, or with `grad_rows` the gradient of the logits.
pub(crate) fn cross_entropy(
    ctx: &Arc<Context>,
    logits: &GpuBuffer,
    labels: &GpuBuffer,
    grad_rows: Option<&GpuBuffer>,
    rows: usize,
    classes: usize,
) -> GpuBuffer {
    let params = [rows as u32, classes as u32, 1];
    let wg = ctx.tuning.row_wg;
    let mut inputs = vec![Bind::read(0, logits), Bind::read(1, labels)];
    let (entry, n) = match grad_rows {
        Some(g) => {
            inputs.push(Bind::read(2, g));
            ("cross_entropy_backward", rows * classes)
        }
        None => ("cross_entropy", rows),
    };
    let constants = [("WG", wg as f64), ("LOG", 0.0)];
    let kernel = Kernel { shader: Shader::Softmax, entry, constants: &constants };
    launch(ctx, Output { op: entry, n, slot: 3 }, &kernel, &inputs, &params, ctx.spread(rows as u64))
}
