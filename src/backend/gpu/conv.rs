//! Convolutions and pooling (`shaders/conv.wgsl`, `shaders/pool.wgsl`).
//!
//! A convolution and each of its gradients is one implicit-GEMM dispatch:
//! the product kernels' bodies (register-tiled with subgroups, workgroup-
//! tiled without) with loaders that read the patches straight from the
//! input, so no im2col matrix is allocated. The weight gradient sums over
//! every pixel of the batch into a small result, so its long K is split
//! over several workgroups' partial results (split-K) that one reduction
//! adds up.

use super::autotune::{self, Choice};
use super::epilogue::ProductOp;
use super::matmul::record_batched;
use super::pipelines::{Kernel, Shader, params};
use super::reduce::reduce;
use super::{Bind, Context, GpuBuffer};
use crate::backend::{AxisView, ConvSpec, PoolKind, PoolSpec, ReduceOp};
use std::sync::Arc;

params! {
    /// One dispatch of a convolution product (`conv.wgsl`).
    ConvParams {
        n: u32,
        c_in: u32,
        h: u32,
        w: u32,
        c_out: u32,
        ph: u32,
        pw: u32,
        groups: u32,
        oh: u32,
        ow: u32,
        m: u32,
        n_cols: u32,
        k: u32,
        first_batch: u32,
        k_chunk: u32,
        inv_ow: f32,
        inv_pixels: f32,
        inv_w: f32,
    }
}

params! {
    /// A pooling dispatch (`pool.wgsl`).
    PoolParams { planes: u32, h: u32, w: u32, kh: u32, kw: u32, sh: u32, sw: u32, ph: u32, pw: u32, oh: u32, ow: u32 }
}

/// Which product of a convolution a dispatch computes (`MODE` in conv.wgsl).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Forward = 0,
    InputGrad = 1,
    WeightGrad = 2,
}

/// Split-K chunks are multiples of this (a multiple of every K step: 4 for
/// the subgroup kernel, BK ≤ 64 for the tiled one).
const K_CHUNK_ALIGN: usize = 64;

/// How one product of a convolution is launched.
pub(super) struct ConvLaunch {
    /// Whether with the subgroup kernel (else the workgroup-tiled one).
    pub subgroups: bool,
    pub constants: Vec<(&'static str, f64)>,
    /// The grid's x and y.
    pub grid: [u32; 2],
    /// Batch entries (grid z).
    pub batches: usize,
    /// The parameters of the dispatch whose first entry is 0.
    pub params: ConvParams,
}

/// How the product `mode` of `s` is launched with kernel `choice`.
pub(super) fn launch(s: &ConvSpec, mode: Mode, choice: Choice, k_chunk: usize) -> ConvLaunch {
    let (m, n_cols, k, batches) = match mode {
        Mode::Forward => (s.mg(), s.oh * s.ow, s.patch(), s.n * s.groups),
        Mode::InputGrad => (s.cg(), s.h * s.w, s.mg() * s.kh * s.kw, s.n * s.groups),
        Mode::WeightGrad => {
            let k = s.n * s.oh * s.ow;
            (s.mg(), s.patch(), k, k.div_ceil(k_chunk) * s.groups)
        }
    };
    // The float-reciprocal division is exact below 2^22 (see conv.wgsl).
    let fast_div = s.n * s.oh * s.ow < 1 << 22 && s.h * s.w < 1 << 22;
    let f = |v: usize| v as f64;
    let (subgroups, mut constants, grid) = choice.grid(m, n_cols);
    constants.extend([
        ("MODE", mode as u32 as f64),
        ("KH", f(s.kh)),
        ("KW", f(s.kw)),
        ("SH", f(s.sh)),
        ("SW", f(s.sw)),
        ("DH", f(s.dh)),
        ("DW", f(s.dw)),
        ("FAST_DIV", fast_div as u32 as f64),
    ]);
    let u = |v: usize| v as u32;
    let params = ConvParams {
        n: u(s.n),
        c_in: u(s.c_in),
        h: u(s.h),
        w: u(s.w),
        c_out: u(s.c_out),
        ph: u(s.ph),
        pw: u(s.pw),
        groups: u(s.groups),
        oh: u(s.oh),
        ow: u(s.ow),
        m: u(m),
        n_cols: u(n_cols),
        k: u(k),
        first_batch: 0,
        k_chunk: u(k_chunk),
        inv_ow: 1.0 / s.ow as f32,
        inv_pixels: 1.0 / (s.oh * s.ow) as f32,
        inv_w: 1.0 / s.w as f32,
    };
    ConvLaunch { subgroups, constants, grid, batches, params }
}

/// Records the product `mode` of `s` into `out` with kernel `choice`,
/// reading `a` and `b` (see conv.wgsl), with split-K slices of `k_chunk`
/// in the weight gradient.
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    ctx: &Context,
    s: &ConvSpec,
    mode: Mode,
    choice: Choice,
    a: &Arc<super::pool::Pooled>,
    b: &Arc<super::pool::Pooled>,
    out: &Arc<super::pool::Pooled>,
    k_chunk: usize,
) -> crate::Result<()> {
    let l = launch(s, mode, choice, k_chunk);
    let shader = if l.subgroups { Shader::Conv } else { Shader::ConvTiled };
    let kernel = Kernel::Static { shader, entry: "main", constants: &l.constants };
    let binds = [Bind::read(0, a), Bind::read(1, b), Bind::write(2, out)];
    let params = l.params;
    record_batched(ctx, &kernel, &binds, l.grid, l.batches, |first| ConvParams { first_batch: first as u32, ..params })
}

pub(crate) fn conv2d(ctx: &Arc<Context>, x: &GpuBuffer, weight: &GpuBuffer, s: ConvSpec) -> GpuBuffer {
    // Pending, so that a bias add and an activation after it become its
    // epilogue (epilogue.rs); with fusion or epilogues off, or more images
    // than one dispatch's grid holds, computed now.
    let one_dispatch = s.n * s.groups <= ctx.limits.max_compute_workgroups_per_dimension as usize;
    if ctx.lazy.fusion && ctx.tuning.epilogues && s.output_len() > 0 && s.patch() > 0 && one_dispatch {
        let choice = kernel(ctx, &s, Mode::Forward);
        return super::lazy::product(ctx, weight, x, ProductOp::Conv { spec: s, choice });
    }
    let choice = kernel(ctx, &s, Mode::Forward);
    ctx.compute("conv2d", s.output_len(), &[weight, x], |ins, out| {
        record(ctx, &s, Mode::Forward, choice, ins[0], ins[1], out, 0)
    })
}

pub(crate) fn conv2d_input_grad(ctx: &Arc<Context>, gy: &GpuBuffer, weight: &GpuBuffer, s: ConvSpec) -> GpuBuffer {
    let choice = kernel(ctx, &s, Mode::InputGrad);
    ctx.compute("conv2d_input_grad", s.input_len(), &[weight, gy], |ins, out| {
        record(ctx, &s, Mode::InputGrad, choice, ins[0], ins[1], out, 0)
    })
}

pub(crate) fn conv2d_weight_grad(ctx: &Arc<Context>, gy: &GpuBuffer, x: &GpuBuffer, s: ConvSpec) -> GpuBuffer {
    let choice = kernel(ctx, &s, Mode::WeightGrad);
    let (splits, k_chunk) = weight_grad_split(ctx, &s, choice);
    let partial = ctx.compute("conv2d_weight_grad", splits * s.weight_len(), &[gy, x], |ins, out| {
        record(ctx, &s, Mode::WeightGrad, choice, ins[0], ins[1], out, k_chunk)
    });
    if splits == 1 {
        return partial;
    }
    reduce(ctx, ReduceOp::Sum, &partial, AxisView { outer: 1, len: splits, inner: s.weight_len() })
}

/// The kernel for product `mode` of `s`: tuned per shape class where the
/// autotuner is on (see autotune.rs), else the adapter's default.
fn kernel(ctx: &Context, s: &ConvSpec, mode: Mode) -> Choice {
    autotune::choose_conv(ctx, s, mode).unwrap_or_else(|| Choice::default_for(ctx))
}

/// The weight gradient's split-K with kernel `choice`: enough workgroups
/// to fill the device, splitting K (every pixel of the batch) until the
/// tiles times the splits reach the target, each split at least a few
/// hundred long. The number of splits and each one's length.
pub(super) fn weight_grad_split(ctx: &Context, s: &ConvSpec, choice: Choice) -> (usize, usize) {
    let k = s.n * s.oh * s.ow;
    let [tiles_x, tiles_y] = choice.grid(s.mg(), s.patch()).2;
    let tiles = tiles_x as usize * tiles_y as usize * s.groups;
    let by_target = ctx.tuning.conv_target_groups.div_ceil(tiles.max(1));
    let splits = by_target.min(k.div_ceil(4 * K_CHUNK_ALIGN)).max(1);
    let k_chunk = k.div_ceil(splits).next_multiple_of(K_CHUNK_ALIGN);
    (k.div_ceil(k_chunk).max(1), k_chunk)
}

fn pool_params(s: &PoolSpec) -> (PoolParams, f64) {
    let u = |v: usize| v as u32;
    let kind = match s.kind {
        PoolKind::Max => 0,
        PoolKind::Avg { count_include_pad: true } => 1,
        PoolKind::Avg { count_include_pad: false } => 2,
        PoolKind::AdaptiveAvg => 3,
    };
    let p = PoolParams {
        planes: u(s.planes),
        h: u(s.h),
        w: u(s.w),
        kh: u(s.kh),
        kw: u(s.kw),
        sh: u(s.sh),
        sw: u(s.sw),
        ph: u(s.ph),
        pw: u(s.pw),
        oh: u(s.oh),
        ow: u(s.ow),
    };
    (p, kind as f64)
}

pub(crate) fn pool2d(ctx: &Arc<Context>, x: &GpuBuffer, s: PoolSpec) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    ctx.compute("pool2d", s.output_len(), &[x], |ins, out| {
        let (params, kind) = pool_params(&s);
        let constants = [("WG", wg as f64), ("KIND", kind)];
        let kernel = Kernel::Static { shader: Shader::Pool, entry: "forward", constants: &constants };
        let binds = [Bind::read(0, ins[0]), Bind::read(1, ins[0]), Bind::write(2, out)];
        ctx.record(&kernel, &binds, &params, ctx.groups_1d(s.output_len(), wg))
    })
}

pub(crate) fn pool2d_backward(ctx: &Arc<Context>, x: &GpuBuffer, gy: &GpuBuffer, s: PoolSpec) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    ctx.compute("pool2d_backward", s.input_len(), &[x, gy], |ins, out| {
        let (params, kind) = pool_params(&s);
        let constants = [("WG", wg as f64), ("KIND", kind)];
        let kernel = Kernel::Static { shader: Shader::Pool, entry: "backward", constants: &constants };
        let binds = [Bind::read(0, ins[0]), Bind::read(1, ins[1]), Bind::write(2, out)];
        ctx.record(&kernel, &binds, &params, ctx.groups_1d(s.input_len(), wg))
    })
}
