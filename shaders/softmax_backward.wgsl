// The backward of softmax and log-softmax along one axis of a
// [outer, len, inner] view, in one pass per line instead of a product, a
// reduction and two elementwise kernels (src/backend/gpu/softmax.rs):
//   softmax:     dx = y · (g - Σ g·y)       (y the softmax)
//   log_softmax: dx = g - exp(y) · Σ g      (y the log-softmax)
//   rows:    inner == 1, rows longer than 32. One workgroup per row, a tree
//            sum in workgroup memory.
//   columns: inner > 1, or short rows. One invocation per (outer, inner)
//            line.
// NaN and ∞ reach dx through the sums and products, as on the CPU.

override LOG: bool = false;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

var<workgroup> part: array<f32, WG>;

// What the line's sum adds for one element.
fn term(at: u32) -> f32 {
    if LOG {
        return g[at];
    }
    return g[at] * y[at];
}

fn grad(at: u32, total: f32) -> f32 {
    if LOG {
        return g[at] - exp(y[at]) * total;
    }
    return y[at] * (g[at] - total);
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.outer {
        return;
    }
    let base = row * params.len;
    var s = 0.0;
    for (var l = lid; l < params.len; l += WG) {
        s += term(base + l);
    }
    part[lid] = s;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w / 2u) {
        if lid < w {
            part[lid] = part[lid] + part[lid + w];
        }
        workgroupBarrier();
    }
    let total = part[0];
    for (var l = lid; l < params.len; l += WG) {
        dx[base + l] = grad(base + l, total);
    }
}

@compute @workgroup_size(WG)
fn columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if t >= params.outer * params.inner {
        return;
    }
    let base = (t / params.inner) * params.len * params.inner + t % params.inner;
    var total = 0.0;
    for (var l = 0u; l < params.len; l++) {
        total += term(base + l * params.inner);
    }
    for (var l = 0u; l < params.len; l++) {
        let at = base + l * params.inner;
        dx[at] = grad(at, total);
    }
}
