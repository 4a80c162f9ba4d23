// The optimizer update rules on one vec4 of a parameter, PyTorch's
// formulas (torch.optim.SGD / Adam / AdamW, as src/backend/cpu/optim.rs).
// Shared by the per-parameter kernels (optim.wgsl) and the multi-tensor
// kernels the runtime generates (src/backend/gpu/optim.rs), so both compute
// the same bits; each declares its own `params` with these fields.

struct Updated {
    p: vec4<f32>,
    s0: vec4<f32>,
    s1: vec4<f32>,
}

fn rule_sgd(p: vec4<f32>, g: vec4<f32>) -> Updated {
    return Updated(p - params.lr * (g + params.weight_decay * p), vec4<f32>(), vec4<f32>());
}

fn rule_sgd_momentum(p: vec4<f32>, g0: vec4<f32>, s0: vec4<f32>) -> Updated {
    let g = g0 + params.weight_decay * p;
    let v = params.momentum * s0 + g;
    return Updated(p - params.lr * select(v, g + params.momentum * v, params.nesterov != 0u), v, vec4<f32>());
}

fn rule_adam(p0: vec4<f32>, g0: vec4<f32>, s0: vec4<f32>, s1: vec4<f32>) -> Updated {
    var p = p0;
    var g = g0;
    if params.decoupled != 0u {
        p *= 1.0 - params.lr * params.weight_decay;
    } else {
        g += params.weight_decay * p;
    }
    let m = params.beta1 * s0 + (1.0 - params.beta1) * g;
    let v = params.beta2 * s1 + (1.0 - params.beta2) * g * g;
    return Updated(p - (params.lr / params.bias1) * m / (sqrt(v) / sqrt(params.bias2) + vec4<f32>(params.eps)), m, v);
}
