//! The elementwise kernel that is not fused: fill. (Unary and binary ops
//! and dropout are fused expressions, see [`lazy`](super::lazy).)

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer, Pooled};
use crate::Result;
use std::sync::Arc;

params! {
    /// `out[i] = value` over `n4` vec4s.
    FillParams { n4: u32, value: f32 }
}

pub(crate) fn fill(ctx: &Arc<Context>, n: usize, value: f32) -> GpuBuffer {
    ctx.compute("full", n, &[], |_, out| record_fill(ctx, out, n, value))
}

/// Records `out[..n] = value` (rounded up to whole vec4s: pooled buffers
/// are).
pub(crate) fn record_fill(ctx: &Context, out: &Arc<Pooled>, n: usize, value: f32) -> Result<()> {
    let wg = ctx.tuning.elementwise_wg;
    let n4 = n.div_ceil(4);
    let kernel = Kernel::Static { shader: Shader::Fill, entry: "main", constants: &[("WG", wg as f64)] };
    let params = FillParams { n4: n4 as u32, value };
    ctx.record(&kernel, &[Bind::write(0, out)], &params, ctx.groups_1d(n4, wg))
}
