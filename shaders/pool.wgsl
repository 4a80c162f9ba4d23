// 2-D pooling of `planes` independent h × w images into oh × ow, and its
// gradient. KIND: 0 max, 1 average counting the padding, 2 average over the
// input positions only, 3 adaptive average (PyTorch's windows; kernel,
// stride and padding unused).
//   forward:  one invocation per output element.
//   backward: one invocation per input element, summing the gradients of
//             the windows that cover it, so no two invocations write one
//             element (no atomics). A max window's pick is recomputed from
//             x, as the forward made it: the last NaN, else the first
//             maximum (PyTorch's rule), so no indices are stored.

override KIND: u32 = 0u;

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    oh: u32,
    ow: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
// forward: unused (bound to x); backward: the output's gradient.
@group(0) @binding(1) var<storage, read> gy: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// The input range [start, end) window o covers along one axis, clipped.
fn span(o: u32, len: u32, outs: u32, k: u32, s: u32, p: u32) -> vec2<u32> {
    if KIND == 3u {
        return vec2<u32>((o * len) / outs, ((o + 1u) * len + outs - 1u) / outs);
    }
    let start = o * s;
    return vec2<u32>(max(start, p) - p, min(max(start + k, p) - p, len));
}

fn rows(oy: u32) -> vec2<u32> {
    return span(oy, params.h, params.oh, params.kh, params.sh, params.ph);
}

fn cols(ox: u32) -> vec2<u32> {
    return span(ox, params.w, params.ow, params.kw, params.sw, params.pw);
}

fn divisor(oy: u32, ox: u32) -> f32 {
    if KIND == 1u {
        let y1 = min(oy * params.sh + params.kh, params.h + 2u * params.ph);
        let x1 = min(ox * params.sw + params.kw, params.w + 2u * params.pw);
        return f32((y1 - oy * params.sh) * (x1 - ox * params.sw));
    }
    let r = rows(oy);
    let c = cols(ox);
    return f32((r.y - r.x) * (c.y - c.x));
}

// The plane-relative index of window (oy, ox)'s pick, or h·w if it is empty.
fn max_at(base: u32, oy: u32, ox: u32) -> u32 {
    let r = rows(oy);
    let c = cols(ox);
    var best = params.h * params.w;
    var best_v = 0.0;
    for (var y = r.x; y < r.y; y++) {
        for (var xx = c.x; xx < c.y; xx++) {
            let i = y * params.w + xx;
            let v = x[base + i];
            if best == params.h * params.w || v > best_v || is_nan(v) {
                best = i;
                best_v = v;
            }
        }
    }
    return best;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let id = linear_id(wid, nwg, lid);
    let per_plane = params.oh * params.ow;
    if id >= params.planes * per_plane {
        return;
    }
    let plane = id / per_plane;
    let oy = (id % per_plane) / params.ow;
    let ox = id % params.ow;
    let base = plane * params.h * params.w;
    if KIND == 0u {
        let i = max_at(base, oy, ox);
        out[id] = select(x[base + min(i, params.h * params.w - 1u)], -bitcast<f32>(INF_BITS), i == params.h * params.w);
        return;
    }
    let r = rows(oy);
    let c = cols(ox);
    var sum = 0.0;
    for (var y = r.x; y < r.y; y++) {
        for (var xx = c.x; xx < c.y; xx++) {
            sum += x[base + y * params.w + xx];
        }
    }
    out[id] = sum / divisor(oy, ox);
}

// The outputs whose windows can cover input position i along one axis, as
// a range [first, end) to test one by one (exact for regular windows,
// one wider on each side for adaptive ones).
fn covering(i: u32, len: u32, outs: u32, k: u32, s: u32, p: u32) -> vec2<u32> {
    if KIND == 3u {
        let lo = (i * outs) / len;
        return vec2<u32>(max(lo, 1u) - 1u, min(((i + 1u) * outs + len - 1u) / len + 1u, outs));
    }
    // o·s ≤ i + p < o·s + k.
    let q = i + p;
    let first = select(0u, (q + 1u - k + s - 1u) / s, q + 1u > k);
    return vec2<u32>(first, min(q / s + 1u, outs));
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let id = linear_id(wid, nwg, lid);
    let per_plane = params.h * params.w;
    if id >= params.planes * per_plane {
        return;
    }
    let plane = id / per_plane;
    let i = id % per_plane;
    let iy = i / params.w;
    let ix = i % params.w;
    let base = plane * per_plane;
    let gbase = plane * params.oh * params.ow;
    let ys = covering(iy, params.h, params.oh, params.kh, params.sh, params.ph);
    let xs = covering(ix, params.w, params.ow, params.kw, params.sw, params.pw);
    var sum = 0.0;
    for (var oy = ys.x; oy < ys.y; oy++) {
        let r = rows(oy);
        if iy < r.x || iy >= r.y {
            continue;
        }
        for (var ox = xs.x; ox < xs.y; ox++) {
            let c = cols(ox);
            if ix < c.x || ix >= c.y {
                continue;
            }
            let g = gy[gbase + oy * params.ow + ox];
            if KIND == 0u {
                if max_at(base, oy, ox) == i {
                    sum += g;
                }
            } else {
                sum += g / divisor(oy, ox);
            }
        }
    }
    out[id] = sum;
}
