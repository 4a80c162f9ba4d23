// Elementwise functions of two inputs with NumPy broadcasting:
// out[i] = f(a[ia(i)], b[ib(i)]), where ia and ib map the output's row-major
// index through each input's strides (0 along broadcast axes).
// OP is BinaryOp in src/backend/mod.rs. `contiguous` handles the common case
// of two unbroadcast, contiguous inputs four elements at a time, through
// vec4 views of the buffers (which are padded to whole vec4s).

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    n: u32,
    rank: u32,
    a_offset: u32,
    b_offset: u32,
    dims: array<u32, 8>,
    a_strides: array<u32, 8>,
    b_strides: array<u32, 8>,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;

fn apply(x: f32, y: f32) -> f32 {
    switch OP {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return select(y, x, x >= y); }
        case 5u: { return select(y, x, x <= y); }
        case 6u: { return select(0.0, 1.0, x >= y); }
        case 7u: { return select(0.0, 1.0, x == y); }
        default: { return x; }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= params.n {
        return;
    }
    var rest = i;
    var ia = params.a_offset;
    var ib = params.b_offset;
    for (var d = params.rank; d > 0u; d--) {
        let dim = params.dims[d - 1u];
        let c = rest % dim;
        rest = rest / dim;
        ia += c * params.a_strides[d - 1u];
        ib += c * params.b_strides[d - 1u];
    }
    out[i] = apply(a[ia], b[ib]);
}

// params.n counts vec4s here.
@compute @workgroup_size(WG)
fn contiguous(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= params.n {
        return;
    }
    let x = a4[i];
    let y = b4[i];
    out4[i] = vec4<f32>(apply(x.x, y.x), apply(x.y, y.y), apply(x.z, y.z), apply(x.w, y.w));
}
