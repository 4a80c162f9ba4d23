// The plain store of matmul.wgsl's kernel where N is a multiple of 4 (and
// the product not small): the four columns of a store lie wholly inside a
// row of C or wholly past it, and are written as one vec4. (C is declared
// as vec4s only here: a write to one component of a vector may write the
// whole vector, so two invocations must never share one.)

@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;

fn store4(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if row < params.m && col < params.n {
        c[(batch * params.m * params.n + row * params.n + col) / 4u] = v;
    }
}
