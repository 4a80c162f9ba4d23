//! Cross-entropy from logits with integer labels, forward and backward
//! (`shaders/loss.wgsl`).

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer};
use std::sync::Arc;

params! {
    /// `rows` rows of `len` logits; the backward's gradient of row r is
    /// `grad_rows[r · grad_stride] · grad_scale`, or with `grad_const`,
    /// `grad_scale` alone (a constant gradient folded in: the seed of a
    /// loss's backward, which then costs no fill of its own).
    LossParams { rows: u32, len: u32, check_slot: u32, check_id: u32, grad_stride: u32, grad_scale: f32, grad_const: u32 }
}

/// What a cross-entropy kernel computes.
#[derive(Clone, Copy)]
pub(crate) enum Pass<'a> {
    /// The loss of each row.
    Rows,
    /// The mean loss over the rows, in one workgroup: only for batches
    /// [`cross_entropy_mean`] accepts.
    Mean,
    /// The gradient of the logits from the loss's gradient: per row, or
    /// with a scale, one value (the gradient of the mean loss) times the
    /// scale for every row.
    Backward(&'a GpuBuffer, Option<f32>),
}

/// The mean loss over the rows in one dispatch, when the rows fit one
/// workgroup and are short (a classifier's small batch: the per-row losses
/// and their mean would be two); `None` otherwise.
pub(crate) fn cross_entropy_mean(
    ctx: &Arc<Context>,
    logits: &GpuBuffer,
    labels: &GpuBuffer,
    rows: usize,
    classes: usize,
) -> Option<GpuBuffer> {
    let fits = (1..=ctx.tuning.elementwise_wg as usize).contains(&rows) && classes <= super::reduce::SHORT_LINE;
    fits.then(|| cross_entropy(ctx, logits, labels, Pass::Mean, rows, classes))
}

pub(crate) fn cross_entropy(
    ctx: &Arc<Context>,
    logits: &GpuBuffer,
    labels: &GpuBuffer,
    pass: Pass,
    rows: usize,
    classes: usize,
) -> GpuBuffer {
    let grad_rows = match pass {
        Pass::Backward(g, scale) => Some((g, scale)),
        Pass::Rows | Pass::Mean => None,
    };
    // A workgroup per row, or for a few classes one invocation per row (see
    // `SHORT_LINE`); the mean, one workgroup for all rows.
    let lines = classes <= super::reduce::SHORT_LINE;
    let (wg, groups) = match (pass, lines) {
        (Pass::Mean, _) => (ctx.one_group_width(rows), [1, 1, 1]),
        (_, true) => (ctx.tuning.elementwise_wg, ctx.groups_1d(rows, ctx.tuning.elementwise_wg)),
        (_, false) => (ctx.tuning.row_wg, ctx.spread(rows as u64)),
    };
    let (entry, n) = match (pass, lines) {
        (Pass::Mean, _) => ("cross_entropy_mean_lines", 1),
        (Pass::Backward(..), false) => ("cross_entropy_backward", rows * classes),
        (Pass::Backward(..), true) => ("cross_entropy_backward_lines", rows * classes),
        (Pass::Rows, false) => ("cross_entropy", rows),
        (Pass::Rows, true) => ("cross_entropy_lines", rows),
    };
    // The gradient of the mean loss, when it is a pending constant (the
    // seed `backward` starts from), is folded into the scale: as the CPU
    // computes it, grad · scale, rounded once.
    let constant = match grad_rows {
        Some((g, Some(scale))) => super::lazy::constant_value(g).map(|g| g * scale),
        _ => None,
    };
    let mut inputs = vec![logits, labels];
    inputs.extend(grad_rows.filter(|_| constant.is_none()).map(|(g, _)| g));
    let (grad_stride, grad_scale) = match grad_rows {
        Some((_, Some(scale))) => (0, constant.unwrap_or(scale)),
        _ => (1, 1.0),
    };
    ctx.compute("cross_entropy", n, &inputs, |ins, out| {
        let mut binds = vec![Bind::read(0, ins[0]), Bind::read(1, ins[1]), Bind::write(3, out), ctx.errors(4)];
        // With a constant gradient the kernel reads no gradient buffer, but
        // binds one: the logits again.
        if grad_rows.is_some() {
            binds.push(Bind::read(2, ins.get(2).copied().unwrap_or(ins[0])));
        }
        let kernel = Kernel::Static { shader: Shader::Loss, entry, constants: &[("WG", wg as f64)] };
        let check = ctx.check("cross_entropy")?;
        let params = LossParams {
            rows: rows as u32,
            len: classes as u32,
            check_slot: check.slot,
            check_id: check.id,
            grad_stride,
            grad_scale,
            grad_const: constant.is_some() as u32,
        };
        let patches = super::capture::Patches::check(
            "cross_entropy",
            std::mem::offset_of!(LossParams, check_slot),
            std::mem::offset_of!(LossParams, check_id),
        );
        ctx.record_patched(&kernel, &binds, &params, groups, patches)?;
        out.taint.add(check);
        Ok(())
    })
}
