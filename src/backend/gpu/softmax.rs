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
