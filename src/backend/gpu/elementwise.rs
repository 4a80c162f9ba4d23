//! Elementwise kernels that are not fused: fill and dropout. (Unary and
//! binary ops are fused expressions, see [`lazy`](super::lazy).)

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer, Pooled};
use crate::Result;
use crate::rng;
use std::sync::Arc;

params! {
    /// `out[i] = value` over `n4` vec4s.
    FillParams { n4: u32, value: f32 }
}

params! {
    /// Dropout over `n4` vec4s with the call's key.
    DropoutParams { n4: u32, threshold: u32, key0: u32, key1: u32, scale: f32 }
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

pub(crate) fn dropout(ctx: &Arc<Context>, x: &GpuBuffer, n: usize, p: f32, key: [u32; 2]) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    let n4 = n.div_ceil(4);
    ctx.compute("dropout", n, &[x], |ins, out| {
        let kernel = Kernel::Static { shader: Shader::Dropout, entry: "main", constants: &[("WG", wg as f64)] };
        let params = DropoutParams {
            n4: n4 as u32,
            threshold: rng::dropout_threshold(p),
            key0: key[0],
            key1: key[1],
            scale: 1.0 / (1.0 - p),
        };
        ctx.record(&kernel, &[Bind::read(0, ins[0]), Bind::write(1, out)], &params, ctx.groups_1d(n4, wg))
    })
}
