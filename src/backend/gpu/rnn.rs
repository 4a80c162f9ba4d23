//! The LSTM cell's gate arithmetic, fused (`shaders/rnn.wgsl`): one
//! dispatch forward and one backward per time step, where the unfused
//! cell took about a dozen of each.

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer};
use std::sync::Arc;

params! {
    /// `batch` rows of `hidden` units.
    RnnParams { batch: u32, hidden: u32 }
}

pub(crate) fn lstm_cell(
    ctx: &Arc<Context>,
    gates: &GpuBuffer,
    hc_prev: &GpuBuffer,
    batch: usize,
    hidden: usize,
) -> GpuBuffer {
    let wg = ctx.tuning.elementwise_wg;
    ctx.compute("lstm_cell", batch * 2 * hidden, &[gates, hc_prev], |ins, out| {
        let kernel = Kernel::Static { shader: Shader::Rnn, entry: "forward", constants: &[("WG", wg as f64)] };
        let binds = [Bind::read(0, ins[0]), Bind::read(1, ins[1]), Bind::write(2, out)];
        let p = RnnParams { batch: batch as u32, hidden: hidden as u32 };
        ctx.record(&kernel, &binds, &p, ctx.groups_1d(batch * hidden, wg))
    })
}

pub(crate) fn lstm_cell_backward(
    ctx: &Arc<Context>,
    [gates, hc_prev, ghc]: [&GpuBuffer; 3],
    batch: usize,
    hidden: usize,
) -> [GpuBuffer; 2] {
    let wg = ctx.tuning.elementwise_wg;
    ctx.compute_many("lstm_cell", [batch * 4 * hidden, batch * 2 * hidden], &[gates, hc_prev, ghc], |ins, [dg, dhc]| {
        let kernel = Kernel::Static { shader: Shader::Rnn, entry: "backward", constants: &[("WG", wg as f64)] };
        let binds = [
            Bind::read(0, ins[0]),
            Bind::read(1, ins[1]),
            Bind::read(3, ins[2]),
            Bind::write(4, dg),
            Bind::write(5, dhc),
        ];
        let p = RnnParams { batch: batch as u32, hidden: hidden as u32 };
        ctx.record(&kernel, &binds, &p, ctx.groups_1d(batch * hidden, wg))
    })
}
