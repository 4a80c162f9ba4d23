// Strided copies: every shape op that moves elements (permute, broadcast_to,
// narrow, cat, and their backwards) is one of these kernels.
//   gather_strided:  out[i] = x[offset + Σ c_d·strides[d]]   (read a view)
//   scatter_strided: out[offset + Σ c_d·strides[d]] = x[i]  (write a view)
// where c is the row-major coordinate of i in `dims`. A view of up to
// MAX_RANK axes (after coalescing) travels as immediate data; the `_words`
// entry points read a view of any rank from a storage buffer laid out as
// [rank, offset, dims…, strides…].

struct Params {
    n: u32,
    rank: u32,
    offset: u32,
    _pad: u32,
    dims: array<u32, 8>,
    strides: array<u32, 8>,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> words: array<u32>;

fn view_index(i: u32) -> u32 {
    var rest = i;
    var at = params.offset;
    for (var d = params.rank; d > 0u; d--) {
        let dim = params.dims[d - 1u];
        at += (rest % dim) * params.strides[d - 1u];
        rest = rest / dim;
    }
    return at;
}

fn view_index_words(i: u32) -> u32 {
    let rank = words[0];
    var rest = i;
    var at = words[1];
    for (var d = rank; d > 0u; d--) {
        let dim = words[1u + d];
        at += (rest % dim) * words[1u + rank + d];
        rest = rest / dim;
    }
    return at;
}

@compute @workgroup_size(WG)
fn gather_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i < params.n {
        out[i] = x[view_index(i)];
    }
}

@compute @workgroup_size(WG)
fn scatter_strided(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i < params.n {
        out[view_index(i)] = x[i];
    }
}

@compute @workgroup_size(WG)
fn gather_strided_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i < params.n {
        out[i] = x[view_index_words(i)];
    }
}

@compute @workgroup_size(WG)
fn scatter_strided_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i < params.n {
        out[view_index_words(i)] = x[i];
    }
}
