//! Elementwise fusion: chains of elementwise ops run as one generated kernel.
//!
//! On a GPU a small elementwise op costs its dispatch, not its arithmetic
//! (on lavapipe ~40 µs of thread hand-off per dispatch, on a discrete GPU a
//! few µs of launch). So a unary or binary op dispatches nothing when
//! called: it returns a *pending* buffer that holds the expression computing
//! it (an SSA list of ops over buffers already computed, the leaves). An op
//! on a contiguous pending input extends its expression instead of reading
//! a buffer. The expression runs — one WGSL kernel, written here from the
//! op list and compiled once per distinct list — when something needs the
//! buffer itself: a kernel that binds it (matmul, reduce, a copy, ...), a
//! read back, [`synchronize`](super::GpuDevice::synchronize), or an
//! expression that would grow past the limits below. A pending result that
//! is dropped unread never runs.
//!
//! Broadcasting is part of the expression: a binary operand that is not
//! contiguous (a bias row, a per-row statistic) becomes a leaf read through
//! its strides, so `(x - mean) / std * gamma + beta` is one kernel. Without
//! such leaves a kernel handles four elements per invocation through vec4
//! loads; with them, one, decomposing its index over the dims (coalesced).
//! Element counts, dims, strides and scalar operands travel as immediate
//! data, so `x * 0.5` and `x * 0.25`, or batch 32 and batch 64, share a
//! kernel. Equal nodes are merged when expressions combine, so `y + y` does
//! not copy `y`'s expression twice.
//!
//! Correctness rests on buffers being immutable, with two exceptions that
//! write in place (`copy_into` and the optimizer update): before either
//! writes a buffer, every pending expression that reads it is run
//! ([`Context::before_write`](super::Context::before_write)). A pending
//! buffer that is read by more than one consumer is recomputed by each
//! expression that inlines it — at most [`MAX_OPS`] cheap elementwise ops,
//! the trade every fusing compiler makes against a dispatch.

use super::buffer::Pooled;
use super::elementwise::{MAX_RANK, vec4s};
use super::{Context, GpuBuffer};
use crate::Error;
use crate::backend::{BinaryOp, UnaryOp};
use crate::shape::{Strided, coalesce};
use std::fmt::Write;
use std::sync::Arc;

/// Ops one generated kernel may compute per element.
pub(crate) const MAX_OPS: usize = 24;
/// The u32 words of immediate data a kernel has (128 bytes): the element
/// count, the dims and views of its strided leaves, and its scalars.
const WORDS: usize = 32;
/// Buffers one kernel may read (plus the one it writes): the adapter
/// minimum of storage buffers per shader stage is 8.
const MAX_LEAVES: usize = 6;

/// The WGSL functions generated kernels call.
const LIBRARY: &str = include_str!("../../../shaders/elementwise.wgsl");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    /// The element of the leaf with this index.
    Leaf(usize),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
}

/// A buffer an expression reads: element `i` of the result reads element
/// `i` of the buffer, or, with a view, the element the view maps the
/// row-major index `i` of the expression's dims to (broadcasting, strides).
#[derive(Clone)]
struct Leaf {
    buffer: Arc<Pooled>,
    view: Option<View>,
}

#[derive(Clone, PartialEq, Eq)]
struct View {
    offset: usize,
    strides: Vec<usize>,
}

impl Leaf {
    fn same(&self, other: &Leaf) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer) && self.view == other.view
    }
}

/// An elementwise expression over the first `n` elements of its index space.
#[derive(Clone)]
pub(crate) struct Expr {
    n: usize,
    /// The dims the strided leaves' views are over (`None` without any).
    dims: Option<Vec<usize>>,
    leaves: Vec<Leaf>,
    /// In dependency order; arguments index earlier nodes.
    nodes: Vec<Node>,
    root: usize,
}

impl Expr {
    fn leaf(n: usize, buffer: Arc<Pooled>) -> Expr {
        Expr { n, dims: None, leaves: vec![Leaf { buffer, view: None }], nodes: vec![Node::Leaf(0)], root: 0 }
    }

    /// `buffer` read through `view`, a layout over `view.dims`.
    fn strided(buffer: Arc<Pooled>, view: &Strided) -> Expr {
        Expr {
            n: view.dims.iter().product(),
            dims: Some(view.dims.clone()),
            leaves: vec![Leaf { buffer, view: Some(View { offset: view.offset, strides: view.strides.clone() }) }],
            nodes: vec![Node::Leaf(0)],
            root: 0,
        }
    }

    fn ops(&self) -> usize {
        self.nodes.iter().filter(|n| !matches!(n, Node::Leaf(_))).count()
    }

    fn scalars(&self) -> usize {
        self.nodes.iter().map(|n| if let Node::Unary(op, _) = n { scalars(*op).len() } else { 0 }).sum()
    }

    /// The strided leaves' views coalesced over the dims: the dims, and per
    /// strided leaf (in leaf order) its strides.
    fn layout(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let Some(dims) = &self.dims else { return (Vec::new(), Vec::new()) };
        let mut strides: Vec<Vec<usize>> =
            self.leaves.iter().filter_map(|l| l.view.as_ref().map(|v| v.strides.clone())).collect();
        let dims = coalesce(dims, &mut strides);
        (dims, strides)
    }

    /// Immediate words the kernel needs: the count, the dims, each strided
    /// leaf's offset and strides, the scalars.
    fn words(&self) -> usize {
        let (dims, strides) = self.layout();
        1 + dims.len() + strides.iter().map(|s| 1 + s.len()).sum::<usize>() + self.scalars()
    }

    fn fits(&self) -> bool {
        self.ops() <= MAX_OPS && self.leaves.len() <= MAX_LEAVES && self.words() <= WORDS
    }

    /// Whether the expression reads `buffer`.
    pub fn reads(&self, buffer: &Arc<Pooled>) -> bool {
        self.leaves.iter().any(|l| Arc::ptr_eq(&l.buffer, buffer))
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
    /// The two must agree on their dims where both have any.
    fn absorb(&mut self, other: &Expr) -> usize {
        if self.dims.is_none() {
            self.dims = other.dims.clone();
        }
        let mut map = Vec::with_capacity(other.nodes.len());
        for node in &other.nodes {
            let node = match *node {
                Node::Leaf(l) => {
                    let leaf = &other.leaves[l];
                    let index = match self.leaves.iter().position(|m| m.same(leaf)) {
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

    /// `op(self, other)`, or `None` when the two index their strided leaves
    /// through different dims.
    fn binary(mut self, op: BinaryOp, other: &Expr) -> Option<Expr> {
        if let (Some(a), Some(b)) = (&self.dims, &other.dims)
            && a != b
        {
            return None;
        }
        let b = self.absorb(other);
        self.root = self.intern(Node::Binary(op, self.root, b));
        Some(self)
    }

    /// The WGSL function `f(x0, x1, ...) -> f32` computing one element; its
    /// scalar operands are the immediate words from `first_scalar` on, whose
    /// values it returns.
    fn function(&self, first_scalar: usize) -> (String, Vec<f32>) {
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
                            format!("bitcast<f32>(params.w[{}])", first_scalar + values.len() - 1)
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

    /// The whole kernel and its immediate words. Without strided leaves it
    /// computes four elements per invocation through vec4 views of the
    /// leaves (buffers are padded to whole vec4s); with them, one element,
    /// decomposing its index over the coalesced dims. The output is at
    /// binding `leaves.len()`.
    fn kernel(&self) -> (String, Vec<u32>) {
        let (dims, strides) = self.layout();
        let leaves = self.leaves.len();
        // Strided leaves exist exactly when the expression has dims.
        let vec4 = self.dims.is_none();
        // Words: count, dims, per strided leaf offset and strides, scalars.
        let mut words = vec![if vec4 { vec4s(self.n) } else { self.n } as u32];
        words.extend(dims.iter().map(|&d| d as u32));
        let mut index_of = vec![String::from("i"); leaves];
        let mut views = strides.iter();
        for (l, leaf) in self.leaves.iter().enumerate() {
            let Some(view) = &leaf.view else { continue };
            let strides = views.next().expect("one stride list per strided leaf");
            let mut terms = vec![format!("params.w[{}]", words.len())];
            words.push(view.offset as u32);
            for (d, &s) in strides.iter().enumerate() {
                if s != 0 {
                    terms.push(format!("c{d} * params.w[{}]", words.len()));
                }
                words.push(s as u32);
            }
            index_of[l] = terms.join(" + ");
        }
        let (function, values) = self.function(words.len());
        words.extend(values.iter().map(|v| v.to_bits()));

        let mut src = String::with_capacity(LIBRARY.len() + 2048);
        src.push_str(LIBRARY);
        src.push_str(
            "\nstruct Params {\n    w: array<u32, 32>,\n}\nvar<immediate> params: Params;\n\
             override WG: u32 = 256u;\n\n",
        );
        let element = if vec4 { "vec4<f32>" } else { "f32" };
        for l in 0..leaves {
            let _ = writeln!(src, "@group(0) @binding({l}) var<storage, read> in{l}: array<{element}>;");
        }
        let _ = writeln!(src, "@group(0) @binding({leaves}) var<storage, read_write> out: array<{element}>;\n");
        src.push_str(&function);
        src.push_str(
            "\n@compute @workgroup_size(WG)\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
             \x20       @builtin(local_invocation_index) lid: u32) {\n\
             \x20   let i = (wid.x + wid.y * nwg.x) * WG + lid;\n\
             \x20   if i >= params.w[0] {\n        return;\n    }\n",
        );
        if vec4 {
            for l in 0..leaves {
                let _ = writeln!(src, "    let v{l} = in{l}[i];");
            }
            let lane = |c: &str| {
                let args: Vec<String> = (0..leaves).map(|l| format!("v{l}.{c}")).collect();
                format!("f({})", args.join(", "))
            };
            let _ =
                writeln!(src, "    out[i] = vec4<f32>({}, {}, {}, {});", lane("x"), lane("y"), lane("z"), lane("w"));
        } else {
            // Coordinates, innermost first; the outermost needs no modulo.
            src.push_str("    var rest = i;\n");
            for d in (0..dims.len()).rev() {
                if d == 0 {
                    src.push_str("    let c0 = rest;\n");
                } else {
                    let _ = writeln!(src, "    let c{d} = rest % params.w[{}];", 1 + d);
                    let _ = writeln!(src, "    rest = rest / params.w[{}];", 1 + d);
                }
            }
            let args: Vec<String> = index_of.iter().enumerate().map(|(l, at)| format!("in{l}[{at}]")).collect();
            let _ = writeln!(src, "    out[i] = f({});", args.join(", "));
        }
        src.push_str("}\n");
        (src, words)
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

/// The expression `x` contributes over its first `n` elements: its pending
/// expression, or the buffer itself as a leaf.
fn operand(x: &GpuBuffer, n: usize) -> Result<Expr, Error> {
    if let Some(mut e) = x.expr() {
        // The caller's count rules: its view never covers more than the buffer.
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

/// What one side of a binary op contributes: a contiguous operand inlines
/// its pending expression; another layout reads the computed buffer
/// through it.
fn side(x: (&GpuBuffer, &Strided), n: usize) -> Result<Expr, Error> {
    if x.1.is_contiguous() {
        return operand(x.0, n);
    }
    let mut strides = vec![x.1.strides.clone()];
    let rank = coalesce(&x.1.dims, &mut strides).len();
    assert!(
        rank <= MAX_RANK,
        "binary op: the GPU kernels address at most {MAX_RANK} non-contiguous axes, this view needs {rank}"
    );
    match x.0.get() {
        Ok(buffer) => Ok(Expr::strided(buffer.clone(), x.1)),
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

/// `op(a, b)` with broadcasting: `a` and `b` are read through layouts of
/// the output's shape.
pub(crate) fn binary(
    ctx: &Arc<Context>,
    op: BinaryOp,
    a: (&GpuBuffer, &Strided),
    b: (&GpuBuffer, &Strided),
) -> GpuBuffer {
    let n: usize = a.1.dims.iter().product();
    let build = || -> Result<Expr, Error> {
        let (mut ea, mut eb) = (side(a, n)?, side(b, n)?);
        loop {
            if let Some(e) = ea.clone().binary(op, &eb)
                && e.fits()
            {
                return Ok(e);
            }
            // Compute the pending side with more ops (their dims disagree,
            // or together they are too big); two leaves always fit.
            if ea.ops() >= eb.ops() && ea.ops() > 0 {
                ea = computed(a.0, n)?;
            } else if eb.ops() > 0 {
                eb = computed(b.0, n)?;
            } else {
                unreachable!("two leaves over one shape always combine");
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
    let (source, words) = e.kernel();
    let wg = ctx.tuning.elementwise_wg;
    let mut signature: Vec<(u32, bool)> = (0..e.leaves.len() as u32).map(|l| (l, false)).collect();
    signature.push((e.leaves.len() as u32, true));
    let pipeline = ctx.generated_pipeline(source, signature, wg);
    let mut buffers: Vec<(u32, &wgpu::Buffer)> =
        e.leaves.iter().enumerate().map(|(l, leaf)| (l as u32, &leaf.buffer.buffer)).collect();
    buffers.push((e.leaves.len() as u32, &out.buffer));
    ctx.record(&pipeline, &buffers, &words, ctx.groups_1d(words[0] as usize, wg));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_nodes_merge_and_scalars_become_parameters() {
        // x0 * 2 + x0 * 3, with x0 * 2 written twice: one multiply for it.
        let mut e = Expr { n: 4, dims: None, leaves: vec![], nodes: vec![Node::Leaf(0)], root: 0 };
        let m = e.intern(Node::Unary(UnaryOp::MulScalar(2.0), 0));
        let again = e.intern(Node::Unary(UnaryOp::MulScalar(2.0), 0));
        assert_eq!(m, again);
        let other = e.intern(Node::Unary(UnaryOp::MulScalar(3.0), 0));
        assert_ne!(m, other);
        e.root = e.intern(Node::Binary(BinaryOp::Add, m, other));
        assert_eq!(e.ops(), 3);
        assert_eq!(e.scalars(), 2);
        let (src, values) = e.function(1);
        assert_eq!(values, vec![2.0, 3.0]);
        assert!(src.contains("let t1 = x0 * bitcast<f32>(params.w[1]);"), "{src}");
        assert!(src.contains("let t2 = x0 * bitcast<f32>(params.w[2]);"), "{src}");
        assert!(src.contains("let t3 = t1 + t2;"), "{src}");
        assert!(src.contains("return t3;"), "{src}");
    }
}
