// 2-D convolution as an implicit GEMM: the operand loaders of the product
// kernels (gemm_body.wgsl with subgroups, gemm_tiled_body.wgsl without) for
// the matrices a convolution and its gradients multiply, read straight from
// the tensors: no im2col matrix is ever written. The register tiles of the
// product kernel then reuse each loaded input value for a whole tile of
// output channels, as a GEMM reuses a column of B.
//
// NCHW input x [n, c_in, h, w], weight [c_out, cg, kh, kw] (cg = c_in / groups,
// mg = c_out / groups), output y [n, c_out, oh, ow]. Per image and group:
//   MODE 0, y:   Y[mg, oh·ow]   = W[mg, cg·kh·kw] · P[cg·kh·kw, oh·ow]
//   MODE 1, dx:  dX[cg, h·w]    = Wᵀ[cg, mg·kh·kw] · D[mg·kh·kw, h·w]
//   MODE 2, dw:  dW[mg, cg·kh·kw] = Σ_images dY[mg, oh·ow] · Pᵀ[oh·ow, cg·kh·kw]
// where P holds the input patches (0 in the padding) and D the output
// gradient each input pixel's taps reach (0 where a tap falls between
// strides). Batch entry z is image·groups + group for MODES 0 and 1; for
// MODE 2 it is split·groups + group, each split summing one chunk of the
// images' pixels (split-K: the sum over the batch is long and the weight
// small, so one workgroup per weight tile would leave the GPU idle) into
// its own slice, added by a reduction afterwards (src/backend/gpu/conv.rs).
//
// The product kernels store C(row, col) at z·M·N + row·N + col, which is
// y's, dx's and the split's layout as they are.

struct Params {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    ph: u32,
    pw: u32,
    groups: u32,
    oh: u32,
    ow: u32,
    // The product: C is m × n_cols, summing over k.
    m: u32,
    n_cols: u32,
    k: u32,
    // Batch index of workgroup z = 0 (batches over 65535 take several dispatches).
    first_batch: u32,
    // MODE 2: the length of each split's share of k, a multiple of 64.
    k_chunk: u32,
    // 1/ow, 1/(oh·ow) and 1/w, rounded to f32, for FAST_DIV.
    inv_ow: f32,
    inv_pixels: f32,
    inv_w: f32,
}
var<immediate> params: Params;

// MODES 0 and 2: a = weight / dy, b = x. MODE 1: a = weight, b = dy.
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

fn store4(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if row < params.m {
        for (var j = 0u; j < 4u; j++) {
            if col + j < params.n_cols {
                c[(batch * params.m + row) * params.n_cols + col + j] = v[j];
            }
        }
    }
}

fn store1(batch: u32, row: u32, col: u32, v: f32) {
    if row < params.m && col < params.n_cols {
        c[(batch * params.m + row) * params.n_cols + col] = v;
    }
}
