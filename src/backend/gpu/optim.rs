//! Fused optimizer updates, in place, so a training step never reads
//! parameters back to the host: one dispatch per parameter, or one for
//! several (PyTorch's multi-tensor fused optimizers). WebGPU has no
//! pointers and no portable arrays of buffers, so a multi-tensor kernel
//! binds each parameter's gradient, values and state (four buffers for
//! Adam) and is generated for the number of parameters it takes: as many
//! as the adapter's storage-buffer limit allows, up to [`MAX_PER_DISPATCH`]
//! (two on an adapter with WebGPU's minimum of 8; every parameter of the
//! MNIST model on a desktop Vulkan driver). Both kernels apply the rules of
//! `shaders/optim_rules.wgsl`, so they compute the same bits.

use super::capture::{ReplayRule, SharedRule};
use super::pipelines::{Kernel, OPTIM_RULES, Shader, params};
use super::{Bind, Context, GpuBuffer};
use crate::backend::{Update, UpdateRule};
use std::fmt::Write;
use std::sync::Arc;

/// The most parameters one multi-tensor dispatch updates (the ends of
/// their ranges travel as immediates).
pub(crate) const MAX_PER_DISPATCH: usize = 8;

params! {
    /// A multi-tensor update: parameter `k` (of `n[k]` vec4s) takes the
    /// workgroups from `e[k-1]` (0 for the first) to `e[k]`, so that every
    /// workgroup works on one parameter (no divergence, one branch taken
    /// per workgroup); then the rule's numbers, laid out as the
    /// per-parameter kernel's `struct Params` (`shaders/optim.wgsl`).
    MultiParams {
        e: [u32; MAX_PER_DISPATCH],
        n: [u32; MAX_PER_DISPATCH],
        /// Its `n4` unused: the per-parameter kernel's fields, in its order.
        rule: OptimParams,
    }
}

/// How many parameters a multi-tensor dispatch of a rule with `state`
/// buffers per parameter takes on an adapter binding `limit` storage
/// buffers per stage.
pub(crate) fn per_dispatch(limit: u32, state: usize) -> usize {
    (limit as usize / (2 + state)).clamp(1, MAX_PER_DISPATCH)
}

/// `rule` on every parameter of `updates`, grouped into multi-tensor
/// dispatches; large parameters (and groups of one) take the per-parameter
/// kernel.
pub(crate) fn update_many(ctx: &Arc<Context>, rule: UpdateRule, updates: &mut [Update<'_>]) {
    let state = match rule {
        UpdateRule::Sgd { momentum, .. } => usize::from(momentum != 0.0),
        UpdateRule::Adam { .. } => 2,
    };
    let k =
        if ctx.tuning.multi_tensor { per_dispatch(ctx.limits.max_storage_buffers_per_shader_stage, state) } else { 1 };
    // In a captured step every dispatch asks the optimizer's shared rule.
    let shared = replay_rule(ctx);
    let rule_of = || shared.clone();
    // Large parameters, and updates with a poisoned buffer (which poisons
    // what its dispatch updates), take a dispatch of their own; empty ones
    // none.
    let poisoned = |u: &Update| {
        u.grad.gpu().get().is_err() || u.param.gpu().get().is_err() || u.state.iter().any(|s| s.gpu().get().is_err())
    };
    // Parameters of `multi_tensor_large` elements or more are updated by a
    // dispatch of their own: one dispatch is nothing next to their traffic
    // (1M elements on a GPU), or each workgroup of a multi-tensor kernel
    // would run every parameter's branch (16K on a software rasteriser).
    let large = ctx.tuning.multi_tensor_large;
    let (large, small): (Vec<&mut Update>, Vec<&mut Update>) =
        updates.iter_mut().filter(|u| u.n > 0).partition(|u| u.n >= large || u.state.len() != state || poisoned(u));
    for u in large {
        one(ctx, rule, u, rule_of());
    }
    let mut small = small;
    while !small.is_empty() {
        let rest = small.split_off(small.len().min(k));
        let mut group = std::mem::replace(&mut small, rest);
        if group.len() == 1 {
            one(ctx, rule, group.pop().expect("one"), rule_of());
        } else {
            multi(ctx, rule, &mut group, rule_of());
        }
    }
}

fn one(ctx: &Arc<Context>, rule: UpdateRule, u: &mut Update<'_>, rule_of: Option<SharedRule>) {
    let mut targets: Vec<&mut GpuBuffer> = vec![u.param.gpu_mut()];
    targets.extend(u.state.iter_mut().map(|s| s.gpu_mut()));
    update(ctx, rule, &mut targets, u.grad.gpu(), u.n, rule_of);
}

/// One dispatch updating every parameter of `group` (2..=MAX_PER_DISPATCH).
fn multi(ctx: &Arc<Context>, rule: UpdateRule, group: &mut [&mut Update<'_>], rule_of: Option<SharedRule>) {
    let (entry, values) = params(rule, 0);
    let state = group[0].state.len();
    let wg = ctx.tuning.elementwise_wg;
    let (mut ends, mut sizes) = ([0u32; MAX_PER_DISPATCH], [0u32; MAX_PER_DISPATCH]);
    let mut total = 0u32;
    for (k, u) in group.iter().enumerate() {
        sizes[k] = u.n.div_ceil(4) as u32;
        total += sizes[k].div_ceil(wg);
        ends[k] = total;
    }
    for e in ends.iter_mut().skip(group.len()) {
        *e = total;
    }
    let with_ends = move |rule: OptimParams| MultiParams { e: ends, n: sizes, rule };
    // Each parameter's binds (gradient, values, state) are a group: a bad
    // label behind one parameter's gradient poisons that parameter only.
    let mut patches = super::capture::Patches { groups_of: Some(2 + state), ..Default::default() };
    if let Some(shared) = rule_of {
        patches.params = Some(Box::new(move |replay| {
            bytemuck::bytes_of(&with_ends(params(ReplayRule::at(&shared, replay), 0).1)).to_vec()
        }));
    }
    let values = with_ends(values);
    let count = group.len();
    // Targets: each parameter then its state; inputs: the gradients.
    let grads: Vec<&GpuBuffer> = group.iter().map(|u| u.grad.gpu()).collect();
    let mut targets: Vec<&mut GpuBuffer> = Vec::with_capacity(count * (1 + state));
    for u in group.iter_mut() {
        targets.push(u.param.gpu_mut());
        targets.extend(u.state.iter_mut().map(|s| s.gpu_mut()));
    }
    let source = || source(count, state);
    // Distinct from every fused kernel's structure, whose first word is 0 or 1.
    let structure = vec![u32::MAX, rule_id(entry), count as u32, state as u32];
    let per = 1 + state;
    ctx.modify(&mut targets, &grads, |bufs| {
        let kernel = Kernel::Generated { family: "optim_multi", structure, source: &source, wg, constants: &[] };
        // Parameter k: its gradient at 4k, values at 4k + 1, state from 4k + 2.
        let mut binds = Vec::with_capacity(count * (2 + state));
        for k in 0..count {
            binds.push(Bind::read(4 * k as u32, &bufs[count * per + k]));
            for s in 0..per {
                binds.push(Bind::write((4 * k + 1 + s) as u32, &bufs[k * per + s]));
            }
        }
        ctx.record_patched(&kernel, &binds, &values, ctx.spread(total as u64), patches)
    });
}

fn rule_id(entry: &str) -> u32 {
    match entry {
        "sgd" => 0,
        "sgd_momentum" => 1,
        _ => 2,
    }
}

/// The fields of `shaders/optim.wgsl`'s `struct Params` and its closing
/// brace, which a multi-tensor kernel's `Params` ends with.
static OPTIM_PARAMS_FIELDS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The WGSL of a multi-tensor kernel updating `count` parameters with
/// `state` buffers each: SGD (0), SGD with momentum (1) or Adam (2).
fn source(count: usize, state: usize) -> String {
    let mut src = String::with_capacity(4096);
    src.push_str("struct Params {\n");
    for k in 0..MAX_PER_DISPATCH {
        let _ = writeln!(src, "    e{k}: u32,");
    }
    for k in 0..MAX_PER_DISPATCH {
        let _ = writeln!(src, "    len{k}: u32,");
    }
    // Then the per-parameter kernel's fields (`MultiParams::rule`).
    src.push_str(OPTIM_PARAMS_FIELDS.get_or_init(|| {
        let per_parameter = Shader::Optim.source();
        let body = per_parameter.split("struct Params {").nth(1).expect("optim.wgsl declares its Params");
        body[..body.find('}').expect("a closed struct") + 1].to_string()
    }));
    src.push_str("\nvar<immediate> params: Params;\n");
    src.push_str(OPTIM_RULES);
    for k in 0..count {
        let _ = writeln!(src, "@group(0) @binding({}) var<storage, read> g{k}: array<vec4<f32>>;", 4 * k);
        let _ = writeln!(src, "@group(0) @binding({}) var<storage, read_write> p{k}: array<vec4<f32>>;", 4 * k + 1);
        for s in 0..state {
            let _ = writeln!(
                src,
                "@group(0) @binding({}) var<storage, read_write> s{s}_{k}: array<vec4<f32>>;",
                4 * k + 2 + s
            );
        }
    }
    src.push_str(
        "@compute @workgroup_size(WG)\nfn main(@builtin(workgroup_id) wid: vec3<u32>, \
         @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {\n    \
         let group = group_id(wid, nwg);\n",
    );
    for k in 0..count {
        let start = if k == 0 { "0u".to_string() } else { format!("params.e{}", k - 1) };
        let _ = writeln!(src, "    if group < params.e{k} {{\n        let j = (group - {start}) * WG + lid;");
        let _ = writeln!(src, "        if j >= params.len{k} {{\n            return;\n        }}");
        let call = match state {
            0 => format!("rule_sgd(p{k}[j], g{k}[j])"),
            1 => format!("rule_sgd_momentum(p{k}[j], g{k}[j], s0_{k}[j])"),
            _ => format!("rule_adam(p{k}[j], g{k}[j], s0_{k}[j], s1_{k}[j])"),
        };
        let _ = writeln!(src, "        let u = {call};");
        for s in 0..state {
            let _ = writeln!(src, "        s{s}_{k}[j] = u.s{s};");
        }
        let _ = writeln!(src, "        p{k}[j] = u.p;\n        return;\n    }}");
    }
    src.push_str("}\n");
    src
}

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

/// The optimizer's shared rule, if this thread captures on `ctx`.
pub(super) fn replay_rule(ctx: &Context) -> Option<SharedRule> {
    super::capture::current_rule().filter(|_| super::capture::capturing(ctx))
}

/// One update of `targets[0]` (the parameter; then its state buffers) from
/// `grad`, in place; in a captured step, `rule_of` gives each replay's
/// rule (step count, learning rate).
pub(crate) fn update(
    ctx: &Arc<Context>,
    rule: UpdateRule,
    targets: &mut [&mut GpuBuffer],
    grad: &GpuBuffer,
    n: usize,
    rule_of: Option<SharedRule>,
) {
    let n4 = n.div_ceil(4) as u32;
    let (entry, values) = params(rule, n4);
    let mut patches = super::capture::Patches::default();
    if let Some(shared) = rule_of {
        patches.params =
            Some(Box::new(move |replay| bytemuck::bytes_of(&params(ReplayRule::at(&shared, replay), n4).1).to_vec()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_tensor_dispatch_fits_the_adapters_storage_buffers() {
        // Gradient, values and state per parameter.
        assert_eq!(per_dispatch(8, 2), 2, "Adam on an adapter with WebGPU's minimum of 8");
        assert_eq!(per_dispatch(8, 1), 2);
        assert_eq!(per_dispatch(8, 0), 4);
        assert_eq!(per_dispatch(31, 2), 7, "Metal's 31 buffers per stage");
        assert_eq!(per_dispatch(u32::MAX, 2), MAX_PER_DISPATCH);
        assert_eq!(per_dispatch(3, 2), 1);
        for limit in 1..100 {
            for state in 0..=2 {
                let k = per_dispatch(limit, state);
                assert!(k == 1 || k * (2 + state) <= limit as usize);
            }
        }
    }

    #[test]
    fn multi_params_fit_the_immediates() {
        assert!(std::mem::size_of::<MultiParams>() <= super::super::pipelines::IMMEDIATE_BYTES as usize);
        let src = source(3, 2);
        assert!(src.contains("e7: u32") && src.contains("rule_adam(p2[j]") && !src.contains("p3"));
    }
}
