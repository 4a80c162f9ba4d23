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

/// One update of `targets[0]` (the parameter; then its state buffers) from
/// `grad`, in place.
pub(crate) fn update(ctx: &Arc<Context>, rule: UpdateRule, targets: &mut [&mut GpuBuffer], grad: &GpuBuffer, n: usize) {
    let n4 = n.div_ceil(4) as u32;
    let (entry, values) = params(rule, n4);
    // In a captured step, each replay asks the optimizer for the rule of
    // its next step (step count, learning rate).
    let mut patches = super::capture::Patches::default();
    if let Some(mut rule_of) = super::capture::take_rule().filter(|_| super::capture::capturing(ctx)) {
        patches.params = Some(Box::new(move || bytemuck::bytes_of(&params(rule_of(), n4).1).to_vec()));
    }
    let wg = ctx.tuning.elementwise_wg;
    let slots = targets.len();
    ctx.modify(targets, &[grad], |bufs| {
        let kernel = Kernel::Static { shader: Shader::Optim, entry, constants: &[("WG", wg as f64)] };
        // Bindings: the gradient at 0, the parameter at 1, its state from 2.
        let mut binds = vec![Bind::read(0, &bufs[slots])];
        binds.extend(bufs[..slots].iter().enumerate().map(|(i, b)| Bind::write(1 + i as u32, b)));
        ctx.record_patched(&kernel, &binds, &values, ctx.groups_1d(n4 as usize, wg), patches)
    });
}

/// The entry point and parameters of `rule` over `n4` vec4s.
fn params(rule: UpdateRule, n4: u32) -> (&'static str, OptimParams) {
    match rule {
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
    }
}
