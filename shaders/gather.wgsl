// Gather along an axis (index_view.wgsl):
//   out[o, j, i] = x[o, idx(o, j, i), i]
// A bad index is reported and reads as NaN.

@group(0) @binding(2) var<storage, read_write> out: array<f32>;

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
