//! Fused optimizer updates: one dispatch per parameter, in place, so a
//! training step never reads parameters back to the host.

use super::elementwise::vec4s;
use super::{Bind, Context, GpuBuffer, Kernel, Shader};
use crate::backend::UpdateRule;
use std::sync::Arc;

pub(crate) fn update(
    ctx: &Arc<Context>,
    rule: UpdateRule,
    param: &mut GpuBuffer,
    grad: &GpuBuffer,
    mut state: Vec<&mut GpuBuffer>,
    n: usize,
) {
    // n, lr, weight_decay, momentum, nesterov, beta1, beta2, eps, decoupled, bias1, bias2
    let (entry, params) = match rule {
        UpdateRule::Sgd { lr, momentum, weight_decay, nesterov } => {
            let entry = if momentum == 0.0 { "sgd" } else { "sgd_momentum" };
            (
                entry,
                [n as u32, lr.to_bits(), weight_decay.to_bits(), momentum.to_bits(), nesterov as u32, 0, 0, 0, 0, 0, 0],
            )
        }
        UpdateRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, bias1, bias2 } => (
            "adam",
            [
                vec4s(n) as u32,
                lr.to_bits(),
                weight_decay.to_bits(),
                0,
                0,
                beta1.to_bits(),
                beta2.to_bits(),
                eps.to_bits(),
                decoupled as u32,
                bias1.to_bits(),
                bias2.to_bits(),
            ],
        ),
    };
    let wg = ctx.tuning.elementwise_wg;
    let kernel = Kernel { shader: Shader::Optim, entry, constants: &[("WG", wg as f64)] };
    let result = {
        let mut binds = vec![Bind::read(0, grad), Bind::write(1, param)];
        binds.extend(state.iter().enumerate().map(|(i, s)| Bind::write(2 + i as u32, s)));
        ctx.dispatch(&kernel, &binds, &params, ctx.groups_1d(vec4s(n), wg))
    };
    if let Err(e) = result {
        *param = GpuBuffer::poisoned(e.clone());
        for s in state.iter_mut() {
            **s = GpuBuffer::poisoned(e.clone());
        }
    }
}
