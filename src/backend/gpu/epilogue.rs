//! Matmul epilogues: elementwise work applied by the product kernel itself
//! as it stores each element, instead of by a kernel of its own that reads
//! the product back (cuBLASLt's and CUTLASS's epilogues).
//!
//! A matmul does not dispatch when called: it returns a pending buffer
//! whose expression ([`lazy`](super::lazy)) is a single [`Node::Product`].
//! Elementwise ops on it extend that expression like any other, so
//! `relu(x·Wᵀ + b)` with its dropout, or a backward `dY·W` times the ReLU and
//! dropout masks, becomes one expression over the product, the bias and the
//! masks' inputs. When something needs the buffer, the expression runs as
//! the product kernel of this adapter (register-tiled with subgroups, else
//! workgroup-tiled: the same loaders and body as a plain matmul, the same
//! tile chosen by autotuning) with a generated store: each element's
//! accumulator goes through the expression's function before it is written.
//!
//! The product itself is shared by every expression inlining it (the
//! `Arc<Product>`). If another one still holds it when one runs (a pending
//! `x·W + b` kept for ReLU's backward while `relu(x·W + b)` runs), the kernel
//! also writes the raw product, and those expressions read it from then on
//! as a buffer (they are [`settled`](super::lazy::Expr::settled)): a
//! product is computed once however many expressions use it.

use super::autotune::Choice;
use super::fusion;
use super::lazy::{Expr, Node};
use super::matmul::product_kernel;
use super::pipelines::{GEMM_BODY, GEMM_TILED_BODY, Kernel, MATMUL_LOAD, MATMUL_TILED_LOAD, params};
use super::pool::Pooled;
use super::{Bind, Context};
use crate::backend::MatmulSpec;
use std::fmt::Write;
use std::sync::{Arc, OnceLock};

/// Parameter words an epilogue's expression may use: the immediates' 32
/// less the product's six.
pub(super) const WORDS: usize = 26;
/// Buffers an epilogue's expression may read: WebGPU's minimum of 8
/// storage buffers per stage less the product's operands and their vec4
/// views, the output and the raw product.
pub(super) const LEAVES: usize = 2;

params! {
    /// The immediates of a matmul with an epilogue: the product's, then the
    /// expression's words (as [`fusion::words`] lays them out).
    EpilogueParams {
        m: u32,
        n: u32,
        k: u32,
        a_batch_stride: u32,
        b_batch_stride: u32,
        first_batch: u32,
        w: [u32; WORDS],
    }
}

/// The WGSL declaration [`EpilogueParams`] mirrors.
const PARAMS_WGSL: &str = "struct Params {\n    m: u32,\n    n: u32,\n    k: u32,\n    a_batch_stride: u32,\n    \
                           b_batch_stride: u32,\n    first_batch: u32,\n    w: array<u32, 26>,\n}\n\
                           var<immediate> params: Params;\n";

/// A matrix product not computed yet: its operands (computed), its shape,
/// the kernel tuned for it, and — once a kernel has written it — the
/// product.
pub(crate) struct Product {
    pub a: Arc<Pooled>,
    pub b: Arc<Pooled>,
    pub spec: MatmulSpec,
    pub choice: Choice,
    pub result: OnceLock<Arc<Pooled>>,
}

impl Product {
    /// Elements of the product.
    pub fn len(&self) -> usize {
        self.spec.batch * self.spec.m * self.spec.n
    }
}

/// Records the product of `e` (an expression over an unsettled product
/// `p`, more than the product alone) into `out` through its epilogue, and
/// the raw product into `raw` if given.
pub(super) fn record(
    ctx: &Context,
    e: &Expr,
    p: &Product,
    out: &Arc<Pooled>,
    raw: Option<&Arc<Pooled>>,
) -> crate::Result<()> {
    record_with(ctx, e, p, out, raw, None)
}

/// Records a linear layer's weight and bias gradients (`s` is the product
/// `gᵀ·x`): the product kernel with a column of ones appended to `x`, the
/// bias gradient stored apart from the product's last column.
pub(super) fn record_linear_grads(
    ctx: &Context,
    choice: Choice,
    g: &Arc<Pooled>,
    x: &Arc<Pooled>,
    s: &MatmulSpec,
    dw: &Arc<Pooled>,
    db: &Arc<Pooled>,
) -> crate::Result<()> {
    let p = Product { a: g.clone(), b: x.clone(), spec: *s, choice, result: OnceLock::new() };
    let e = Expr { n: p.len(), dims: None, leaves: Vec::new(), nodes: vec![Node::Product], root: 0, product: None };
    record_with(ctx, &e, &p, dw, None, Some(db))
}

/// [`record`], and with `colsum` the product with a column of ones
/// appended to B, whose column (B's column sums) goes to `colsum`.
fn record_with(
    ctx: &Context,
    e: &Expr,
    p: &Product,
    out: &Arc<Pooled>,
    raw: Option<&Arc<Pooled>>,
    colsum: Option<&Arc<Pooled>>,
) -> crate::Result<()> {
    let s = &p.spec;
    let (dims, strides) = e.layout();
    let words = fusion::words(e, &dims, &strides);
    debug_assert!(words.len() <= WORDS && e.leaves.len() <= LEAVES, "checked by Expr::fits");
    let ones = colsum.is_some();
    let grid_spec = MatmulSpec { n: s.n + ones as usize, ..*s };
    let (subgroups, constants, _) = product_kernel(p.choice, s);
    let grid = p.choice.grid(grid_spec.m, grid_spec.n).2;
    // The subgroup kernel's workgroup size is the prelude's WG; the tiled
    // kernel sizes itself by WM and WN.
    let wg = constants.iter().find(|c| c.0 == "WG").map_or(64, |c| c.1 as u32);
    let mut constants: Vec<(&'static str, f64)> = constants.into_iter().filter(|c| c.0 != "WG").collect();
    constants.push(("ONES_COL", ones as u32 as f64));
    let mut structure = vec![subgroups as u32, raw.is_some() as u32, ones as u32];
    structure.extend(fusion::structure(e, &dims, &strides, false));
    let source = || source(e, subgroups, raw.is_some(), ones);
    let kernel = Kernel::Generated { family: "matmul_epilogue", structure, source: &source, wg, constants: &constants };

    let mut binds = vec![Bind::read(0, &p.a), Bind::read(1, &p.b), Bind::write(2, out)];
    if subgroups {
        binds.extend([Bind::read(3, &p.a), Bind::read(4, &p.b)]);
    }
    if let Some(raw) = raw {
        binds.push(Bind::write(5, raw));
    }
    binds.extend(e.leaves.iter().enumerate().map(|(l, leaf)| Bind::read(6 + l as u32, &leaf.buffer)));
    if let Some(colsum) = colsum {
        binds.push(Bind::write(COLSUM_BINDING, colsum));
    }

    let mut block = EpilogueParams {
        m: s.m as u32,
        n: s.n as u32,
        k: s.k as u32,
        a_batch_stride: s.a_batch_stride as u32,
        b_batch_stride: s.b_batch_stride as u32,
        first_batch: 0,
        w: [0; WORDS],
    };
    block.w[..words.len()].copy_from_slice(&words);
    // A captured step redraws its dropout keys at every replay; they sit
    // after the product's six words.
    let patches = if super::capture::active() {
        let keys = fusion::dropout_keys(e, &words).into_iter().map(|(at, key)| (at + 6, key)).collect();
        super::capture::Patches { keys, ..Default::default() }
    } else {
        Default::default()
    };
    ctx.record_patched(&kernel, &binds, &block, [grid[0], grid[1], s.batch as u32], patches)
}

/// The binding of a linear-gradient kernel's column sums (after the
/// leaves an epilogue may have).
const COLSUM_BINDING: u32 = 6 + LEAVES as u32;

/// The generated part of an epilogue kernel: the parameters and bindings,
/// the expression's function, a store applying it, then the loaders and the
/// body of the product kernel (subgroup or tiled).
pub(super) fn source(e: &Expr, subgroups: bool, raw: bool, ones: bool) -> String {
    debug_assert!(e.nodes.contains(&Node::Product));
    let (dims, strides) = e.layout();
    let word = |k: usize| format!("params.w[{k}]");
    let (index_of, first_scalar) = fusion::leaf_indices(e, &dims, &strides, &word);
    let mut src = String::with_capacity(4096 + GEMM_BODY.len());
    src.push_str(PARAMS_WGSL);
    src.push_str(
        "@group(0) @binding(0) var<storage, read> a: array<f32>;\n\
         @group(0) @binding(1) var<storage, read> b: array<f32>;\n\
         @group(0) @binding(2) var<storage, read_write> dst: array<f32>;\n",
    );
    if subgroups {
        src.push_str(
            "@group(0) @binding(3) var<storage, read> a4: array<vec4<f32>>;\n\
             @group(0) @binding(4) var<storage, read> b4: array<vec4<f32>>;\n",
        );
    }
    if raw {
        src.push_str("@group(0) @binding(5) var<storage, read_write> c: array<f32>;\n");
    }
    if ones {
        let _ = writeln!(src, "@group(0) @binding({COLSUM_BINDING}) var<storage, read_write> colsum: array<f32>;");
    }
    for l in 0..e.leaves.len() {
        let _ = writeln!(src, "@group(0) @binding({}) var<storage, read> in{l}: array<f32>;", 6 + l);
    }
    src.push('\n');
    src.push_str(&fusion::function(e, first_scalar, &word));
    // Element i of the product (batch-major, row-major) is v.
    src.push_str("\nfn epilogue(i: u32, v: f32) {\n");
    if raw {
        src.push_str("    c[i] = v;\n");
    }
    if e.dims.is_some() {
        src.push_str(&fusion::coordinates(dims.len(), &word));
    }
    let args: Vec<String> = index_of.iter().enumerate().map(|(l, at)| format!("in{l}[{at}]")).collect();
    let args = args.iter().map(|a| format!("{a}, ")).collect::<String>();
    let _ = writeln!(src, "    dst[i] = f(i, {args}v);\n}}\n");
    // Column n, past B, is the column of ones a linear layer's gradients
    // append (ONES_COL): its sums are stored apart.
    let ones_store = if ones { " else if col + j == params.n {\n                colsum[batch * params.m + row] = v[j];\n            }" } else { "" };
    if subgroups {
        let _ = write!(
            src,
            "fn store4(batch: u32, row: u32, col: u32, v: vec4<f32>) {{\n\
             \x20   let base = batch * params.m * params.n;\n\
             \x20   if row < params.m {{\n\
             \x20       for (var j = 0u; j < 4u; j++) {{\n\
             \x20           if col + j < params.n {{\n\
             \x20               epilogue(base + row * params.n + col + j, v[j]);\n\
             \x20           }}{ones_store}\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        src.push_str(MATMUL_LOAD);
        src.push('\n');
        src.push_str(GEMM_BODY);
    } else {
        let ones_store = ones_store.replace("col + j", "col").replace("v[j]", "v");
        let _ = write!(
            src,
            "fn store1(batch: u32, row: u32, col: u32, v: f32) {{\n\
             \x20   if row < params.m {{\n\
             \x20       if col < params.n {{\n\
             \x20           epilogue(batch * params.m * params.n + row * params.n + col, v);\n\
             \x20       }}{ones_store}\n\
             \x20   }}\n\
             }}\n"
        );
        src.push_str(MATMUL_TILED_LOAD);
        src.push('\n');
        src.push_str(GEMM_TILED_BODY);
    }
    src
}

#[cfg(test)]
mod tests {
    use super::super::matmul::MatmulParams;
    use super::super::pipelines::ParamsLayout;
    use super::*;

    #[test]
    fn epilogue_params_mirror_the_generated_struct() {
        assert_eq!(WORDS, 26, "PARAMS_WGSL spells the word count out");
        assert_eq!(std::mem::size_of::<EpilogueParams>(), 6 * 4 + WORDS * 4);
        crate::backend::gpu::pipelines::tests::assert_mirrors::<EpilogueParams>(PARAMS_WGSL, "matmul epilogue");
        // The product's words come first, as MatmulParams has them.
        let ours: Vec<&str> = EpilogueParams::FIELDS.iter().map(|f| f.0).take(6).collect();
        let plain: Vec<&str> = MatmulParams::FIELDS.iter().map(|f| f.0).collect();
        assert_eq!(ours, plain);
    }
}
