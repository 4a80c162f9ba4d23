//! Fused optimizer updates: one dispatch per parameter, in place, so a
//! training step never reads parameters back to the host.

use super::pipelines::{Kernel, Shader, params};
use super::{Bind, Context, GpuBuffer};
use crate::backend::UpdateRule;
use std::sync::Arc;

params! {
    /// The hyper-parameters of every rule in `shaders/optim.wgsl`; each
    /// entry point reads its own.
    OptimParams {
        /// Number of vec4s (buffers are padded to vec4s).
        n4: u32,
        lr: f32,
        weight_decay: f32,
        momentum: f32,
        nesterov: u32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        decoupled: u32,
        bias1: f32,
        bias2: f32,
    }
}

pub(crate) fn update(
    ctx: &Arc<Context>,
    rule: UpdateRule,
    param: &mut GpuBuffer,
    grad: &GpuBuffer,
    mut state: Vec<&mut GpuBuffer>,
    n: usize,
) {
    let n4 = n.div_ceil(4) as u32;
    let (entry, params) = match rule {
        UpdateRule::Sgd { lr, momentum, weight_decay, nesterov } => (
            if momentum == 0.0 { "sgd" } else { "sgd_momentum" },
            OptimParams { n4, lr, weight_decay, momentum, nesterov: nesterov as u32, ..Default::default() },
        ),
        UpdateRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, bias1, bias2 } => (
            "adam",
            OptimParams {
                n4,
                lr,
                weight_decay,
                beta1,
                beta2,
                eps,
                decoupled: decoupled as u32,
                bias1,
                bias2,
                ..Default::default()
            },
        ),
    };
    let wg = ctx.tuning.elementwise_wg;
    let result = (|| {
        let kernel = Kernel::Static { shader: Shader::Optim, entry, constants: &[("WG", wg as f64)] };
        let param = param.get()?;
        let state = state.iter().map(|s| s.get()).collect::<crate::Result<Vec<_>>>()?;
        let mut binds = vec![Bind::read(0, grad.get()?), Bind::write(1, param)];
        binds.extend(state.iter().enumerate().map(|(i, s)| Bind::write(2 + i as u32, s)));
        ctx.record(&kernel, &binds, &params, ctx.groups_1d(n4 as usize, wg))
    })();
    if let Err(e) = result {
        *param = GpuBuffer::poisoned(e.clone());
        for s in state.iter_mut() {
            **s = GpuBuffer::poisoned(e.clone());
        }
    }
}
