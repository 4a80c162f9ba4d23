// The LSTM cell's gate arithmetic, fused (src/backend/gpu/rnn.rs): one
// invocation per (row, hidden unit), reading its four gates.
//   forward:  hc = [h | c], c = σ(f)·c_prev + σ(i)·tanh(g), h = σ(o)·tanh(c)
//   backward: the gates' gradient and c_prev's from ghc = [dh | dc]; the
//             h half of d hc_prev is zero (h_prev reaches the cell through
//             the gates, whose matmul carries its gradient).
// Activations are elementwise.wgsl's, which keep NaN and the limits at ±∞.

struct Params {
    batch: u32,
    hidden: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> gates: array<f32>;
@group(0) @binding(1) var<storage, read> hc_prev: array<f32>;
@group(0) @binding(2) var<storage, read_write> hc: array<f32>;
@group(0) @binding(3) var<storage, read> ghc: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgates: array<f32>;
@group(0) @binding(5) var<storage, read_write> dhc: array<f32>;

struct Cell {
    i: f32,
    f: f32,
    g: f32,
    o: f32,
    c_prev: f32,
}

fn cell(b: u32, j: u32) -> Cell {
    let h = params.hidden;
    let at = b * 4u * h + j;
    return Cell(op_sigmoid(gates[at]), op_sigmoid(gates[at + h]), op_tanh(gates[at + 2u * h]),
                op_sigmoid(gates[at + 3u * h]), hc_prev[b * 2u * h + h + j]);
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if e >= params.batch * params.hidden {
        return;
    }
    let b = e / params.hidden;
    let j = e % params.hidden;
    let s = cell(b, j);
    let c = s.f * s.c_prev + s.i * s.g;
    let out = b * 2u * params.hidden + j;
    hc[out] = s.o * op_tanh(c);
    hc[out + params.hidden] = c;
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if e >= params.batch * params.hidden {
        return;
    }
    let h = params.hidden;
    let b = e / h;
    let j = e % h;
    let s = cell(b, j);
    let tc = op_tanh(s.f * s.c_prev + s.i * s.g);
    let row = b * 2u * h + j;
    let dh = ghc[row];
    let dc = ghc[row + h] + dh * s.o * (1.0 - tc * tc);
    let at = b * 4u * h + j;
    dgates[at] = dc * s.g * s.i * (1.0 - s.i);
    dgates[at + h] = dc * s.c_prev * s.f * (1.0 - s.f);
    dgates[at + 2u * h] = dc * s.i * (1.0 - s.g * s.g);
    dgates[at + 3u * h] = dh * tc * s.o * (1.0 - s.o);
    dhc[row] = 0.0;
    dhc[row + h] = dc * s.f;
}
