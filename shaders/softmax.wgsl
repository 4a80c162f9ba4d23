// Softmax and log-softmax along one axis of a [outer, len, inner] view.
//   rows:    inner == 1, long rows. One workgroup per row (online_softmax.wgsl).
//   columns: inner > 1, or short rows. One invocation per (outer, inner)
//            pair; with inner > 1 neighbouring invocations read
//            neighbouring addresses.

override LOG: bool = false;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

fn normalise(v: f32, s: Stats) -> f32 {
    if undefined(s) {
        return nan();
    }
    if LOG {
        return op_sub(op_sub(v, s.max), log(s.sum));
    }
    return op_exp(v - s.max) / s.sum;
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.outer {
        return;
    }
    let s = row_stats(row, lid);
    let base = row * params.len;
    for (var l = lid; l < params.len; l += WG) {
        out[base + l] = normalise(x[base + l], s);
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
    let s = line_stats(base, params.len, params.inner);
    for (var l = 0u; l < params.len; l++) {
        let at = base + l * params.inner;
        out[at] = normalise(x[at], s);
    }
}
