// Layer normalisation over the last `cols` elements of each of `rows` rows,
// with the affine weight and bias folded in (src/backend/gpu/norm.rs).
//   forward:      one workgroup per row: the mean, then the mean squared
//                 deviation (two passes over the row, as the CPU computes
//                 them: no cancellation for rows far from zero), then
//                 y = (x - mean) · rstd · w + b; [mean, rstd] saved per row.
//   backward_x:   one workgroup per row: Σ g and Σ g·x̂ (g = gy·w) in one
//                 pass, then dx = rstd · (g - mean(g) - x̂ · mean(g·x̂)).
//   backward_wb:  one invocation per column, down the rows (neighbouring
//                 invocations read neighbouring addresses):
//                 dw = Σ gy·x̂, db = Σ gy.
// NaN and infinity reach the row's outputs through the sums: no select or
// comparison here could drop them.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(5) var<storage, read> gy: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;
@group(0) @binding(8) var<storage, read_write> dw: array<f32>;
@group(0) @binding(9) var<storage, read_write> db: array<f32>;

var<workgroup> part: array<vec2<f32>, WG>;

// The sums of the workgroup's partials, shared by all of it. Must be
// called in uniform control flow.
fn workgroup_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    part[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            part[lid] = part[lid] + part[lid + s];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    let n = f32(params.cols);
    var s = 0.0;
    for (var c = lid; c < params.cols; c += WG) {
        s += x[base + c];
    }
    let mean = workgroup_sum(vec2<f32>(s, 0.0), lid).x / n;
    var q = 0.0;
    for (var c = lid; c < params.cols; c += WG) {
        let d = x[base + c] - mean;
        q += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(vec2<f32>(q, 0.0), lid).x / n + params.eps);
    for (var c = lid; c < params.cols; c += WG) {
        y[base + c] = (x[base + c] - mean) * rstd * w[c] + b[c];
    }
    if lid == 0u {
        stats_out[2u * row] = mean;
        stats_out[2u * row + 1u] = rstd;
    }
}

@compute @workgroup_size(WG)
fn backward_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var acc = vec2<f32>(0.0);
    for (var c = lid; c < params.cols; c += WG) {
        let g = gy[base + c] * w[c];
        acc += vec2<f32>(g, g * (x[base + c] - mean) * rstd);
    }
    let means = workgroup_sum(acc, lid) / f32(params.cols);
    for (var c = lid; c < params.cols; c += WG) {
        let xhat = (x[base + c] - mean) * rstd;
        dx[base + c] = rstd * (gy[base + c] * w[c] - means.x - xhat * means.y);
    }
}

@compute @workgroup_size(WG)
fn backward_wb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let c = linear_id(wid, nwg, lid);
    if c >= params.cols {
        return;
    }
    var acc = vec2<f32>(0.0);
    for (var r = 0u; r < params.rows; r++) {
        let g = gy[r * params.cols + c];
        acc += vec2<f32>(g * (x[r * params.cols + c] - stats[2u * r]) * stats[2u * r + 1u], g);
    }
    dw[c] = acc.x;
    db[c] = acc.y;
}
