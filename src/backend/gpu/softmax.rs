//! Softmax and log-softmax along an axis (`shaders/softmax.wgsl`).

use super::pipelines::{Kernel, Shader};
use super::reduce::{AxisParams, axis_launch};
use super::{Bind, Context, GpuBuffer};
use crate::backend::AxisView;
use std::sync::Arc;

pub(crate) fn softmax(ctx: &Arc<Context>, x: &GpuBuffer, v: AxisView, log: bool) -> GpuBuffer {
    let n = v.outer * v.len * v.inner;
    let (entry, wg, groups) = axis_launch(ctx, v);
    ctx.compute("softmax", n, &[x], |ins, out| {
        let constants = [("WG", wg as f64), ("LOG", log as u32 as f64)];
        let kernel = Kernel::Static { shader: Shader::Softmax, entry, constants: &constants };
        ctx.record(&kernel, &[Bind::read(0, ins[0]), Bind::write(1, out)], &AxisParams::of(v), groups)
    })
}

/// The gradient of softmax (or log-softmax, `log`) along the view's axis,
/// from its output `y` and the output's gradient `g` (`shaders/softmax_backward.wgsl`).
pub(crate) fn softmax_backward(ctx: &Arc<Context>, y: &GpuBuffer, g: &GpuBuffer, v: AxisView, log: bool) -> GpuBuffer {
    let n = v.outer * v.len * v.inner;
    let (entry, wg, groups) = axis_launch(ctx, v);
    ctx.compute("softmax", n, &[y, g], |ins, out| {
        let constants = [("WG", wg as f64), ("LOG", log as u32 as f64)];
        let kernel = Kernel::Static { shader: Shader::SoftmaxBackward, entry, constants: &constants };
        let binds = [Bind::read(0, ins[0]), Bind::read(1, ins[1]), Bind::write(2, out)];
        ctx.record(&kernel, &binds, &AxisParams::of(v), groups)
    })
}
