// Batched matrix product C[b] = op(A[b]) · op(B[b]), op = optional transpose,
// for adapters without subgroup operations (matmul.wgsl is used where they
// exist).
//
// A workgroup computes a BM × BN tile of C, BM = 4·WM and BN = 4·WN: each of
// its WM × WN invocations owns a 4 × 4 block of C in registers (four vec4
// accumulators). The K dimension is walked in steps of BK: the workgroup
// stages BK × BM of A and BK × BN of B in workgroup memory (transposing on
// the way in, so both tiles are k-major whatever the flags), then each
// invocation reads one vec4 of A and one of B per k and does 16 FMAs.
// Loads are bounds-checked, so any M, N, K works, tile multiples or not.
//
// WM, WN, BK are override constants (src/backend/gpu/matmul.rs).

override WM: u32 = 8u;
override WN: u32 = 8u;
override BK: u32 = 16u;
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

// tile_a[kk * WM + r4] holds A rows 4·r4 .. 4·r4+3 of the tile at k = kk.
var<workgroup> tile_a: array<vec4<f32>, BK * WM>;
// tile_b[kk * WN + c4] holds B columns 4·c4 .. 4·c4+3 of the tile at k = kk.
var<workgroup> tile_b: array<vec4<f32>, BK * WN>;

fn load_a(base: u32, row: u32, k: u32) -> f32 {
    if row >= params.m || k >= params.k {
        return 0.0;
    }
    if TRANS_A {
        return a[base + k * params.m + row];
    }
    return a[base + row * params.k + k];
}

fn load_b(base: u32, k: u32, col: u32) -> f32 {
    if col >= params.n || k >= params.k {
        return 0.0;
    }
    if TRANS_B {
        return b[base + col * params.k + k];
    }
    return b[base + k * params.n + col];
}

@compute @workgroup_size(WN, WM)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let batch = wid.z + params.first_batch;
    let row0 = wid.y * WM * 4u;
    let col0 = wid.x * WN * 4u;
    let a_base = batch * params.a_batch_stride;
    let b_base = batch * params.b_batch_stride;
    let threads = WM * WN;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        for (var u = li; u < BK * WM; u += threads) {
            let kk = u / WM;
            let r = row0 + (u % WM) * 4u;
            let k = k0 + kk;
            tile_a[u] = vec4<f32>(load_a(a_base, r, k), load_a(a_base, r + 1u, k),
                                  load_a(a_base, r + 2u, k), load_a(a_base, r + 3u, k));
        }
        for (var u = li; u < BK * WN; u += threads) {
            let kk = u / WN;
            let cc = col0 + (u % WN) * 4u;
            let k = k0 + kk;
            tile_b[u] = vec4<f32>(load_b(b_base, k, cc), load_b(b_base, k, cc + 1u),
                                  load_b(b_base, k, cc + 2u), load_b(b_base, k, cc + 3u));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let av = tile_a[kk * WM + lid.y];
            let bv = tile_b[kk * WN + lid.x];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        workgroupBarrier();
    }

    let c_base = batch * params.m * params.n;
    let r = row0 + lid.y * 4u;
    let cc = col0 + lid.x * 4u;
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        if r + i < params.m {
            for (var j = 0u; j < 4u; j++) {
                if cc + j < params.n {
                    c[c_base + (r + i) * params.n + cc + j] = rows[i][j];
                }
            }
        }
    }
}
