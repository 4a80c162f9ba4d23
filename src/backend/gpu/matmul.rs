//! The matmul kernel's host side: tile sizes from the adapter's tuning, the
//! transpose flags as override constants, and batches beyond the 65535
//! workgroups one dispatch dimension allows split over several dispatches.

use super::{Bind, Context, GpuBuffer, Kernel, Shader};
use crate::backend::MatmulSpec;
use std::sync::Arc;

/// Each invocation computes a 4 × 4 block of the output (see matmul.wgsl).
const THREAD_TILE: u32 = 4;

pub(crate) fn matmul(ctx: &Arc<Context>, a: &GpuBuffer, b: &GpuBuffer, s: MatmulSpec) -> GpuBuffer {
    let out = ctx.alloc("matmul", s.batch * s.m * s.n);
    if out.0.is_err() {
        return out;
    }
    let t = ctx.tuning;
    let (bm, bn) = (t.matmul_wm * THREAD_TILE, t.matmul_wn * THREAD_TILE);
    let constants = [
        ("WM", t.matmul_wm as f64),
        ("WN", t.matmul_wn as f64),
        ("BK", t.matmul_bk as f64),
        ("TRANS_A", s.trans_a as u32 as f64),
        ("TRANS_B", s.trans_b as u32 as f64),
    ];
    let kernel = Kernel { shader: Shader::Matmul, entry: "main", constants: &constants };
    let max_z = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let groups_x = (s.n as u32).div_ceil(bn);
    let groups_y = (s.m as u32).div_ceil(bm);
    let mut first = 0;
    while first < s.batch {
        let count = (s.batch - first).min(max_z);
        let params =
            [s.m as u32, s.n as u32, s.k as u32, s.a_batch_stride as u32, s.b_batch_stride as u32, first as u32];
        let binds = [Bind::read(0, a), Bind::read(1, b), Bind::write(2, &out)];
        if let Err(e) = ctx.dispatch(&kernel, &binds, &params, [groups_x, groups_y, count as u32]) {
            return GpuBuffer::poisoned(e);
        }
        first += count;
    }
    out
}
