// An index view shared by gather.wgsl and scatter.wgsl: a [outer, len, inner]
// tensor indexed along its middle axis by integer-valued f32 indices, read
// through a strided [outer, m, inner] view (index_select broadcasts one index
// vector over outer and inner). An index that is not an integer in 0..len is
// reported (check.wgsl). The including file declares binding 2, the output.

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
@group(0) @binding(3) var<storage, read_write> errors: array<atomic<u32>>;

// The index at (o, j, i) of the view, or NONE (reported) if it is not one.
fn index_at(o: u32, j: u32, i: u32) -> u32 {
    let v = ids[params.idx_offset + o * params.idx_strides[0] + j * params.idx_strides[1] + i * params.idx_strides[2]];
    let l = index_below(v, params.len);
    if l == NONE {
        report(v, params.len);
    }
    return l;
}
