// The plain store of matmul.wgsl's kernel, element by element: for any N.

@group(0) @binding(2) var<storage, read_write> c: array<f32>;

fn store4(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    let base = batch * params.m * params.n;
    if row < params.m {
        for (var j = 0u; j < 4u; j++) {
            if col + j < params.n {
                c[base + row * params.n + col + j] = v[j];
            }
        }
    }
}
