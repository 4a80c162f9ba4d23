//! A stable argsort along an axis (`shaders/sort.wgsl`): each element's
//! rank counted against its line, O(len) per element.

use super::pipelines::{Kernel, Shader};
use super::reduce::AxisParams;
use super::{Bind, Context, GpuBuffer};
use crate::backend::AxisView;
use std::sync::Arc;

pub(crate) fn argsort(ctx: &Arc<Context>, x: &GpuBuffer, v: AxisView, descending: bool) -> GpuBuffer {
    let n = v.outer * v.len * v.inner;
    let wg = ctx.tuning.elementwise_wg;
    ctx.compute("argsort", n, &[x], |ins, out| {
        let constants = [("WG", wg as f64), ("DESCENDING", descending as u32 as f64)];
        let kernel = Kernel::Static { shader: Shader::Sort, entry: "main", constants: &constants };
        ctx.record(&kernel, &[Bind::read(0, ins[0]), Bind::write(1, out)], &AxisParams::of(v), ctx.groups_1d(n, wg))
    })
}
