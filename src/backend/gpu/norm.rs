//! Layer normalisation (`shaders/layer_norm.wgsl`): one dispatch forward
//! (statistics, normalisation and the affine transform of a row in one
//! workgroup), two backward (the input's gradient per row; the weight's
//! and bias's per column).

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer};
use std::sync::Arc;

params! {
    /// `rows` rows of `cols`, and the variance's epsilon.
    NormParams { rows: u32, cols: u32, eps: f32 }
}

/// `[y, stats]` of `[x, w, b]` (see [`crate::backend::Backend::layer_norm`]).
pub(crate) fn layer_norm(
    ctx: &Arc<Context>,
    [x, w, b]: [&GpuBuffer; 3],
    rows: usize,
    cols: usize,
    eps: f32,
) -> [GpuBuffer; 2] {
    let wg = ctx.tuning.row_wg;
    ctx.compute_many("layer_norm", [rows * cols, rows * 2], &[x, w, b], |ins, [y, stats]| {
        let kernel = Kernel::Static { shader: Shader::LayerNorm, entry: "forward", constants: &[("WG", wg as f64)] };
        let binds = [
            Bind::read(0, ins[0]),
            Bind::read(1, ins[1]),
            Bind::read(2, ins[2]),
            Bind::write(3, y),
            Bind::write(4, stats),
        ];
        let p = NormParams { rows: rows as u32, cols: cols as u32, eps };
        ctx.record(&kernel, &binds, &p, ctx.spread(rows as u64))
    })
}

/// `[dx, dw, db]` of `[x, stats, w, gy]`.
pub(crate) fn layer_norm_backward(
    ctx: &Arc<Context>,
    [x, stats, w, gy]: [&GpuBuffer; 4],
    rows: usize,
    cols: usize,
) -> [GpuBuffer; 3] {
    let (row_wg, col_wg) = (ctx.tuning.row_wg, ctx.tuning.elementwise_wg);
    ctx.compute_many("layer_norm", [rows * cols, cols, cols], &[x, stats, w, gy], |ins, [dx, dw, db]| {
        let p = NormParams { rows: rows as u32, cols: cols as u32, eps: 0.0 };
        let (x, stats, w, gy) = (ins[0], ins[1], ins[2], ins[3]);
        let kernel =
            Kernel::Static { shader: Shader::LayerNorm, entry: "backward_x", constants: &[("WG", row_wg as f64)] };
        let binds = [Bind::read(0, x), Bind::read(1, w), Bind::read(5, gy), Bind::read(6, stats), Bind::write(7, dx)];
        ctx.record(&kernel, &binds, &p, ctx.spread(rows as u64))?;
        let kernel =
            Kernel::Static { shader: Shader::LayerNorm, entry: "backward_wb", constants: &[("WG", col_wg as f64)] };
        let binds = [Bind::read(0, x), Bind::read(5, gy), Bind::read(6, stats), Bind::write(8, dw), Bind::write(9, db)];
        ctx.record(&kernel, &binds, &p, ctx.groups_1d(cols, col_wg))
    })
}
