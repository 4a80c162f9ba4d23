// The body of the workgroup-tiled product kernel, for adapters without
// subgroup operations (gemm_body.wgsl is used where they exist). It computes
// C = A · B for batch entry wid.z + params.first_batch and reads its
// operands through functions the file it is appended to defines:
//   load_a(batch, row, k) -> f32     A(row, k), 0 outside A
//   load_b(batch, k, col) -> f32     B(k, col), 0 outside B
//   store1(batch, row, col, v)       C(row, col) = v where inside C
//   k_span(batch) -> vec2<u32>       the K range to sum, from a multiple of BK
// matmul_tiled_load.wgsl defines the loaders for stored matrices
// (matmul_tiled.wgsl the store, src/backend/gpu/epilogue.rs stores that
// apply elementwise work), conv.wgsl all of them for the implicit matrices
// of a convolution.
//
// A workgroup computes a BM × BN tile of C, BM = 4·WM and BN = 4·WN: each of
// its WM × WN invocations owns a 4 × 4 block of C in registers (four vec4
// accumulators). The K dimension is walked in steps of BK: the workgroup
// stages BK × BM of A and BK × BN of B in workgroup memory (transposing on
// the way in, so both tiles are k-major whatever the layout), then each
// invocation reads one vec4 of A and one of B per k and does 16 FMAs.
//
// WM, WN, BK are override constants (src/backend/gpu/matmul.rs).

override WM: u32 = 8u;
override WN: u32 = 8u;
override BK: u32 = 16u;

// tile_a[kk * WM + r4] holds A rows 4·r4 .. 4·r4+3 of the tile at k = kk.
var<workgroup> tile_a: array<vec4<f32>, BK * WM>;
// tile_b[kk * WN + c4] holds B columns 4·c4 .. 4·c4+3 of the tile at k = kk.
var<workgroup> tile_b: array<vec4<f32>, BK * WN>;

@compute @workgroup_size(WN, WM)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let batch = wid.z + params.first_batch;
    let ks = k_span(batch);
    let row0 = wid.y * WM * 4u;
    let col0 = wid.x * WN * 4u;
    let threads = WM * WN;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = ks.x; k0 < ks.y; k0 += BK) {
        for (var u = li; u < BK * WM; u += threads) {
            let kk = u / WM;
            let r = row0 + (u % WM) * 4u;
            let k = k0 + kk;
            tile_a[u] = vec4<f32>(load_a(batch, r, k), load_a(batch, r + 1u, k),
                                  load_a(batch, r + 2u, k), load_a(batch, r + 3u, k));
        }
        for (var u = li; u < BK * WN; u += threads) {
            let kk = u / WN;
            let cc = col0 + (u % WN) * 4u;
            let k = k0 + kk;
            tile_b[u] = vec4<f32>(load_b(batch, k, cc), load_b(batch, k, cc + 1u),
                                  load_b(batch, k, cc + 2u), load_b(batch, k, cc + 3u));
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

    let r = row0 + lid.y * 4u;
    let cc = col0 + lid.x * 4u;
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store1(batch, r + i, cc + j, rows[i][j]);
        }
    }
}
