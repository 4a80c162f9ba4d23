// Strided copies: every shape op that moves elements (permute, broadcast_to,
// narrow, cat, and their backwards) is one of these two kernels.
//   gather_strided: out[i] = x[offset + Σ c_d·strides[d]]   (read a view)
//   scatter_strided: out[offset + Σ c_d·strides[d]] = x[i]  (write a view)
// where c is the row-major coordinate of i in `dims`.

override WG: u32 = 256u;

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

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

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
