// Fused optimizer updates: one dispatch per parameter reads its gradient
// and rewrites the parameter and its state in place. The formulas are
// PyTorch's (torch.optim.SGD / Adam / AdamW), as in src/backend/cpu/optim.rs.

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
    let p = param[i];
    param[i] = p - params.lr * (grad[i] + params.weight_decay * p);
}

@compute @workgroup_size(WG)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i >= params.n4 {
        return;
    }
    let p = param[i];
    let g = grad[i] + params.weight_decay * p;
    let v = params.momentum * state0[i] + g;
    state0[i] = v;
    param[i] = p - params.lr * select(v, g + params.momentum * v, params.nesterov != 0u);
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i >= params.n4 {
        return;
    }
    var p = param[i];
    var g = grad[i];
    if params.decoupled != 0u {
        p *= 1.0 - params.lr * params.weight_decay;
    } else {
        g += params.weight_decay * p;
    }
    let m = params.beta1 * state0[i] + (1.0 - params.beta1) * g;
    let v = params.beta2 * state1[i] + (1.0 - params.beta2) * g * g;
    state0[i] = m;
    state1[i] = v;
    param[i] = p - (params.lr / params.bias1) * m / (sqrt(v) / sqrt(params.bias2) + vec4<f32>(params.eps));
}
