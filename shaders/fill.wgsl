// out[i] = value, for zeros/ones/full, a vec4 per invocation.

struct Params {
    n4: u32,
    value: f32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i < params.n4 {
        out[i] = vec4<f32>(params.value);
    }
}
