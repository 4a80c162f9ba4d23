// Inclusive prefix sums (cumsum) along one axis of a [outer, len, inner]
// view, forwards or, with REVERSE, from the end (cumsum's backward).
//   rows:    inner == 1, rows longer than 32. One workgroup per row: each
//            invocation sums a contiguous chunk, a scan in workgroup memory
//            turns the chunk sums into offsets, and each invocation writes
//            its chunk's running sums from its offset. WG is a power of two.
//   columns: inner > 1, or short rows. One invocation per (outer, inner)
//            line, scanning it in order; with inner > 1 neighbouring
//            invocations read neighbouring addresses.

override REVERSE: bool = false;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<f32, WG>;

// The position of the k-th element in scan order.
fn at(k: u32) -> u32 {
    return select(k, params.len - 1u - k, REVERSE);
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.outer {
        return;
    }
    let base = row * params.len;
    let per = (params.len + WG - 1u) / WG;
    let start = min(lid * per, params.len);
    let end = min(start + per, params.len);
    var s = 0.0;
    for (var k = start; k < end; k++) {
        s += x[base + at(k)];
    }
    part[lid] = s;
    workgroupBarrier();
    // Hillis-Steele inclusive scan of the chunk sums.
    for (var off = 1u; off < WG; off *= 2u) {
        let t = select(0.0, part[max(lid, off) - off], lid >= off);
        workgroupBarrier();
        part[lid] += t;
        workgroupBarrier();
    }
    var acc = select(0.0, part[max(lid, 1u) - 1u], lid > 0u);
    for (var k = start; k < end; k++) {
        acc += x[base + at(k)];
        out[base + at(k)] = acc;
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
    var acc = 0.0;
    for (var k = 0u; k < params.len; k++) {
        let i = base + at(k) * params.inner;
        acc += x[i];
        out[i] = acc;
    }
}
