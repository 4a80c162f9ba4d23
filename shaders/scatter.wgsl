// The adjoint of gather (index_view.wgsl), into a zeroed output:
//   out[o, l, i] += x[o, j, i]  for every j with idx(o, j, i) = l
// One invocation per element of x, so the cost is proportional to the
// number of indices (an embedding's backward touches only the rows it
// used), not rows × indices. WGSL has no float atomics: the add is a
// compare-and-swap loop on the f32's bits (exact IEEE adds, NaN and
// infinity included, as the comparison is of bits). Repeated indices add in
// the order the device runs them, so sums of three or more terms can differ
// in the last bit from run to run, as PyTorch's CUDA index_add_ does.
// A bad index is reported and skipped.

@group(0) @binding(2) var<storage, read_write> out: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn scatter_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
        return;
    }
    let v = x[e];
    let t = (o * params.len + l) * params.inner + i;
    var old = atomicLoad(&out[t]);
    loop {
        let r = atomicCompareExchangeWeak(&out[t], old, bitcast<u32>(bitcast<f32>(old) + v));
        if r.exchanged {
            break;
        }
        old = r.old_value;
    }
}
