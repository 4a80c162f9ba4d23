// Inverted dropout: out[i] = x[i] · (keep(i) ? scale : 0), where keep(i) is a
// pure function of the call's key and i (a dropped NaN or infinity stays
// visible as NaN, as in PyTorch). mix32 and the key schedule are the
// CPU's (src/rng.rs) bit for bit, so one seed drops the same elements on
// both devices. Four elements per invocation (buffers are padded to vec4s).

struct Params {
    n4: u32,
    threshold: u32,
    key0: u32,
    key1: u32,
    scale: f32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;

// Chris Wellons' lowbias32.
fn mix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// Whether element e survives.
fn keeps(e: u32) -> bool {
    return mix32(mix32(e ^ params.key0) ^ params.key1) >= params.threshold;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if i >= params.n4 {
        return;
    }
    let e = 4u * i;
    let keep = vec4<bool>(keeps(e), keeps(e + 1u), keeps(e + 2u), keeps(e + 3u));
    out[i] = x[i] * select(vec4<f32>(0.0), vec4<f32>(params.scale), keep);
}
