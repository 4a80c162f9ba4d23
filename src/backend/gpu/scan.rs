//! Running sums along an axis (`shaders/scan.wgsl`).

use super::pipelines::{Kernel, Shader};
use super::reduce::{AxisParams, axis_launch};
use super::{Bind, Context, GpuBuffer};
use crate::backend::AxisView;
use std::sync::Arc;

pub(crate) fn cumsum(ctx: &Arc<Context>, x: &GpuBuffer, v: AxisView, reverse: bool) -> GpuBuffer {
    let n = v.outer * v.len * v.inner;
    let (entry, wg, groups) = axis_launch(ctx, v);
    ctx.compute("cumsum", n, &[x], |ins, out| {
        let constants = [("WG", wg as f64), ("REVERSE", reverse as u32 as f64)];
        let kernel = Kernel::Static { shader: Shader::Scan, entry, constants: &constants };
        ctx.record(&kernel, &[Bind::read(0, ins[0]), Bind::write(1, out)], &AxisParams::of(v), groups)
    })
}
