// Functions the generated elementwise kernels call (see
// src/backend/gpu/fusion.rs, which writes each kernel's bindings, its
// per-element function and its entry point, and prepends this file).
// The math mirrors the CPU reference in src/backend/cpu/mod.rs.

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

fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf(v * 0.70710678));
}

// d gelu(v) / dv.
fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(v * 0.70710678));
    return cdf + v * exp(-0.5 * v * v) * 0.3989423;
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
