//! Elementwise fusion: chains of elementwise ops run as one generated kernel.
//!
//! On a GPU a small elementwise op costs its dispatch, not its arithmetic
//! (on lavapipe ~40 µs of thread hand-off per dispatch, on a discrete GPU a
//! few µs of launch). So a unary op, or a binary op on two contiguous
//! operands of one size, dispatches nothing when called: it returns a
//! *pending* buffer that holds the expression computing it (an SSA list of
//! ops over buffers already computed, the leaves). An op on a pending input
//! extends its expression instead of reading a buffer. The expression runs
//! — one WGSL kernel, written here from the op list and compiled once per
//! distinct list — when something needs the buffer itself: a kernel that
//! binds it (matmul, reduce, a strided op, ...), a read back, or an
//! expression that would grow past the limits below. A pending result that
//! is dropped unread never runs.
//!
//! Scalar operands travel as immediate data, so `x * 0.5` and `x * 0.25`
//! share a kernel. Equal nodes are merged when expressions combine, so
//! `y + y` does not copy `y`'s expression twice.
//!
//! Correctness rests on buffers being immutable, with two exceptions that
//! write in place (`copy_into` and the optimizer update): before either
//! writes a buffer, every pending expression that reads it is run
//! ([`Context::before_write`](super::Context::before_write)). A pending
//! buffer that is read by more than one consumer is recomputed by each
//! expression that inlines it — at most [`MAX_OPS`] cheap elementwise ops,
//! the trade every fusing compiler makes against a dispatch.

use super::buffer::Pooled;
use super::elementwise::vec4s;
use super::{Context, GpuBuffer};
use crate::Error;
use crate::backend::{BinaryOp, UnaryOp};
use std::fmt::Write;
use std::sync::Arc;

/// Ops one generated kernel may compute per element.
pub(crate) const MAX_OPS: usize = 24;
/// Scalar operands one kernel may take: its immediate data is 128 bytes,
/// one u32 of which is the element count.
const MAX_SCALARS: usize = 31;
/// Buffers one kernel may read (plus the one it writes): the adapter
/// minimum of storage buffers per shader stage is 8.
const MAX_LEAVES: usize = 6;

/// The WGSL functions generated kernels call.
const LIBRARY: &str = include_str!("../../../shaders/elementwise.wgsl");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    /// The element of the leaf buffer with this index.
    Leaf(usize),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
}

/// An elementwise expression over `n` elements of its leaves.
#[derive(Clone)]
pub(crate) struct Expr {
    n: usize,
    leaves: Vec<Arc<Pooled>>,
    /// In dependency order; arguments index earlier nodes.
    nodes: Vec<Node>,
    root: usize,
}

impl Expr {
    fn leaf(n: usize, buffer: Arc<Pooled>) -> Expr {
        Expr { n, leaves: vec![buffer], nodes: vec![Node::Leaf(0)], root: 0 }
    }

    fn ops(&self) -> usize {
        self.nodes.iter().filter(|n| !matches!(n, Node::Leaf(_))).count()
    }

    fn scalars(&self) -> usize {
        self.nodes.iter().map(|n| if let Node::Unary(op, _) = n { scalars(*op).len() } else { 0 }).sum()
    }

    fn fits(&self) -> bool {
        self.ops() <= MAX_OPS && self.scalars() <= MAX_SCALARS && self.leaves.len() <= MAX_LEAVES
    }

    /// Whether the expression reads `buffer`.
    pub fn reads(&self, buffer: &Arc<Pooled>) -> bool {
        self.leaves.iter().any(|l| Arc::ptr_eq(l, buffer))
    }

    /// The index of `node`, appended unless an equal node exists.
    fn intern(&mut self, node: Node) -> usize {
        if let Some(i) = self.nodes.iter().position(|&m| m == node) {
            return i;
        }
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Merges `other` into this expression; returns the index of its root.
    fn absorb(&mut self, other: &Expr) -> usize {
        let mut map = Vec::with_capacity(other.nodes.len());
        for node in &other.nodes {
            let node = match *node {
                Node::Leaf(l) => {
                    let leaf = &other.leaves[l];
                    let index = match self.leaves.iter().position(|m| Arc::ptr_eq(m, leaf)) {
                        Some(i) => i,
                        None => {
                            self.leaves.push(leaf.clone());
                            self.leaves.len() - 1
                        }
                    };
                    Node::Leaf(index)
                }
                Node::Unary(op, a) => Node::Unary(op, map[a]),
                Node::Binary(op, a, b) => Node::Binary(op, map[a], map[b]),
            };
            map.push(self.intern(node));
        }
        map[other.root]
    }

    /// `op(self)`.
    fn unary(mut self, op: UnaryOp) -> Expr {
        self.root = self.intern(Node::Unary(op, self.root));
        self
    }

    /// `op(self, other)`.
    fn binary(mut self, op: BinaryOp, other: &Expr) -> Expr {
        let b = self.absorb(other);
        self.root = self.intern(Node::Binary(op, self.root, b));
        self
    }

    /// The WGSL function `f(x0, x1, ...) -> f32` computing one element, and
    /// the scalar operands it reads from `params.s`.
    fn function(&self) -> (String, Vec<f32>) {
        let name = |i: usize| match self.nodes[i] {
            Node::Leaf(l) => format!("x{l}"),
            _ => format!("t{i}"),
        };
        let args: Vec<String> = (0..self.leaves.len()).map(|l| format!("x{l}: f32")).collect();
        let mut src = format!("fn f({}) -> f32 {{\n", args.join(", "));
        let mut values = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let expr = match *node {
                Node::Leaf(_) => continue,
                Node::Unary(op, a) => {
                    let names: Vec<String> = scalars(op)
                        .iter()
                        .map(|&v| {
                            values.push(v);
                            format!("params.s[{}]", values.len() - 1)
                        })
                        .collect();
                    unary_wgsl(op, &name(a), &names)
                }
                Node::Binary(op, a, b) => binary_wgsl(op, &name(a), &name(b)),
            };
            let _ = writeln!(src, "    let {} = {expr};", name(i));
        }
        let _ = writeln!(src, "    return {};\n}}", name(self.root));
        (src, values)
    }

    /// The whole kernel: four elements per invocation through vec4 views of
    /// the leaves (buffers are padded to whole vec4s), output at binding
    /// `leaves.len()`.
    fn kernel(&self) -> (String, Vec<f32>) {
        let (function, values) = self.function();
        let mut src = String::with_capacity(LIBRARY.len() + 1024);
        src.push_str(LIBRARY);
        src.push_str(
            "\nstruct Params {\n    n4: u32,\n    s: array<f32, 31>,\n}\nvar<immediate> params: Params;\n\
             override WG: u32 = 256u;\n\n",
        );
        let leaves = self.leaves.len();
        for l in 0..leaves {
            let _ = writeln!(src, "@group(0) @binding({l}) var<storage, read> in{l}: array<vec4<f32>>;");
        }
        let _ = writeln!(src, "@group(0) @binding({leaves}) var<storage, read_write> out: array<vec4<f32>>;\n");
        src.push_str(&function);
        let lane = |c: &str| {
            let args: Vec<String> = (0..leaves).map(|l| format!("v{l}.{c}")).collect();
            format!("f({})", args.join(", "))
        };
        let loads: String = (0..leaves).map(|l| format!("        let v{l} = in{l}[i];\n")).collect();
        let _ = write!(
            src,
            "\n@compute @workgroup_size(WG)\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
             \x20       @builtin(local_invocation_index) lid: u32) {{\n\
             \x20   let i = (wid.x + wid.y * nwg.x) * WG + lid;\n\
             \x20   if i < params.n4 {{\n{loads}\
             \x20       out[i] = vec4<f32>({}, {}, {}, {});\n    }}\n}}\n",
            lane("x"),
            lane("y"),
            lane("z"),
            lane("w"),
        );
        (src, values)
    }
}

/// The scalar operands of `op`.
fn scalars(op: UnaryOp) -> Vec<f32> {
    use UnaryOp::*;
    match op {
        AddScalar(s) | MulScalar(s) | PowScalar(s) | MaxScalar(s) | MinScalar(s) | GtScalar(s) => vec![s],
        InRange(lo, hi) => vec![lo, hi],
        Neg | Exp | Log | Sqrt | Abs | Sign | Relu | Sigmoid | Tanh | Gelu | GeluGrad => vec![],
    }
}

/// `op(x)` in WGSL; `s` names its scalar operands. This table and the CPU
/// reference (`backend::cpu`) define the ops.
fn unary_wgsl(op: UnaryOp, x: &str, s: &[String]) -> String {
    use UnaryOp::*;
    match op {
        Neg => format!("-{x}"),
        Exp => format!("exp({x})"),
        Log => format!("log({x})"),
        Sqrt => format!("sqrt({x})"),
        Abs => format!("abs({x})"),
        Sign => format!("sign({x})"),
        Relu => format!("max({x}, 0.0)"),
        Sigmoid => format!("sigmoid({x})"),
        Tanh => format!("tanh_stable({x})"),
        Gelu => format!("gelu({x})"),
        GeluGrad => format!("gelu_grad({x})"),
        AddScalar(_) => format!("{x} + {}", s[0]),
        MulScalar(_) => format!("{x} * {}", s[0]),
        PowScalar(_) => format!("powf({x}, {})", s[0]),
        MaxScalar(_) => format!("max({x}, {})", s[0]),
        MinScalar(_) => format!("min({x}, {})", s[0]),
        GtScalar(_) => format!("select(0.0, 1.0, {x} > {})", s[0]),
        InRange(..) => format!("select(0.0, 1.0, {x} >= {} && {x} <= {})", s[0], s[1]),
    }
}

/// `op(a, b)` in WGSL.
fn binary_wgsl(op: BinaryOp, a: &str, b: &str) -> String {
    match op {
        BinaryOp::Add => format!("{a} + {b}"),
        BinaryOp::Sub => format!("{a} - {b}"),
        BinaryOp::Mul => format!("{a} * {b}"),
        BinaryOp::Div => format!("{a} / {b}"),
        BinaryOp::Max => format!("select({b}, {a}, {a} >= {b})"),
        BinaryOp::Min => format!("select({b}, {a}, {a} <= {b})"),
        BinaryOp::Ge => format!("select(0.0, 1.0, {a} >= {b})"),
        BinaryOp::Eq => format!("select(0.0, 1.0, {a} == {b})"),
    }
}

/// The WGSL of `op` on two strided views with broadcasting: each output
/// element's row-major index is mapped through each input's strides (0 along
/// broadcast axes), after `shape::coalesce` has merged what it can.
pub(crate) fn strided_binary_kernel(op: BinaryOp) -> String {
    let body = format!("fn f(x0: f32, x1: f32) -> f32 {{\n    return {};\n}}\n", binary_wgsl(op, "x0", "x1"));
    format!(
        "struct Params {{
    n: u32,
    rank: u32,
    a_offset: u32,
    b_offset: u32,
    dims: array<u32, 8>,
    a_strides: array<u32, 8>,
    b_strides: array<u32, 8>,
}}
var<immediate> params: Params;
override WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

{body}
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= params.n {{
        return;
    }}
    var rest = i;
    var ia = params.a_offset;
    var ib = params.b_offset;
    for (var d = params.rank; d > 0u; d--) {{
        let dim = params.dims[d - 1u];
        let c = rest % dim;
        rest = rest / dim;
        ia += c * params.a_strides[d - 1u];
        ib += c * params.b_strides[d - 1u];
    }}
    out[i] = f(a[ia], b[ib]);
}}
"
    )
}

/// The expression `x` contributes over its first `n` elements: its pending
/// expression, or the buffer itself as a leaf.
fn operand(x: &GpuBuffer, n: usize) -> Result<Expr, Error> {
    if let Some(mut e) = x.expr() {
        // A contiguous view may cover a prefix of its buffer.
        e.n = n;
        return Ok(e);
    }
    computed(x, n)
}

/// `x`, computed, as a leaf.
fn computed(x: &GpuBuffer, n: usize) -> Result<Expr, Error> {
    match x.get() {
        Ok(buffer) => Ok(Expr::leaf(n, buffer.clone())),
        Err(e) => Err(e.clone()),
    }
}

/// `op(x)` over the first `n` elements of `x`.
pub(crate) fn unary(ctx: &Arc<Context>, op: UnaryOp, x: &GpuBuffer, n: usize) -> GpuBuffer {
    let build = || -> Result<Expr, Error> {
        let e = operand(x, n)?.unary(op);
        if e.fits() { Ok(e) } else { Ok(computed(x, n)?.unary(op)) }
    };
    match build() {
        Ok(e) => finish(ctx, e),
        Err(e) => GpuBuffer::poisoned(e),
    }
}

/// `op(a, b)` over the first `n` elements of two contiguous operands.
pub(crate) fn binary(ctx: &Arc<Context>, op: BinaryOp, a: &GpuBuffer, b: &GpuBuffer, n: usize) -> GpuBuffer {
    let build = || -> Result<Expr, Error> {
        let (mut ea, mut eb) = (operand(a, n)?, operand(b, n)?);
        loop {
            let e = ea.clone().binary(op, &eb);
            if e.fits() {
                return Ok(e);
            }
            // Compute the larger side first; two leaves always fit.
            if ea.ops() >= eb.ops() {
                ea = computed(a, n)?;
            } else {
                eb = computed(b, n)?;
            }
        }
    };
    match build() {
        Ok(e) => finish(ctx, e),
        Err(e) => GpuBuffer::poisoned(e),
    }
}

/// A pending buffer for `e`, or with fusion off, `e` computed now.
fn finish(ctx: &Arc<Context>, e: Expr) -> GpuBuffer {
    if ctx.fusion { GpuBuffer::pending(ctx, e) } else { GpuBuffer::ready(run(ctx, &e)) }
}

/// Dispatches the kernel computing `e` into a new buffer.
pub(crate) fn run(ctx: &Arc<Context>, e: &Expr) -> Result<Arc<Pooled>, Error> {
    if let Some(err) = ctx.lost_error() {
        return Err(err);
    }
    let out = ctx.alloc_pooled("elementwise op", e.n)?;
    let (source, values) = e.kernel();
    let wg = ctx.tuning.elementwise_wg;
    let mut signature: Vec<(u32, bool)> = (0..e.leaves.len() as u32).map(|l| (l, false)).collect();
    signature.push((e.leaves.len() as u32, true));
    let pipeline = ctx.generated_pipeline(source, signature, wg);
    let mut params = vec![vec4s(e.n) as u32];
    params.extend(values.iter().map(|v| v.to_bits()));
    let mut buffers: Vec<(u32, &wgpu::Buffer)> =
        e.leaves.iter().enumerate().map(|(l, p)| (l as u32, &p.buffer)).collect();
    buffers.push((e.leaves.len() as u32, &out.buffer));
    ctx.record(&pipeline, &buffers, &params, ctx.groups_1d(vec4s(e.n), wg));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_nodes_merge_and_scalars_become_parameters() {
        // (x0 * 2 + x0 * 2) written twice over the same leaf: one multiply.
        let mut e = Expr { n: 4, leaves: vec![], nodes: vec![Node::Leaf(0)], root: 0 };
        let m = e.intern(Node::Unary(UnaryOp::MulScalar(2.0), 0));
        let again = e.intern(Node::Unary(UnaryOp::MulScalar(2.0), 0));
        assert_eq!(m, again);
        let other = e.intern(Node::Unary(UnaryOp::MulScalar(3.0), 0));
        assert_ne!(m, other);
        e.root = e.intern(Node::Binary(BinaryOp::Add, m, other));
        assert_eq!(e.ops(), 3);
        assert_eq!(e.scalars(), 2);
        let (src, values) = e.function();
        assert_eq!(values, vec![2.0, 3.0]);
        assert!(src.contains("let t1 = x0 * params.s[0];"), "{src}");
        assert!(src.contains("let t2 = x0 * params.s[1];"), "{src}");
        assert!(src.contains("let t3 = t1 + t2;"), "{src}");
        assert!(src.contains("return t3;"), "{src}");
    }
}
