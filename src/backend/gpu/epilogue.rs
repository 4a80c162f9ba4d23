//! Matmul and convolution epilogues: elementwise work applied by the
//! product kernel itself as it stores each element, instead of by a kernel
//! of its own that reads the product back (cuBLASLt's and CUTLASS's
//! epilogues).
//!
//! A matmul (or a convolution's forward product, an implicit GEMM on the
//! same kernel bodies) does not dispatch when called: it returns a pending buffer
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
//! product is computed once however many expressions use it (twice at
//! most if two threads run two of them at the same moment: both results
//! are right).
//!
//! Epilogues are on by default (`GpuOptions::epilogues`). Each epilogue
//! kernel compiles a whole product kernel; the product body stores its tile
//! by a loop over rows, so the epilogue's code appears twice in it, not 32
//! times (25–60 ms a pipeline on lavapipe with a warm Mesa shader cache,
//! where the unrolled stores took 0.12–0.44 s).

use super::autotune::Choice;
use super::conv::{self, ConvParams};
use super::fusion::{self, Words};
use super::lazy::{Expr, Node, WORDS};
use super::matmul::{MatmulParams, product_kernel, stores_vec4};
use super::pipelines::{CONV_LOAD, GEMM_BODY, GEMM_TILED_BODY, Kernel, MATMUL_LOAD, MATMUL_TILED_LOAD};
use super::pool::Pooled;
use super::{Bind, Context};
use crate::backend::{ConvSpec, MatmulSpec};
use std::fmt::Write;
use std::sync::{Arc, OnceLock};

/// Buffers an epilogue's expression may read: WebGPU's minimum of 8
/// storage buffers per stage less the product's operands and their vec4
/// views, the output and the raw product.
pub(super) const LEAVES: usize = 2;

/// The product an expression may end in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ProductOp {
    /// A (batched) matrix product with the kernel tuned for it.
    Matmul { spec: MatmulSpec, choice: Choice },
    /// A convolution's forward product (`conv.wgsl`, MODE 0; A is the
    /// weight, B the input) with the kernel tuned for it.
    Conv { spec: ConvSpec, choice: Choice },
}

/// A product not computed yet: its operands (computed), what it is, and —
/// once a kernel has written it — the product.
pub(crate) struct Product {
    pub a: Arc<Pooled>,
    pub b: Arc<Pooled>,
    pub op: ProductOp,
    pub result: OnceLock<Arc<Pooled>>,
}

impl Product {
    /// Elements of the product.
    pub fn len(&self) -> usize {
        match &self.op {
            ProductOp::Matmul { spec, .. } => spec.batch * spec.m * spec.n,
            ProductOp::Conv { spec, .. } => spec.output_len(),
        }
    }

    /// Parameter words its epilogue may use: the immediates' 32 less the
    /// product's own (6 for a matmul, 18 for a convolution).
    pub fn words(&self) -> usize {
        WORDS - self.base_words()
    }

    /// The op it is, as profiles name it.
    pub fn op_name(&self) -> &'static str {
        match self.op {
            ProductOp::Matmul { .. } => "matmul",
            ProductOp::Conv { .. } => "conv2d",
        }
    }

    fn base_words(&self) -> usize {
        match self.op {
            ProductOp::Matmul { .. } => std::mem::size_of::<MatmulParams>() / 4,
            ProductOp::Conv { .. } => std::mem::size_of::<ConvParams>() / 4,
        }
    }

    /// Records the plain product into `out`.
    pub fn record_plain(&self, ctx: &Arc<Context>, out: &Arc<Pooled>) -> crate::Result<()> {
        match &self.op {
            ProductOp::Matmul { spec, choice } => {
                super::matmul::record_product(ctx, *choice, &self.a, &self.b, out, spec)
            }
            ProductOp::Conv { spec, choice } => {
                conv::record(ctx, spec, conv::Mode::Forward, *choice, &self.a, &self.b, out, 0)
            }
        }
    }
}

/// Records the product of `e` (an expression over an unsettled product
/// `p`, more than the product alone) into `out` through its epilogue, and
/// the raw product into `raw` if given.
pub(super) fn record(
    ctx: &Arc<Context>,
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
    ctx: &Arc<Context>,
    choice: Choice,
    g: &Arc<Pooled>,
    x: &Arc<Pooled>,
    s: &MatmulSpec,
    dw: &Arc<Pooled>,
    db: &Arc<Pooled>,
) -> crate::Result<()> {
    let op = ProductOp::Matmul { spec: *s, choice };
    let p = Product { a: g.clone(), b: x.clone(), op, result: OnceLock::new() };
    let e = Expr { n: p.len(), dims: None, leaves: Vec::new(), nodes: vec![Node::Product], root: 0, product: None };
    record_with(ctx, &e, &p, dw, None, Some(db))
}

/// How a product kernel is launched, and the pieces of its source an
/// epilogue kernel reuses.
struct Launch {
    subgroups: bool,
    /// Whether its loaders also read A and B as vec4s (bindings 3 and 4).
    vec4_views: bool,
    wg: u32,
    constants: Vec<(&'static str, f64)>,
    groups: [u32; 3],
    /// The product's parameter words.
    base: Vec<u32>,
    /// The WGSL file whose `struct Params` the product's words mirror.
    params_of: &'static str,
    /// The loaders of the product kernel (and the body after them).
    loaders: &'static str,
    /// WGSL: the index of C(row, COL) of batch entry `batch`, and the
    /// number of columns.
    index: &'static str,
    cols: &'static str,
    /// Whether every store writes four whole columns of a row (the
    /// subgroup matmul, rows of a multiple of 4 columns, a product past
    /// the small cut: `matmul::stores_vec4`), so the outputs are vec4s.
    vec4_stores: bool,
}

fn launch(p: &Product, ones: bool) -> Launch {
    match &p.op {
        ProductOp::Matmul { spec: s, choice } => {
            let (subgroups, constants, _) = product_kernel(*choice, s);
            let grid = choice.grid(s.m, s.n + ones as usize).2;
            let (wg, mut constants) = split_wg(constants);
            constants.push(("ONES_COL", ones as u32 as f64));
            let base = MatmulParams {
                m: s.m as u32,
                n: s.n as u32,
                k: s.k as u32,
                a_batch_stride: s.a_batch_stride as u32,
                b_batch_stride: s.b_batch_stride as u32,
                first_batch: 0,
            };
            Launch {
                subgroups,
                vec4_views: subgroups,
                wg,
                constants,
                groups: [grid[0], grid[1], s.batch as u32],
                base: bytemuck::cast_slice(&[base]).to_vec(),
                params_of: include_str!("../../../shaders/matmul.wgsl"),
                loaders: if subgroups { MATMUL_LOAD } else { MATMUL_TILED_LOAD },
                index: "batch * params.m * params.n + row * params.n + COL",
                cols: "params.n",
                vec4_stores: stores_vec4(*choice, s),
            }
        }
        ProductOp::Conv { spec, choice } => {
            let c = conv::launch(spec, conv::Mode::Forward, *choice, 0);
            let (wg, constants) = split_wg(c.constants);
            Launch {
                subgroups: c.subgroups,
                vec4_views: false,
                wg,
                constants,
                groups: [c.grid[0], c.grid[1], c.batches as u32],
                base: bytemuck::cast_slice(&[c.params]).to_vec(),
                params_of: include_str!("../../../shaders/conv.wgsl"),
                loaders: CONV_LOAD,
                index: "(batch * params.m + row) * params.n_cols + COL",
                cols: "params.n_cols",
                vec4_stores: false,
            }
        }
    }
}

/// The subgroup kernel's workgroup size is the prelude's `WG` (the
/// generated kernel's own); the tiled kernel sizes itself by WM and WN.
fn split_wg(constants: Vec<(&'static str, f64)>) -> (u32, Vec<(&'static str, f64)>) {
    let wg = constants.iter().find(|c| c.0 == "WG").map_or(64, |c| c.1 as u32);
    (wg, constants.into_iter().filter(|c| c.0 != "WG").collect())
}

/// [`record`], and with `colsum` (matmuls only) the product with a column
/// of ones appended to B, whose column (A's row sums) goes to `colsum`.
fn record_with(
    ctx: &Arc<Context>,
    e: &Expr,
    p: &Product,
    out: &Arc<Pooled>,
    raw: Option<&Arc<Pooled>>,
    colsum: Option<&Arc<Pooled>>,
) -> crate::Result<()> {
    let (dims, strides) = e.layout();
    let words = fusion::words(e, &dims, &strides);
    debug_assert!(words.len() <= p.words() && e.leaves.len() <= LEAVES, "checked by Expr::fits");
    let ones = colsum.is_some();
    let l = launch(p, ones);
    let family = match p.op {
        ProductOp::Matmul { .. } => "matmul_epilogue",
        ProductOp::Conv { .. } => "conv_epilogue",
    };
    let mut structure = vec![l.subgroups as u32, raw.is_some() as u32, ones as u32, l.vec4_stores as u32];
    structure.extend(fusion::structure(e, &dims, &strides, false));
    let source = || source(e, &l, raw.is_some(), ones);
    let kernel = Kernel::Generated { family, structure, source: &source, wg: l.wg, constants: &l.constants };

    let mut binds = vec![Bind::read(0, &p.a), Bind::read(1, &p.b), Bind::write(2, out)];
    if l.vec4_views {
        binds.extend([Bind::read(3, &p.a), Bind::read(4, &p.b)]);
    }
    if let Some(raw) = raw {
        binds.push(Bind::write(5, raw));
    }
    binds.extend(e.leaves.iter().enumerate().map(|(l, leaf)| Bind::read(6 + l as u32, &leaf.buffer)));
    if let Some(colsum) = colsum {
        binds.push(Bind::write(COLSUM_BINDING, colsum));
    }

    let mut block = Words::default();
    block.w[..l.base.len()].copy_from_slice(&l.base);
    block.w[l.base.len()..][..words.len()].copy_from_slice(&words);
    // A captured step redraws its dropout keys at every replay; they sit
    // after the product's words.
    let patches = if super::capture::active() {
        let keys = fusion::dropout_keys(e, &words).into_iter().map(|(at, key)| (at + l.base.len(), key)).collect();
        super::capture::Patches { keys, ..Default::default() }
    } else {
        Default::default()
    };
    ctx.record_patched(&kernel, &binds, &block, l.groups, patches)?;
    // The raw product depends on the operands' checks only, not on those of
    // the leaves the kernel also read. (A captured step's replay taints it
    // with the leaves' too: a check that fires there may reach readers of
    // the raw product it would not reach eagerly.)
    if let Some(raw) = raw {
        raw.taint.clear();
        raw.taint.extend_from(&p.a.taint);
        raw.taint.extend_from(&p.b.taint);
    }
    Ok(())
}

/// The binding of a linear-gradient kernel's column sums (after the
/// leaves an epilogue may have).
const COLSUM_BINDING: u32 = 6 + LEAVES as u32;

/// `file`'s `struct Params` and its declaration, with `words` parameter
/// words appended as `words` (an epilogue's expression's).
fn params_with_words(file: &str, words: usize) -> String {
    const DECLARED: &str = "var<immediate> params: Params;";
    let start = file.find("struct Params {").expect("the product's file declares its Params");
    let end = file[start..].find(DECLARED).expect("and the immediates") + start;
    let body = file[start..end].trim_end();
    let body = body.strip_suffix('}').expect("the struct ends the block").trim_end();
    format!(
        "{body}
    words: array<u32, {words}>,
}}
{DECLARED}
"
    )
}

/// The generated part of an epilogue kernel: the parameters and bindings,
/// the expression's function, a store applying it, then the loaders and the
/// body of the product kernel.
fn source(e: &Expr, l: &Launch, raw: bool, ones: bool) -> String {
    debug_assert!(e.nodes.contains(&Node::Product));
    let (dims, strides) = e.layout();
    let word = |k: usize| format!("params.words[{k}]");
    let (index_of, first_scalar) = fusion::leaf_indices(e, &dims, &strides, &word);
    // The outputs are declared as vec4s only where every store writes whole
    // ones (`Launch::vec4_stores`): a write to one component of a vector
    // may write the whole vector, so two invocations must never share one.
    let out_type = if l.vec4_stores { "array<vec4<f32>>" } else { "array<f32>" };
    let mut src = String::with_capacity(4096 + GEMM_BODY.len());
    src.push_str(&params_with_words(l.params_of, WORDS - l.base.len()));
    let _ = write!(
        src,
        "@group(0) @binding(0) var<storage, read> a: array<f32>;\n\
         @group(0) @binding(1) var<storage, read> b: array<f32>;\n\
         @group(0) @binding(2) var<storage, read_write> dst: {out_type};\n"
    );
    if l.vec4_views {
        src.push_str(
            "@group(0) @binding(3) var<storage, read> a4: array<vec4<f32>>;\n\
             @group(0) @binding(4) var<storage, read> b4: array<vec4<f32>>;\n",
        );
    }
    if raw {
        let _ = writeln!(src, "@group(0) @binding(5) var<storage, read_write> c: {out_type};");
    }
    for l in 0..e.leaves.len() {
        let _ = writeln!(src, "@group(0) @binding({}) var<storage, read> in{l}: array<f32>;", 6 + l);
    }
    if ones {
        let _ = writeln!(src, "@group(0) @binding({COLSUM_BINDING}) var<storage, read_write> colsum: array<f32>;");
    }
    src.push('\n');
    src.push_str(&fusion::function(e, first_scalar, &word));
    // The expression at element i of the product (its row-major index),
    // whose product value is v.
    src.push_str("\nfn value(i: u32, v: f32) -> f32 {\n");
    if e.dims.is_some() {
        src.push_str(&fusion::coordinates(dims.len(), &word));
    }
    let args: String = index_of.iter().enumerate().map(|(l, at)| format!("in{l}[{at}], ")).collect();
    let _ = writeln!(src, "    return f(i, {args}v);\n}}\n");
    let raw_store = |at: &str| if raw { format!("    c[{at}] = v;\n") } else { String::new() };
    if l.vec4_stores {
        // Elements i..i+4, i a multiple of 4.
        let _ = writeln!(
            src,
            "fn epilogue4(i: u32, v: vec4<f32>) {{\n{}    dst[i / 4u] = vec4<f32>(value(i, v.x), value(i + 1u, v.y), \
             value(i + 2u, v.z), value(i + 3u, v.w));\n}}\n",
            raw_store("i / 4u")
        );
    } else {
        let _ = writeln!(src, "fn epilogue(i: u32, v: f32) {{\n{}    dst[i] = value(i, v);\n}}\n", raw_store("i"));
    }
    let (index, cols) = (l.index, l.cols);
    // Column n, past B, is the column of ones a linear layer's gradients
    // append (ONES_COL): its sums are stored apart.
    let ones_store = |col: &str, v: &str, pad: &str| {
        if ones {
            format!(" else if {col} == {cols} {{\n{pad}    colsum[batch * params.m + row] = {v};\n{pad}}}")
        } else {
            String::new()
        }
    };
    if l.vec4_stores {
        // The four columns are wholly inside the row or wholly past it (the
        // ones column's sum is then their first).
        let _ = write!(
            src,
            "fn store4(batch: u32, row: u32, col: u32, v: vec4<f32>) {{\n\
             \x20   if row >= params.m {{\n        return;\n    }}\n\
             \x20   if col < {cols} {{\n\
             \x20       epilogue4({}, v);\n\
             \x20   }}{}\n\
             }}\n",
            index.replace("COL", "col"),
            ones_store("col", "v.x", "    ")
        );
    } else if l.subgroups {
        let index = index.replace("COL", "col + j");
        let _ = write!(
            src,
            "fn store4(batch: u32, row: u32, col: u32, v: vec4<f32>) {{\n\
             \x20   if row >= params.m {{\n        return;\n    }}\n\
             \x20   for (var j = 0u; j < 4u; j++) {{\n\
             \x20       if col + j < {cols} {{\n\
             \x20           epilogue({index}, v[j]);\n\
             \x20       }}{}\n\
             \x20   }}\n\
             }}\n",
            ones_store("col + j", "v[j]", "        ")
        );
    } else {
        let _ = write!(
            src,
            "fn store1(batch: u32, row: u32, col: u32, v: f32) {{\n\
             \x20   if row >= params.m {{\n        return;\n    }}\n\
             \x20   if col < {cols} {{\n\
             \x20       epilogue({}, v);\n\
             \x20   }}{}\n\
             }}\n",
            index.replace("COL", "col"),
            ones_store("col", "v", "    ")
        );
    }
    src.push_str(l.loaders);
    src.push('\n');
    src.push_str(if l.subgroups { GEMM_BODY } else { GEMM_TILED_BODY });
    src
}

#[cfg(test)]
mod tests {
    use super::super::pipelines::tests::wgsl_params;
    use super::super::pipelines::{ParamsLayout, Shader};
    use super::*;

    /// An epilogue's immediates are the product's own parameters, then the
    /// expression's words, 32 in all.
    #[test]
    fn epilogue_params_extend_the_products() {
        for (file, fields, size) in [
            (include_str!("../../../shaders/matmul.wgsl"), MatmulParams::FIELDS, std::mem::size_of::<MatmulParams>()),
            (include_str!("../../../shaders/conv.wgsl"), ConvParams::FIELDS, std::mem::size_of::<ConvParams>()),
        ] {
            let extended = params_with_words(file, WORDS - size / 4);
            let (got, total) = wgsl_params(&extended);
            let mut want: Vec<(String, usize)> = fields.iter().map(|&(n, o)| (n.to_string(), o)).collect();
            want.push(("words".into(), size));
            assert_eq!(got, want);
            assert_eq!(total, 4 * WORDS);
        }
        // The files' own Params are the plain products' (checked elsewhere).
        assert!(Shader::Matmul.source().contains("struct Params"));
    }
}
