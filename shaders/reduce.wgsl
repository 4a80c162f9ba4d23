// Reductions along one axis of a [outer, len, inner] view into [outer, inner].
// OP: 0 sum, 1 max, 2 argmax, 3 min, 4 argmin (indices of the first
// extreme, written as f32). WG is a power of two.
//   rows:    inner == 1, rows longer than 32. One workgroup per row; each
//            invocation folds a strided slice of the row, then a tree in
//            workgroup memory combines them, so rows of any length work.
//   columns: inner > 1, or short rows. One invocation per output; with
//            inner > 1 neighbouring invocations read neighbouring addresses.
//   argmax_hits: how many short rows have their argmax equal to their
//            label (a classifier's correct predictions), in one workgroup.

override OP: u32 = 0u;
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// argmax_hits's labels, one per row, and with ACCUMULATE the running
// count it adds its own to.
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> base: array<f32>;
override ACCUMULATE: bool = false;

var<workgroup> part_value: array<f32, WG>;
var<workgroup> part_index: array<u32, WG>;

const NONE: u32 = 0xffffffffu;

struct Acc {
    value: f32,
    index: u32, // NONE while nothing has been folded in
}

fn fold(acc: Acc, v: f32, i: u32) -> Acc {
    if OP == 0u || OP == 5u {
        return Acc(acc.value + v, i);
    }
    if acc.index == NONE {
        return Acc(v, i);
    }
    // Max, min and their indices: NaN wins (the first NaN, as PyTorch),
    // then the greater (smaller) value, then on ties the lower index. NaN is
    // tested by bits: comparisons alone may not see it.
    if is_nan(acc.value) {
        if is_nan(v) && i < acc.index {
            return Acc(v, i);
        }
        return acc;
    }
    let better = select((v > acc.value), (v < acc.value), (OP >= 3u));
    if is_nan(v) || better || (v == acc.value && i < acc.index) {
        return Acc(v, i);
    }
    return acc;
}

fn finish(acc: Acc) -> f32 {
    if OP == 5u {
        // The mean: the sum over the length (0 / 0 = NaN for an empty axis,
        // spelled out: drivers may assume finite math).
        return select(acc.value / f32(params.len), nan(), params.len == 0u);
    }
    return select(acc.value, f32(acc.index), OP == 2u || OP == 4u);
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.outer {
        return;
    }
    let base = row * params.len;
    var acc = Acc(0.0, NONE);
    for (var l = lid; l < params.len; l += WG) {
        acc = fold(acc, x[base + l], l);
    }
    part_value[lid] = acc.value;
    part_index[lid] = acc.index;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s && part_index[lid + s] != NONE {
            let folded = fold(Acc(part_value[lid], part_index[lid]), part_value[lid + s], part_index[lid + s]);
            part_value[lid] = folded.value;
            part_index[lid] = folded.index;
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[row] = finish(Acc(part_value[0], part_index[0]));
    }
}

@compute @workgroup_size(WG)
fn columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if t >= params.outer * params.inner {
        return;
    }
    let o = t / params.inner;
    let i = t % params.inner;
    var acc = Acc(0.0, NONE);
    for (var l = 0u; l < params.len; l++) {
        acc = fold(acc, x[(o * params.len + l) * params.inner + i], l);
    }
    out[t] = finish(acc);
}

// One workgroup, OP = 2: invocation lid takes rows lid, lid + WG, ...,
// folds each into its argmax as `columns` does, and counts the rows whose
// label equals it (a NaN label, tested by bits, equals nothing); a tree in
// workgroup memory adds the counts. out[0] is the count, as an f32 (with
// ACCUMULATE, base[0] plus it, rounded once as an add kernel would): the
// argmax, the comparison and the sum, one dispatch instead of three.
@compute @workgroup_size(WG)
fn argmax_hits(@builtin(local_invocation_index) lid: u32) {
    var hits = 0u;
    for (var row = lid; row < params.outer; row += WG) {
        var acc = Acc(0.0, NONE);
        for (var l = 0u; l < params.len; l++) {
            acc = fold(acc, x[row * params.len + l], l);
        }
        let label = labels[row];
        if !is_nan(label) && f32(acc.index) == label {
            hits += 1u;
        }
    }
    part_index[lid] = hits;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            part_index[lid] += part_index[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let count = f32(part_index[0]);
        if ACCUMULATE {
            out[0] = base[0] + count;
        } else {
            out[0] = count;
        }
    }
}
