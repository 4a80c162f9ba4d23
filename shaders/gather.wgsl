// Gather along an axis and its adjoint, on a [outer, len, inner] input.
// Indices are integer-valued f32, read through a strided [outer, m, inner]
// view (index_select broadcasts one index vector over outer and inner).
//   gather:      out[o, j, i] = x[o, idx(o, j, i), i]
//   scatter_add: out[o, l, i] = Σ_j [idx(o, j, i) = l] · x[o, j, i]
// An index that is not an integer in 0..len is reported (check.wgsl); gather
// writes NaN in its place and scatter_add skips it.
// scatter_add has one invocation per output element and loops over j, so it
// needs no float atomics (WGSL has none) and is deterministic.

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    m: u32,
    idx_offset: u32,
    idx_strides: array<u32, 3>,
    check_slot: u32,
    check_id: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> errors: array<atomic<u32>>;

fn index_at(o: u32, j: u32, i: u32) -> u32 {
    let v = ids[params.idx_offset + o * params.idx_strides[0] + j * params.idx_strides[1] + i * params.idx_strides[2]];
    let l = index_below(v, params.len);
    if l == NONE {
        report(v, params.len);
    }
    return l;
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if e >= params.outer * params.m * params.inner {
        return;
    }
    let o = e / (params.m * params.inner);
    let j = (e / params.inner) % params.m;
    let i = e % params.inner;
    let l = index_at(o, j, i);
    if l == NONE {
        out[e] = nan();
    } else {
        out[e] = x[(o * params.len + l) * params.inner + i];
    }
}

@compute @workgroup_size(WG)
fn scatter_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if params.len == 0u {
        // No output to loop for, but the indices still need checking (every
        // one is out of range): here the launch covers them instead.
        if e < params.outer * params.m * params.inner {
            index_at(e / (params.m * params.inner), (e / params.inner) % params.m, e % params.inner);
        }
        return;
    }
    if e >= params.outer * params.len * params.inner {
        return;
    }
    let o = e / (params.len * params.inner);
    let l = (e / params.inner) % params.len;
    let i = e % params.inner;
    var acc = 0.0;
    for (var j = 0u; j < params.m; j++) {
        if index_at(o, j, i) == l {
            acc += x[(o * params.m + j) * params.inner + i];
        }
    }
    out[e] = acc;
}
