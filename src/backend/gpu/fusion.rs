//! Code generation for fused elementwise kernels: one WGSL kernel from one
//! [`Expr`](super::lazy::Expr) (see [`lazy`](super::lazy) for when and why
//! expressions are built and run).
//!
//! Without strided leaves a kernel computes four elements per invocation
//! through vec4 views of the leaves (buffers are padded to whole vec4s);
//! with them, one element, decomposing its index over the coalesced dims
//! (coalesced loads). Element counts, dims, strides and scalar operands are
//! parameters, not constants, so `x * 0.5` and `x * 0.25`, or batch 32 and
//! batch 64, share a kernel. The op table below and the CPU reference
//! (`backend::cpu`) define the ops.

use super::lazy::{Expr, Node, WORDS};
use super::pipelines::{params, with_prelude};
use crate::backend::{BinaryOp, Cmp, UnaryOp};
use std::fmt::Write;

/// The WGSL functions generated kernels call.
const LIBRARY: &str = include_str!("../../../shaders/elementwise.wgsl");

params! {
    /// A generated kernel's parameter words (count, dims, views, scalars).
    Words { w: [u32; WORDS] }
}

/// The WGSL declaration [`Words`] mirrors.
const PARAMS_WGSL: &str = "struct Params {\n    w: array<u32, 32>,\n}\nvar<immediate> params: Params;\n";

/// The scalar operands of `op`.
pub(super) fn scalars(op: UnaryOp) -> Vec<f32> {
    use UnaryOp::*;
    match op {
        AddScalar(s) | MulScalar(s) | PowScalar(s) | MaxScalar(s) | MinScalar(s) | CmpScalar(_, s) => vec![s],
        InRange(lo, hi) => vec![lo, hi],
        Neg | Exp | Log | Sqrt | Abs | Sign | Relu | Sigmoid | Tanh | Gelu | GeluGrad | GeluTanh | GeluTanhGrad => {
            vec![]
        }
    }
}

/// `op(x)` in WGSL; `s` names its scalar operands. Each is a function of
/// `shaders/elementwise.wgsl`, which handles NaN and ±∞ as IEEE-754 says.
fn unary_wgsl(op: UnaryOp, x: &str, s: &[String]) -> String {
    use UnaryOp::*;
    match op {
        Neg => format!("-{x}"),
        Exp => format!("op_exp({x})"),
        Log => format!("op_log({x})"),
        Sqrt => format!("op_sqrt({x})"),
        Abs => format!("op_abs({x})"),
        Sign => format!("op_sign({x})"),
        Relu => format!("op_relu({x})"),
        Sigmoid => format!("op_sigmoid({x})"),
        Tanh => format!("op_tanh({x})"),
        Gelu => format!("op_gelu({x})"),
        GeluGrad => format!("op_gelu_grad({x})"),
        GeluTanh => format!("op_gelu_tanh({x})"),
        GeluTanhGrad => format!("op_gelu_tanh_grad({x})"),
        AddScalar(_) => format!("op_add({x}, {})", s[0]),
        MulScalar(_) => format!("op_mul({x}, {})", s[0]),
        PowScalar(_) => format!("op_pow({x}, {})", s[0]),
        MaxScalar(_) => format!("op_max({x}, {})", s[0]),
        MinScalar(_) => format!("op_min({x}, {})", s[0]),
        CmpScalar(c, _) => format!("{}({x}, {})", cmp_wgsl(c), s[0]),
        InRange(..) => format!("op_in_range({x}, {}, {})", s[0], s[1]),
    }
}

/// The WGSL function of a comparison.
fn cmp_wgsl(c: Cmp) -> &'static str {
    match c {
        Cmp::Lt => "op_lt",
        Cmp::Le => "op_le",
        Cmp::Gt => "op_gt",
        Cmp::Ge => "op_ge",
        Cmp::Eq => "op_eq",
        Cmp::Ne => "op_ne",
    }
}

/// `op(a, b)` in WGSL.
fn binary_wgsl(op: BinaryOp, a: &str, b: &str) -> String {
    let f = match op {
        BinaryOp::Add => "op_add",
        BinaryOp::Sub => "op_sub",
        BinaryOp::Mul => "op_mul",
        BinaryOp::Div => "op_div",
        BinaryOp::Max => "op_max",
        BinaryOp::Min => "op_min",
        BinaryOp::Cmp(c) => cmp_wgsl(c),
    };
    format!("{f}({a}, {b})")
}

/// The WGSL function `f(e, x0, x1, ...) -> f32` computing element `e` of
/// `e`; `word(k)` names parameter word `k`. Its scalar operands are the
/// words from `first_scalar` on, in the order [`words`] writes them.
pub(super) fn function(e: &Expr, first_scalar: usize, word: &dyn Fn(usize) -> String) -> String {
    let name = |i: usize| match e.nodes[i] {
        Node::Leaf(l) => format!("x{l}"),
        Node::Product => "p".to_string(),
        _ => format!("t{i}"),
    };
    // `e`: the element's index, which dropout's mask is a function of; `p`:
    // a matmul epilogue's product element.
    let product = e.nodes.contains(&Node::Product).then(|| "p: f32".to_string());
    let args: Vec<String> = std::iter::once("e: u32".to_string())
        .chain((0..e.leaves.len()).map(|l| format!("x{l}: f32")))
        .chain(product)
        .collect();
    let mut src = format!("fn f({}) -> f32 {{\n", args.join(", "));
    let mut k = first_scalar;
    for (i, node) in e.nodes.iter().enumerate() {
        let expr = match *node {
            Node::Leaf(_) | Node::Product => continue,
            Node::Unary(op, a) => {
                let names: Vec<String> =
                    (0..scalars(op).len()).map(|s| format!("bitcast<f32>({})", word(k + s))).collect();
                k += names.len();
                unary_wgsl(op, &name(a), &names)
            }
            Node::Binary(op, a, b) => binary_wgsl(op, &name(a), &name(b)),
            Node::Select(c, a, b) => format!("op_where({}, {}, {})", name(c), name(a), name(b)),
            Node::Const(_) => {
                k += 1;
                format!("bitcast<f32>({})", word(k - 1))
            }
            Node::Dropout(x, _) => {
                // Raw words: two keys and a threshold are not floats.
                k += 4;
                format!(
                    "op_dropout({}, e, {}, {}, {}, bitcast<f32>({}))",
                    name(x),
                    word(k - 4),
                    word(k - 3),
                    word(k - 2),
                    word(k - 1)
                )
            }
        };
        let _ = writeln!(src, "    let {} = {expr};", name(i));
    }
    let _ = writeln!(src, "    return {};\n}}", name(e.root));
    src
}

/// The parameter words of `e` laid out as `(dims, strides)`
/// ([`Expr::layout`]): the count, the dims, each strided leaf's offset and
/// strides, the scalars — what [`kernel`] returns beside the source, without
/// generating it.
pub(super) fn words(e: &Expr, dims: &[usize], strides: &[Vec<usize>]) -> Vec<u32> {
    let vec4 = e.dims.is_none();
    let mut words = vec![if vec4 { e.n.div_ceil(4) } else { e.n } as u32];
    words.extend(dims.iter().map(|&d| d as u32));
    let mut views = strides.iter();
    for leaf in &e.leaves {
        let Some(view) = &leaf.view else { continue };
        words.push(view.offset as u32);
        words.extend(views.next().expect("one stride list per strided leaf").iter().map(|&s| s as u32));
    }
    for node in &e.nodes {
        match *node {
            Node::Unary(op, _) => words.extend(scalars(op).iter().map(|v| v.to_bits())),
            Node::Dropout(_, w) => words.extend(w),
            Node::Const(v) => words.push(v),
            _ => {}
        }
    }
    words
}

/// Where [`words`] put each dropout node's key: (index of key0, key).
pub(super) fn dropout_keys(e: &Expr, words: &[u32]) -> Vec<(usize, [u32; 2])> {
    let mut at = words.len() - e.scalars();
    let mut keys = Vec::new();
    for node in &e.nodes {
        match *node {
            Node::Unary(op, _) => at += scalars(op).len(),
            Node::Dropout(_, w) => {
                debug_assert_eq!(words[at..at + 4], w);
                keys.push((at, [w[0], w[1]]));
                at += 4;
            }
            Node::Const(_) => at += 1,
            _ => {}
        }
    }
    keys
}

/// Everything the source [`kernel`] generates for `e` depends on, as
/// numbers: what the pipeline cache keys generated kernels by. Building it
/// costs a fraction of generating (and hashing) the source, which happens
/// only when the cache misses; builds with debug assertions check, on every
/// hit, that the cached kernel's source is the one `e` would generate.
pub(super) fn structure(e: &Expr, dims: &[usize], strides: &[Vec<usize>], words_in_buffer: bool) -> Vec<u32> {
    let mut key = Vec::with_capacity(8 + 4 * e.nodes.len() + e.leaves.len() * (1 + dims.len()));
    key.extend([words_in_buffer as u32, e.dims.is_none() as u32, e.leaves.len() as u32]);
    key.extend([dims.len() as u32, e.root as u32, e.nodes.len() as u32]);
    let mut views = strides.iter();
    for leaf in &e.leaves {
        match &leaf.view {
            None => key.push(0),
            Some(_) => {
                key.push(1);
                let strides = views.next().expect("one stride list per strided leaf");
                key.extend(strides.iter().map(|&s| (s != 0) as u32));
            }
        }
    }
    for node in &e.nodes {
        match *node {
            Node::Leaf(l) => key.extend([0, l as u32]),
            Node::Unary(op, a) => key.extend([1, unary_code(op), a as u32]),
            Node::Binary(op, a, b) => key.extend([2, binary_code(op), a as u32, b as u32]),
            Node::Select(c, a, b) => key.extend([3, c as u32, a as u32, b as u32]),
            Node::Dropout(x, _) => key.extend([4, x as u32]),
            Node::Product => key.push(5),
            Node::Const(_) => key.push(6),
        }
    }
    key
}

/// A number per unary op (its scalar operands are words, not code).
fn unary_code(op: UnaryOp) -> u32 {
    use UnaryOp::*;
    match op {
        Neg => 0,
        Exp => 1,
        Log => 2,
        Sqrt => 3,
        Abs => 4,
        Sign => 5,
        Relu => 6,
        Sigmoid => 7,
        Tanh => 8,
        Gelu => 9,
        GeluGrad => 10,
        AddScalar(_) => 11,
        MulScalar(_) => 12,
        PowScalar(_) => 13,
        MaxScalar(_) => 14,
        MinScalar(_) => 15,
        CmpScalar(c, _) => 16 + cmp_code(c),
        InRange(..) => 32,
        GeluTanh => 33,
        GeluTanhGrad => 34,
    }
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Min => 5,
        BinaryOp::Cmp(c) => 16 + cmp_code(c),
    }
}

fn cmp_code(c: Cmp) -> u32 {
    match c {
        Cmp::Lt => 0,
        Cmp::Le => 1,
        Cmp::Gt => 2,
        Cmp::Ge => 3,
        Cmp::Eq => 4,
        Cmp::Ne => 5,
    }
}

/// The generated part of the kernel computing `e` ([`full_source`] adds the
/// shared library), reading the parameter words [`words`] lays out. The
/// output is at binding `leaves`; with `words_in_buffer` the words are read
/// from a storage buffer at binding `leaves + 1` instead of immediate data.
pub(super) fn kernel(e: &Expr, words_in_buffer: bool) -> String {
    let (dims, strides) = e.layout();
    let leaves = e.leaves.len();
    // Strided leaves exist exactly when the expression has dims.
    let vec4 = e.dims.is_none();
    let word = |k: usize| if words_in_buffer { format!("words[{k}]") } else { format!("params.w[{k}]") };
    let (index_of, k) = leaf_indices(e, &dims, &strides, &word);
    let function = function(e, k, &word);

    let mut src = String::with_capacity(2048);
    if words_in_buffer {
        let _ = writeln!(src, "@group(0) @binding({}) var<storage, read> words: array<u32>;", leaves + 1);
    } else {
        src.push_str(PARAMS_WGSL);
    }
    let element = if vec4 { "vec4<f32>" } else { "f32" };
    for l in 0..leaves {
        let _ = writeln!(src, "@group(0) @binding({l}) var<storage, read> in{l}: array<{element}>;");
    }
    let _ = writeln!(src, "@group(0) @binding({leaves}) var<storage, read_write> out: array<{element}>;\n");
    src.push_str(&function);
    let _ = write!(
        src,
        "\n@compute @workgroup_size(WG)\n\
         fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
         \x20       @builtin(local_invocation_index) lid: u32) {{\n\
         \x20   let i = linear_id(wid, nwg, lid);\n\
         \x20   if i >= {} {{\n        return;\n    }}\n",
        word(0)
    );
    if vec4 {
        for l in 0..leaves {
            let _ = writeln!(src, "    let v{l} = in{l}[i];");
        }
        let lane = |c: &str, at: u32| {
            let args: String = (0..leaves).map(|l| format!(", v{l}.{c}")).collect();
            format!("f(4u * i + {at}u{args})")
        };
        let _ = writeln!(
            src,
            "    out[i] = vec4<f32>({}, {}, {}, {});",
            lane("x", 0),
            lane("y", 1),
            lane("z", 2),
            lane("w", 3)
        );
    } else {
        src.push_str(&coordinates(dims.len(), &word));
        let args: String = index_of.iter().enumerate().map(|(l, at)| format!(", in{l}[{at}]")).collect();
        let _ = writeln!(src, "    out[i] = f(i{args});");
    }
    src.push_str("}\n");
    src
}

/// Per leaf of `e`, the WGSL index of element `i`'s value in it (`i`
/// itself, or through its view from the coordinates [`coordinates`]
/// declares), and the position of the first scalar word. Word positions:
/// count, dims, per strided leaf offset and strides, scalars.
pub(super) fn leaf_indices(
    e: &Expr,
    dims: &[usize],
    strides: &[Vec<usize>],
    word: &dyn Fn(usize) -> String,
) -> (Vec<String>, usize) {
    let mut k = 1 + dims.len();
    let mut index_of = vec![String::from("i"); e.leaves.len()];
    let mut views = strides.iter();
    for (l, leaf) in e.leaves.iter().enumerate() {
        if leaf.view.is_none() {
            continue;
        }
        let strides = views.next().expect("one stride list per strided leaf");
        let mut terms = vec![word(k)];
        for (d, &s) in strides.iter().enumerate() {
            if s != 0 {
                terms.push(format!("c{d} * {}", word(k + 1 + d)));
            }
        }
        k += 1 + strides.len();
        index_of[l] = terms.join(" + ");
    }
    (index_of, k)
}

/// WGSL statements declaring `c0..` (outermost first), the coordinates of
/// index `i` over `rank` dims whose sizes are words 1..=rank.
pub(super) fn coordinates(rank: usize, word: &dyn Fn(usize) -> String) -> String {
    // Innermost first; the outermost needs no modulo.
    let mut src = String::from("    var rest = i;\n");
    for d in (0..rank).rev() {
        if d == 0 {
            src.push_str("    let c0 = rest;\n");
        } else {
            let _ = writeln!(src, "    let c{d} = rest % {};", word(1 + d));
            let _ = writeln!(src, "    rest = rest / {};", word(1 + d));
        }
    }
    src
}

/// The complete WGSL of a kernel whose generated part is `generated`.
pub(super) fn full_source(generated: &str) -> String {
    with_prelude(&[LIBRARY, generated])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_mirror_the_generated_struct() {
        assert_eq!(WORDS, 32, "PARAMS_WGSL spells the word count out");
        crate::backend::gpu::pipelines::tests::assert_mirrors::<Words>(PARAMS_WGSL, "generated kernels");
    }

    #[test]
    fn equal_nodes_merge_and_scalars_become_parameters() {
        // x0 * 2 + x0 * 3, with x0 * 2 written twice: one multiply for it.
        let mut e = Expr { n: 4, dims: None, leaves: vec![], nodes: vec![Node::Leaf(0)], root: 0, product: None };
        let m = e.intern(Node::Unary(UnaryOp::MulScalar(2.0), 0));
        let again = e.intern(Node::Unary(UnaryOp::MulScalar(2.0), 0));
        assert_eq!(m, again);
        let other = e.intern(Node::Unary(UnaryOp::MulScalar(3.0), 0));
        assert_ne!(m, other);
        e.root = e.intern(Node::Binary(BinaryOp::Add, m, other));
        assert_eq!(e.ops(), 3);
        assert_eq!(e.scalars(), 2);
        let src = function(&e, 1, &|k| format!("params.w[{k}]"));
        let scalars: Vec<f32> = words(&e, &[], &[])[1..].iter().map(|&w| f32::from_bits(w)).collect();
        assert_eq!(scalars, vec![2.0, 3.0]);
        assert!(src.contains("let t1 = op_mul(x0, bitcast<f32>(params.w[1]));"), "{src}");
        assert!(src.contains("let t2 = op_mul(x0, bitcast<f32>(params.w[2]));"), "{src}");
        assert!(src.contains("let t3 = op_add(t1, t2);"), "{src}");
        assert!(src.contains("return t3;"), "{src}");
    }
}
