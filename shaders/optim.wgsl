// Fused optimizer updates: one dispatch per parameter reads its gradient
// and rewrites the parameter and its state in place, with the rules of
// optim_rules.wgsl.

struct Params {
    // Number of vec4s (buffers are padded to vec4s).
    n4: u32,
    lr: f32,
    weight_decay: f32,
    // SGD
    momentum: f32,
    nesterov: u32,
    // Adam
    beta1: f32,
    beta2: f32,
    eps: f32,
    decoupled: u32,
    bias1: f32,
    bias2: f32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> state0: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> state1: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i >= params.n4 {
        return;
    }
    param[i] = rule_sgd(param[i], grad[i]).p;
}

@compute @workgroup_size(WG)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i >= params.n4 {
        return;
    }
    let u = rule_sgd_momentum(param[i], grad[i], state0[i]);
    state0[i] = u.s0;
    param[i] = u.p;
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i >= params.n4 {
        return;
    }
    let u = rule_adam(param[i], grad[i], state0[i], state1[i]);
    state0[i] = u.s0;
    state1[i] = u.s1;
    param[i] = u.p;
}
