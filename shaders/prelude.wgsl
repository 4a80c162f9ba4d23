// Prepended to every kernel, generated ones included
// (src/backend/gpu/pipelines.rs): the workgroup size, invocation ids, and
// IEEE-754 classification by bits.
//
// WGSL lets compilers assume floats are finite, and some do (lavapipe
// folds `x - x` to 0 and lets min/max/exp drop NaN). Tests on the integer
// bits of a float cannot be folded away that way, so kernels test for NaN
// and infinity with these and select the IEEE result explicitly.

// Invocations per workgroup; the host sets it per adapter.
override WG: u32 = 64u;

// Quiet NaN and +infinity bits. Private variables, so that WGSL does not
// fold them into constants (a non-finite constant is rejected).
var<private> NAN_BITS: u32 = 0x7fc00000u;
var<private> INF_BITS: u32 = 0x7f800000u;

// The invocation's index in a 1-D launch spread over x and y
// (groups beyond the 65535 one dimension allows continue in y).
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The index of a workgroup in a launch spread over x and y.
fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn is_inf(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) == 0x7f800000u;
}

// NaN or ±infinity.
fn non_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

fn is_zero(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) == 0u;
}

fn sign_bit(v: f32) -> u32 {
    return bitcast<u32>(v) & 0x80000000u;
}

fn nan() -> f32 {
    return bitcast<f32>(NAN_BITS);
}

// +infinity, or -infinity when `sign` has the sign bit set.
fn inf(sign: u32) -> f32 {
    return bitcast<f32>(INF_BITS | (sign & 0x80000000u));
}
