// Elementwise functions of one input: y[i] = f(x[i]), four elements per
// invocation (buffers are padded to whole vec4s; see buffer.rs).
// OP selects f; the codes are UnaryOp::code() in src/backend/mod.rs.
// The math mirrors the CPU reference in src/backend/cpu.rs.

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    // Number of vec4s.
    n4: u32,
    p0: f32,
    p1: f32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;

// Abramowitz & Stegun 7.1.26, as cpu::erf.
fn erf(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = t * (0.2548296 + t * (-0.28449674 + t * (1.4214137 + t * (-1.4531521 + t * 1.0614054))));
    let r = 1.0 - poly * exp(-v * v);
    return select(r, -r, v < 0.0);
}

fn sigmoid(v: f32) -> f32 {
    // Never exponentiates a positive number.
    if v >= 0.0 {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

fn tanh_stable(v: f32) -> f32 {
    let e = exp(-2.0 * abs(v));
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, v < 0.0);
}

// x^p with the CPU's (powf's) meaning for negative bases and integer p,
// where WGSL's pow is undefined.
fn powf(v: f32, p: f32) -> f32 {
    if p == 0.0 {
        return 1.0;
    }
    if p == round(p) {
        let r = pow(abs(v), p);
        let odd = (i32(p) & 1) != 0;
        if v == 0.0 {
            // 0^p is 0 for p > 0 and +inf for p < 0 (a runtime 1/0, since
            // WGSL rejects an infinite constant).
            return select(0.0, 1.0 / abs(v), p < 0.0);
        }
        return select(r, -r, v < 0.0 && odd);
    }
    return pow(v, p);
}

fn apply(v: f32) -> f32 {
    let p0 = params.p0;
    let p1 = params.p1;
    switch OP {
        case 0u: { return -v; }
        case 1u: { return exp(v); }
        case 2u: { return log(v); }
        case 3u: { return sqrt(v); }
        case 4u: { return abs(v); }
        case 5u: { return sign(v); }
        case 6u: { return max(v, 0.0); }
        case 7u: { return sigmoid(v); }
        case 8u: { return tanh_stable(v); }
        case 9u: { return 0.5 * v * (1.0 + erf(v * 0.70710678)); }
        case 10u: {
            let cdf = 0.5 * (1.0 + erf(v * 0.70710678));
            return cdf + v * exp(-0.5 * v * v) * 0.3989423;
        }
        case 11u: { return v + p0; }
        case 12u: { return v * p0; }
        case 13u: { return powf(v, p0); }
        case 14u: { return max(v, p0); }
        case 15u: { return min(v, p0); }
        case 16u: { return select(0.0, 1.0, v > p0); }
        case 17u: { return select(0.0, 1.0, v >= p0 && v <= p1); }
        default: { return v; }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i < params.n4 {
        let v = x[i];
        y[i] = vec4<f32>(apply(v.x), apply(v.y), apply(v.z), apply(v.w));
    }
}
