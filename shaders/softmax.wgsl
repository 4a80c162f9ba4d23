// Softmax and log-softmax along one axis of a [outer, len, inner] view, and
// cross-entropy from logits with integer labels (forward and backward).
//
// Each row's maximum and sum of exponentials come from one pass (the
// "online softmax": the running sum is rescaled when the maximum grows), so
// logits of ±1e4 never overflow. `rows` and the cross-entropy kernels run one
// workgroup per row and combine per-invocation partials in a tree; `columns`
// (inner > 1) runs one invocation per (outer, inner) pair.

override WG: u32 = 64u; // a power of two
override LOG: bool = false;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<f32>;
@group(0) @binding(2) var<storage, read> grad_rows: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part_max: array<f32, WG>;
var<workgroup> part_sum: array<f32, WG>;

// Running (max, Σ exp(x - max)); sum == 0 means empty.
struct Stats {
    max: f32,
    sum: f32,
}

fn push(s: Stats, v: f32) -> Stats {
    if s.sum == 0.0 {
        return Stats(v, 1.0);
    }
    if v > s.max {
        return Stats(v, s.sum * exp(s.max - v) + 1.0);
    }
    return Stats(s.max, s.sum + exp(v - s.max));
}

fn merge(a: Stats, b: Stats) -> Stats {
    if b.sum == 0.0 {
        return a;
    }
    if a.sum == 0.0 {
        return b;
    }
    let m = max(a.max, b.max);
    return Stats(m, a.sum * exp(a.max - m) + b.sum * exp(b.max - m));
}

fn row_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The statistics of row `row` (contiguous, length params.len), shared by the
// whole workgroup. Must be called in uniform control flow.
fn row_stats(row: u32, lid: u32) -> Stats {
    let base = row * params.len;
    var s = Stats(0.0, 0.0);
    for (var l = lid; l < params.len; l += WG) {
        s = push(s, x[base + l]);
    }
    part_max[lid] = s.max;
    part_sum[lid] = s.sum;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w / 2u) {
        if lid < w {
            let m = merge(Stats(part_max[lid], part_sum[lid]), Stats(part_max[lid + w], part_sum[lid + w]));
            part_max[lid] = m.max;
            part_sum[lid] = m.sum;
        }
        workgroupBarrier();
    }
    let total = Stats(part_max[0], part_sum[0]);
    workgroupBarrier();
    return total;
}

fn normalise(v: f32, s: Stats) -> f32 {
    if LOG {
        return v - s.max - log(s.sum);
    }
    return exp(v - s.max) / s.sum;
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = row_id(wid, nwg);
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
    let t = row_id(wid, nwg) * WG + lid;
    if t >= params.outer * params.inner {
        return;
    }
    let base = (t / params.inner) * params.len * params.inner + t % params.inner;
    var s = Stats(0.0, 0.0);
    for (var l = 0u; l < params.len; l++) {
        s = push(s, x[base + l * params.inner]);
    }
    for (var l = 0u; l < params.len; l++) {
        let at = base + l * params.inner;
        out[at] = normalise(x[at], s);
    }
}

// The label of `row`, or NONE when it is not an integer in 0..classes.
const NONE: u32 = 0xffffffffu;

// A quiet NaN. The `& 0u` on a runtime value keeps WGSL from folding it into
// a constant, which would be rejected as non-finite.
fn nan(runtime: u32) -> f32 {
    return bitcast<f32>(0x7fc00000u | (runtime & 0u));
}

fn label_of(row: u32) -> u32 {
    let v = labels[row];
    if v >= 0.0 && v < f32(params.len) && v == floor(v) {
        return u32(v);
    }
    return NONE;
}

// out[row] = logsumexp(x[row]) - x[row][label]; NaN for an invalid label.
@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = row_id(wid, nwg);
    if row >= params.outer {
        return;
    }
    let s = row_stats(row, lid);
    if lid == 0u {
        let label = label_of(row);
        if label == NONE {
            out[row] = nan(label);
        } else {
            out[row] = s.max + log(s.sum) - x[row * params.len + label];
        }
    }
}

// out[row][j] = (softmax(x[row])[j] - [j == label]) · grad_rows[row].
@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let row = row_id(wid, nwg);
    if row >= params.outer {
        return;
    }
    let s = row_stats(row, lid);
    let g = grad_rows[row];
    let label = label_of(row);
    let base = row * params.len;
    for (var l = lid; l < params.len; l += WG) {
        let p = exp(x[base + l] - s.max) / s.sum;
        out[base + l] = select((p - select(0.0, 1.0, l == label)) * g, nan(label), label == NONE);
    }
}
