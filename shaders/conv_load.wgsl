// The operand loaders of conv.wgsl's implicit GEMM (see conv.wgsl for the
// matrices): shared by conv.wgsl, which adds the plain store, and the
// convolutions with a generated epilogue (src/backend/gpu/epilogue.rs).
// They read the convolution's `params` and bindings a and b.

// The kernel's shape, strides and dilations are override constants, so
// the divisions that split an index into its parts are by constants
// (multiplies and shifts); a pipeline is built per distinct shape.
override MODE: u32 = 0u;
override KH: u32 = 3u;
override KW: u32 = 3u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override DH: u32 = 1u;
override DW: u32 = 1u;
// Whether every index divided by a run-time size (a pixel by the output
// width, a batch position by the pixels per image, an input pixel by the
// input width) is below 2^22, so that a float reciprocal divides exactly
// after one correction step (integer division by a value the compiler does
// not know costs tens of cycles per lane on a CPU-side driver).
override FAST_DIV: bool = true;

// (x / d, x % d) for a run-time d whose reciprocal is `inv`.
fn divmod(x: u32, d: u32, inv: f32) -> vec2<u32> {
    if !FAST_DIV {
        return vec2<u32>(x / d, x % d);
    }
    // The estimate is off by at most one for x < 2^22: correct it once.
    var q = u32(f32(x) * inv);
    var r = i32(x) - i32(q * d);
    if r < 0 {
        q -= 1u;
        r += i32(d);
    } else if r >= i32(d) {
        q += 1u;
        r -= i32(d);
    }
    return vec2<u32>(q, u32(r));
}

fn cg() -> u32 {
    return params.c_in / params.groups;
}

fn mg() -> u32 {
    return params.c_out / params.groups;
}

// x at (channel plane `plane`, row iy, column ix) of image `img`, 0 outside.
fn x_at(img: u32, plane: u32, iy: i32, ix: i32) -> f32 {
    if iy < 0 || ix < 0 || iy >= i32(params.h) || ix >= i32(params.w) {
        return 0.0;
    }
    return b[((img * params.c_in + plane) * params.h + u32(iy)) * params.w + u32(ix)];
}

// A tap (channel, i, j) of a patch index k = (channel·kh + i)·kw + j.
fn tap(k: u32) -> vec3<u32> {
    let ij = k % (KH * KW);
    return vec3<u32>(k / (KH * KW), ij / KW, ij % KW);
}

// The top-left input position (row, column) of output pixel p's window.
fn window(p: u32) -> vec2<i32> {
    let yx = divmod(p, params.ow, params.inv_ow);
    return vec2<i32>(i32(yx.x * SH) - i32(params.ph), i32(yx.y * SW) - i32(params.pw));
}

// A(row, k), 0 outside A.
fn load_a(batch: u32, row: u32, k: u32) -> f32 {
    if row >= params.m || k >= params.k {
        return 0.0;
    }
    let g = batch % params.groups;
    if MODE == 0u {
        return a[(g * mg() + row) * params.k + k];
    }
    if MODE == 1u {
        // Wᵀ: row = input channel, k = (output channel, i, j).
        return a[((g * mg() + k / (KH * KW)) * cg() + row) * (KH * KW) + k % (KH * KW)];
    }
    // dY: row = output channel, k = (image, pixel).
    let pixels = params.oh * params.ow;
    let ip = divmod(k, pixels, params.inv_pixels);
    return a[(ip.x * params.c_out + g * mg() + row) * pixels + ip.y];
}

// dY(image, output channel, ty / sh, tx / sw) for the input pixel at
// (ty, tx) + the padding - the tap offset, where the strides divide; 0
// where they do not or the position is outside dY.
fn dy_at(img: u32, channel: u32, ty: i32, tx: i32) -> f32 {
    let uy = u32(max(ty, 0));
    let ux = u32(max(tx, 0));
    if ty < 0 || tx < 0 || uy % SH != 0u || ux % SW != 0u || uy / SH >= params.oh || ux / SW >= params.ow {
        return 0.0;
    }
    return b[((img * params.c_out + channel) * params.oh + uy / SH) * params.ow + ux / SW];
}

// B(k, col) given the decomposed k-side and column-side indices: shared by
// load_b and b_fragment, which decomposes each once per fragment.
//   MODE 0: kd = tap of k, cd = (window row, window column) of column col
//   MODE 1: kd = (output channel, i, j), cd = input (row, column) of col
//   MODE 2: kd = (image, window row, window column), cd = tap of col
fn b_value(batch: u32, kd: vec3<i32>, cd: vec3<i32>) -> f32 {
    let g = batch % params.groups;
    if MODE == 0u {
        let img = batch / params.groups;
        return x_at(img, g * cg() + u32(kd.x), cd.x + kd.y * i32(DH), cd.y + kd.z * i32(DW));
    }
    if MODE == 1u {
        let img = batch / params.groups;
        let ty = cd.x + i32(params.ph) - kd.y * i32(DH);
        let tx = cd.y + i32(params.pw) - kd.z * i32(DW);
        return dy_at(img, g * mg() + u32(kd.x), ty, tx);
    }
    return x_at(u32(kd.x), g * cg() + u32(cd.x), kd.y + cd.y * i32(DH), kd.z + cd.z * i32(DW));
}

// The k-side decomposition b_value takes.
fn k_side(k: u32) -> vec3<i32> {
    if MODE == 2u {
        let ip = divmod(k, params.oh * params.ow, params.inv_pixels);
        let wy = window(ip.y);
        return vec3<i32>(i32(ip.x), wy.x, wy.y);
    }
    return vec3<i32>(tap(k));
}

// The column-side decomposition b_value takes.
fn col_side(col: u32) -> vec3<i32> {
    if MODE == 0u {
        return vec3<i32>(window(col), 0);
    }
    if MODE == 1u {
        let yx = divmod(col, params.w, params.inv_w);
        return vec3<i32>(i32(yx.x), i32(yx.y), 0);
    }
    return vec3<i32>(tap(col));
}

// B(k, col), 0 outside B.
fn load_b(batch: u32, k: u32, col: u32) -> f32 {
    if col >= params.n_cols || k >= params.k {
        return 0.0;
    }
    return b_value(batch, k_side(k), col_side(col));
}

// [i] = A(row + i, k..k+4).
fn a_fragment(batch: u32, row: u32, k: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(
        vec4<f32>(load_a(batch, row, k), load_a(batch, row, k + 1u), load_a(batch, row, k + 2u), load_a(batch, row, k + 3u)),
        vec4<f32>(load_a(batch, row + 1u, k), load_a(batch, row + 1u, k + 1u),
                  load_a(batch, row + 1u, k + 2u), load_a(batch, row + 1u, k + 3u)));
}

// The decomposed columns col..col+4 (clamped into B: their results are
// never stored), computed once per invocation rather than once per step.
struct BColumns {
    c0: vec3<i32>,
    c1: vec3<i32>,
    c2: vec3<i32>,
    c3: vec3<i32>,
}

fn b_columns(batch: u32, col: u32) -> BColumns {
    let last = params.n_cols - 1u;
    return BColumns(col_side(min(col, last)), col_side(min(col + 1u, last)), col_side(min(col + 2u, last)),
                    col_side(min(col + 3u, last)));
}

// [q] = B(k + q, col..col+4); only k needs a bounds check.
fn b_fragment(batch: u32, k: u32, cols: BColumns) -> array<vec4<f32>, 4> {
    var out: array<vec4<f32>, 4>;
    for (var q = 0u; q < 4u; q++) {
        let kq = k + q;
        let kd = k_side(min(kq, params.k - 1u));
        let v = vec4<f32>(b_value(batch, kd, cols.c0), b_value(batch, kd, cols.c1), b_value(batch, kd, cols.c2),
                          b_value(batch, kd, cols.c3));
        out[q] = select(vec4<f32>(0.0), v, kq < params.k);
    }
    return out;
}

// The K range batch entry `batch` sums over: its split's chunk in MODE 2.
fn k_span(batch: u32) -> vec2<u32> {
    if MODE == 2u {
        let split = batch / params.groups;
        return vec2<u32>(split * params.k_chunk, min(params.k, (split + 1u) * params.k_chunk));
    }
    return vec2<u32>(0u, params.k);
}
