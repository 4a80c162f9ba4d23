// The operand loaders of matmul.wgsl's register-tiled kernel (for
// stored matrices): shared by matmul.wgsl, which adds the plain store, and
// the matmul kernels with a generated epilogue (src/backend/gpu/epilogue.rs).
// They read `params.m/n/k`, the batch strides, and bindings a, b, a4, b4.

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ALIGNED_A: bool = false;
override ALIGNED_B: bool = false;
// Whether K is not a multiple of 4, so the last step reaches past K.
override K_TAIL: bool = true;
// Whether B has a column of ones appended (column n): the product's column
// n is then the row sums of A (a linear layer's bias gradient, computed
// with its weight gradient; src/backend/gpu/epilogue.rs).
override ONES_COL: bool = false;

fn at_a(base: u32, row: u32, k: u32) -> u32 {
    return select(base + row * params.k + k, base + k * params.m + row, TRANS_A);
}

fn at_b(base: u32, k: u32, col: u32) -> u32 {
    return select(base + k * params.n + col, base + col * params.k + k, TRANS_B);
}

// k, clamped into the matrix when the last step can reach past K.
fn clamp_k(k: u32) -> u32 {
    return select(k, min(k, params.k - 1u), K_TAIL);
}

// v, or 0 where k is past K.
fn zero_past_k1(v: f32, k: u32) -> f32 {
    return select(v, select(0.0, v, k < params.k), K_TAIL);
}

fn zero_past_k(v: vec4<f32>, k: u32) -> vec4<f32> {
    if !K_TAIL {
        return v;
    }
    return select(vec4<f32>(0.0), v, vec4<u32>(k, k + 1u, k + 2u, k + 3u) < vec4<u32>(params.k));
}

// A(row, k) for a row clamped into the matrix; 0 past K.
fn load_a(base: u32, row: u32, k: u32) -> f32 {
    return zero_past_k1(a[at_a(base, min(row, params.m - 1u), clamp_k(k))], k);
}

// B(k, col) for a column clamped into the matrix; 0 past K.
fn load_b(base: u32, k: u32, col: u32) -> f32 {
    return zero_past_k1(b[at_b(base, clamp_k(k), min(col, params.n - 1u))], k);
}

// One owner lane's A fragment: [i] = A(row + i, k..k+4).
fn a_fragment(batch: u32, row: u32, k: u32) -> array<vec4<f32>, 2> {
    let base = batch * params.a_batch_stride;
    if ALIGNED_A && !TRANS_A {
        // K is a multiple of 4: no K tail.
        return array<vec4<f32>, 2>(a4[at_a(base, min(row, params.m - 1u), k) / 4u],
                                   a4[at_a(base, min(row + 1u, params.m - 1u), k) / 4u]);
    }
    if ALIGNED_A && TRANS_A {
        // A is stored k-major and M is a multiple of 4: rows row and row+1
        // (row even) of one k sit in one vec4.
        let r = min(row, params.m - 2u);
        let half = r % 4u == 2u;
        let p0 = a4[at_a(base, r, clamp_k(k)) / 4u];
        let p1 = a4[at_a(base, r, clamp_k(k + 1u)) / 4u];
        let p2 = a4[at_a(base, r, clamp_k(k + 2u)) / 4u];
        let p3 = a4[at_a(base, r, clamp_k(k + 3u)) / 4u];
        let q0 = select(p0.xy, p0.zw, half);
        let q1 = select(p1.xy, p1.zw, half);
        let q2 = select(p2.xy, p2.zw, half);
        let q3 = select(p3.xy, p3.zw, half);
        return array<vec4<f32>, 2>(zero_past_k(vec4<f32>(q0.x, q1.x, q2.x, q3.x), k),
                                   zero_past_k(vec4<f32>(q0.y, q1.y, q2.y, q3.y), k));
    }
    return array<vec4<f32>, 2>(
        vec4<f32>(load_a(base, row, k), load_a(base, row, k + 1u), load_a(base, row, k + 2u), load_a(base, row, k + 3u)),
        vec4<f32>(load_a(base, row + 1u, k), load_a(base, row + 1u, k + 1u),
                  load_a(base, row + 1u, k + 2u), load_a(base, row + 1u, k + 3u)));
}

// What b_fragment needs to know of its columns: the first one.
alias BColumns = u32;

fn b_columns(batch: u32, col: u32) -> BColumns {
    return col;
}

// The B fragment of 4 columns: [q] = B(k+q, col..col+4), with ONES_COL
// column n all ones (0 past K).
fn b_fragment(batch: u32, k: u32, col: BColumns) -> array<vec4<f32>, 4> {
    var f = b_stored(batch, k, col);
    if ONES_COL && col + 4u > params.n && col <= params.n {
        let j = params.n - col;
        for (var q = 0u; q < 4u; q++) {
            f[q][j] = select(0.0, 1.0, k + q < params.k);
        }
    }
    return f;
}

// The B fragment of 4 stored columns (garbage for columns past N).
fn b_stored(batch: u32, k: u32, col: BColumns) -> array<vec4<f32>, 4> {
    let base = batch * params.b_batch_stride;
    if ALIGNED_B && !TRANS_B {
        // N is a multiple of 4, so col..col+4 lies wholly inside or outside;
        // K is not necessarily, so clamp k.
        let cc = min(col, params.n - 4u);
        var out: array<vec4<f32>, 4>;
        for (var q = 0u; q < 4u; q++) {
            let row = b4[at_b(base, clamp_k(k + q), cc) / 4u];
            out[q] = select(row, select(vec4<f32>(0.0), row, k + q < params.k), K_TAIL);
        }
        return out;
    }
    if ALIGNED_B && TRANS_B {
        // B is stored column-major and K is a multiple of 4: load 4 k-values
        // per column, then transpose.
        let last = params.n - 1u;
        let c0 = b4[at_b(base, k, min(col, last)) / 4u];
        let c1 = b4[at_b(base, k, min(col + 1u, last)) / 4u];
        let c2 = b4[at_b(base, k, min(col + 2u, last)) / 4u];
        let c3 = b4[at_b(base, k, min(col + 3u, last)) / 4u];
        return array<vec4<f32>, 4>(vec4<f32>(c0.x, c1.x, c2.x, c3.x), vec4<f32>(c0.y, c1.y, c2.y, c3.y),
                                   vec4<f32>(c0.z, c1.z, c2.z, c3.z), vec4<f32>(c0.w, c1.w, c2.w, c3.w));
    }
    var out: array<vec4<f32>, 4>;
    for (var q = 0u; q < 4u; q++) {
        out[q] = vec4<f32>(load_b(base, k + q, col), load_b(base, k + q, col + 1u),
                           load_b(base, k + q, col + 2u), load_b(base, k + q, col + 3u));
    }
    return out;
}

// The K range batch entry `batch` sums over: all of it.
fn k_span(batch: u32) -> vec2<u32> {
    return vec2<u32>(0u, params.k);
}
