// A stable argsort along one axis of a [outer, len, inner] view: out holds,
// for each (outer, inner) line, the indices (as f32) of its elements in
// sorted order, ascending or, with DESCENDING, descending. Elements are
// ordered by a u32 key (key below): -∞ … -0 = +0 … +∞ < NaN, as PyTorch
// sorts; equal keys keep their order (the lower index first).
//
// One invocation per element computes its rank — the number of elements of
// its line that sort before it — and writes its index there: O(len) work
// per element, no synchronisation, every line and element in parallel.

override DESCENDING: bool = false;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

// An order-preserving u32 for v: negative floats reversed, positives above
// them, both zeros equal, every NaN last.
fn key(v: f32) -> u32 {
    if is_nan(v) {
        return 0xffffffffu;
    }
    var bits = bitcast<u32>(v);
    if (bits & 0x7fffffffu) == 0u {
        bits = 0u;
    }
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

// Whether key a (at index i) sorts before key b (at index j).
fn before(a: u32, i: u32, b: u32, j: u32) -> bool {
    if a == b {
        return i < j;
    }
    return select((a < b), (a > b), DESCENDING);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if e >= params.outer * params.len * params.inner {
        return;
    }
    let o = e / (params.len * params.inner);
    let l = (e / params.inner) % params.len;
    let i = e % params.inner;
    let base = o * params.len * params.inner + i;
    let mine = key(x[base + l * params.inner]);
    var rank = 0u;
    for (var j = 0u; j < params.len; j++) {
        rank += u32(before(key(x[base + j * params.inner]), j, mine, l));
    }
    out[base + rank * params.inner] = f32(l);
}
