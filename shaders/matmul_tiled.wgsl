// Batched matrix product C[b] = op(A[b]) · op(B[b]), op = optional transpose,
// for adapters without subgroup operations (matmul.wgsl is used where they
// exist): the parameters, bindings and store of the workgroup-tiled kernel
// whose body is gemm_tiled_body.wgsl; its loaders are matmul_tiled_load.wgsl
// (src/backend/gpu/epilogue.rs generates stores that apply elementwise work). Loads are bounds-checked, so any M, N, K works,
// tile multiples or not. The transpose flags are override constants
// (src/backend/gpu/matmul.rs).

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

fn store1(batch: u32, row: u32, col: u32, v: f32) {
    if row < params.m && col < params.n {
        c[batch * params.m * params.n + row * params.n + col] = v;
    }
}
