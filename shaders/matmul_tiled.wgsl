// Batched matrix product C[b] = op(A[b]) · op(B[b]), op = optional transpose,
// for adapters without subgroup operations (matmul.wgsl is used where they
// exist): the loaders and the store of the workgroup-tiled kernel whose body
// is gemm_tiled_body.wgsl. Loads are bounds-checked, so any M, N, K works,
// tile multiples or not. The transpose flags are override constants
// (src/backend/gpu/matmul.rs).

override TRANS_A: bool = false;
override TRANS_B: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    // Batch index of workgroup z = 0 (batches over 65535 take several dispatches).
    first_batch: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

fn load_a(batch: u32, row: u32, k: u32) -> f32 {
    if row >= params.m || k >= params.k {
        return 0.0;
    }
    let base = batch * params.a_batch_stride;
    if TRANS_A {
        return a[base + k * params.m + row];
    }
    return a[base + row * params.k + k];
}

fn load_b(batch: u32, k: u32, col: u32) -> f32 {
    if col >= params.n || k >= params.k {
        return 0.0;
    }
    let base = batch * params.b_batch_stride;
    if TRANS_B {
        return b[base + col * params.k + k];
    }
    return b[base + k * params.n + col];
}

fn store1(batch: u32, row: u32, col: u32, v: f32) {
    if row < params.m && col < params.n {
        c[batch * params.m * params.n + row * params.n + col] = v;
    }
}

// The K range batch entry `batch` sums over: all of it.
fn k_span(batch: u32) -> vec2<u32> {
    return vec2<u32>(0u, params.k);
}
