// The operand loaders of matmul_tiled.wgsl's workgroup-tiled kernel (for
// stored matrices): shared by matmul_tiled.wgsl, which adds the plain store,
// and the matmul kernels with a generated epilogue (src/backend/gpu/epilogue.rs).
// They read `params.m/n/k`, the batch strides, and bindings a and b.

override TRANS_A: bool = false;
override TRANS_B: bool = false;
// Whether B has a column of ones appended (column n): the product's column
// n is then the row sums of A (a linear layer's bias gradient, computed
// with its weight gradient; src/backend/gpu/epilogue.rs).
override ONES_COL: bool = false;

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

// B(k, col), 0 outside B; with ONES_COL column n is all ones.
fn load_b(batch: u32, k: u32, col: u32) -> f32 {
    if ONES_COL && col == params.n && k < params.k {
        return 1.0;
    }
    if col >= params.n || k >= params.k {
        return 0.0;
    }
    let base = batch * params.b_batch_stride;
    if TRANS_B {
        return b[base + col * params.k + k];
    }
    return b[base + k * params.n + col];
}

// The K range batch entry `batch` sums over: all of it.
fn k_span(batch: u32) -> vec2<u32> {
    return vec2<u32>(0u, params.k);
}
