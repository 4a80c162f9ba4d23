//! Elementwise kernels: fill, binary ops with broadcasting by strides, and
//! dropout. Unary ops and binary ops on contiguous operands are fused
//! ([`fusion`]).

use super::{Bind, Context, GpuBuffer, Kernel, Output, Shader, fusion, launch};
use crate::backend::BinaryOp;
use crate::rng;
use crate::shape::{Strided, coalesce};
use std::sync::Arc;

/// Axes a strided kernel can address after coalescing (its immediate data
/// holds this many dims and strides per view).
pub(crate) const MAX_RANK: usize = 8;

/// Vec4s covering `n` f32s: the elementwise kernels work four at a time,
/// computing harmlessly on the padding of the last one (buffers are padded
/// to whole vec4s, see buffer.rs).
pub(crate) fn vec4s(n: usize) -> usize {
    n.div_ceil(4)
}

pub(crate) fn fill(ctx: &Arc<Context>, n: usize, value: f32) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    let kernel = Kernel { shader: Shader::Fill, entry: "main", constants: &[("WG", wg as f64)] };
    let params = [vec4s(n) as u32, value.to_bits()];
    launch(ctx, Output { op: "full", n, slot: 0 }, &kernel, &[], &params, ctx.groups_1d(vec4s(n), wg))
}

/// Pads a list of dims or strides to the kernel's fixed array length.
pub(crate) fn padded(values: &[usize], what: &str) -> [u32; MAX_RANK] {
    assert!(
        values.len() <= MAX_RANK,
        "{what}: the GPU kernels address at most {MAX_RANK} non-contiguous axes, this view needs {}",
        values.len()
    );
    let mut out = [0u32; MAX_RANK];
    for (o, &v) in out.iter_mut().zip(values) {
        *o = v as u32;
    }
    out
}

/// `op(a, b)` with broadcasting. Contiguous operands of the output's size
/// fuse ([`fusion`]); other layouts run a generated strided kernel now.
pub(crate) fn binary(
    ctx: &Arc<Context>,
    op: BinaryOp,
    a: (&GpuBuffer, &Strided),
    b: (&GpuBuffer, &Strided),
) -> GpuBuffer {
    let n: usize = a.1.dims.iter().product();
    if a.1.is_contiguous() && b.1.is_contiguous() {
        return fusion::binary(ctx, op, a.0, b.0, n);
    }
    let mut strides = vec![a.1.strides.clone(), b.1.strides.clone()];
    let dims = coalesce(&a.1.dims, &mut strides);
    let mut params = vec![n as u32, dims.len() as u32, a.1.offset as u32, b.1.offset as u32];
    params.extend(padded(&dims, "binary op"));
    params.extend(padded(&strides[0], "binary op"));
    params.extend(padded(&strides[1], "binary op"));
    let out = ctx.alloc("binary op", n);
    if out.get().is_err() {
        return out;
    }
    let wg = ctx.tuning.elementwise_wg;
    let binds = [Bind::read(0, a.0), Bind::read(1, b.0), Bind::write(2, &out)];
    match ctx.dispatch_generated(fusion::strided_binary_kernel(op), wg, &binds, &params, ctx.groups_1d(n, wg)) {
        Ok(()) => out,
        Err(e) => GpuBuffer::poisoned(e),
    }
}

pub(crate) fn dropout(ctx: &Arc<Context>, x: &GpuBuffer, n: usize, p: f32, key: [u32; 2]) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    let kernel = Kernel { shader: Shader::Dropout, entry: "main", constants: &[("WG", wg as f64)] };
    let scale = 1.0 / (1.0 - p);
    let params = [vec4s(n) as u32, rng::dropout_threshold(p), key[0], key[1], scale.to_bits()];
    let groups = ctx.groups_1d(vec4s(n), wg);
    launch(ctx, Output { op: "dropout", n, slot: 1 }, &kernel, &[Bind::read(0, x)], &params, groups)
}
