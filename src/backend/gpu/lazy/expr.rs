//! The expression a pending buffer holds ([`super`]): an SSA list of
//! elementwise nodes over leaf buffers (read whole or through a strided
//! view), with an optional matrix product it is the epilogue of; how two
//! expressions merge (equal nodes and leaves shared), and whether the
//! result still fits one kernel's bindings and immediates.

use super::super::epilogue::{self, Product};
use super::super::fusion;
use super::super::pool::Pooled;
use super::{MAX_LEAVES, MAX_OPS, WORDS};
use crate::backend::{BinaryOp, UnaryOp};
use crate::shape::{Strided, coalesce};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(in crate::backend::gpu) enum Node {
    /// The element of the leaf with this index.
    Leaf(usize),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    /// `c ≠ 0 ? a : b`.
    Select(usize, usize, usize),
    /// Inverted dropout of `x`: element `e` kept (times `scale`) when
    /// `mix32(mix32(e ^ key0) ^ key1) ≥ threshold`, else 0 — the CPU's mask
    /// bit for bit (`src/rng.rs`). Words: key0, key1, threshold, scale bits.
    Dropout(usize, [u32; 4]),
    /// The element of the expression's [`Product`], computed by the kernel
    /// it is the epilogue of.
    Product,
    /// A constant (its bits; one word): `full`, pending like any
    /// expression, so a consumer can inline it or take its value.
    Const(u32),
}

/// A buffer an expression reads: element `i` of the result reads element
/// `i` of the buffer, or, with a view, the element the view maps the
/// row-major index `i` of the expression's dims to (broadcasting, strides).
#[derive(Clone)]
pub(in crate::backend::gpu) struct Leaf {
    pub buffer: Arc<Pooled>,
    pub view: Option<View>,
}

#[derive(Clone, PartialEq, Eq)]
pub(in crate::backend::gpu) struct View {
    pub offset: usize,
    pub strides: Vec<usize>,
}

impl Leaf {
    pub(super) fn same(&self, other: &Leaf) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer) && self.view == other.view
    }
}

/// An elementwise expression over the first `n` elements of its index space.
#[derive(Clone)]
pub(crate) struct Expr {
    pub(in crate::backend::gpu) n: usize,
    /// The dims the strided leaves' views are over (`None` without any).
    pub(in crate::backend::gpu) dims: Option<Vec<usize>>,
    pub(in crate::backend::gpu) leaves: Vec<Leaf>,
    /// In dependency order; arguments index earlier nodes.
    pub(in crate::backend::gpu) nodes: Vec<Node>,
    pub(in crate::backend::gpu) root: usize,
    /// The matrix product [`Node::Product`] stands for, if it has one (and
    /// then its element count is the product's).
    pub(in crate::backend::gpu) product: Option<Arc<Product>>,
}

impl Expr {
    pub(super) fn leaf(n: usize, buffer: Arc<Pooled>) -> Expr {
        Expr {
            n,
            dims: None,
            leaves: vec![Leaf { buffer, view: None }],
            nodes: vec![Node::Leaf(0)],
            root: 0,
            product: None,
        }
    }

    /// `buffer` read through `view`, a layout over `view.dims`.
    pub(super) fn strided(buffer: Arc<Pooled>, view: &Strided) -> Expr {
        Expr {
            n: view.dims.iter().product(),
            dims: Some(view.dims.clone()),
            leaves: vec![Leaf { buffer, view: Some(View { offset: view.offset, strides: view.strides.clone() }) }],
            nodes: vec![Node::Leaf(0)],
            root: 0,
            product: None,
        }
    }

    /// The product `p`, pending.
    pub(super) fn product(p: Product) -> Expr {
        Expr {
            n: p.len(),
            dims: None,
            leaves: Vec::new(),
            nodes: vec![Node::Product],
            root: 0,
            product: Some(Arc::new(p)),
        }
    }

    /// Its product, if one was computed since: read as a leaf from then on.
    pub(in crate::backend::gpu) fn settled(mut self) -> Expr {
        let Some(result) = self.product.as_ref().and_then(|p| p.result.get()).cloned() else { return self };
        self.product = None;
        let index = self.add_leaf(&Leaf { buffer: result, view: None });
        for node in &mut self.nodes {
            if *node == Node::Product {
                *node = Node::Leaf(index);
            }
        }
        self
    }

    /// The index of `leaf`, added unless an equal leaf is there.
    pub(super) fn add_leaf(&mut self, leaf: &Leaf) -> usize {
        if let Some(i) = self.leaves.iter().position(|m| m.same(leaf)) {
            return i;
        }
        self.leaves.push(leaf.clone());
        self.leaves.len() - 1
    }

    /// Whether it has a product and it was computed since.
    pub(super) fn can_settle(&self) -> bool {
        self.product.as_ref().is_some_and(|p| p.result.get().is_some())
    }

    pub(in crate::backend::gpu) fn ops(&self) -> usize {
        self.nodes.iter().filter(|n| !matches!(n, Node::Leaf(_) | Node::Product)).count()
    }

    pub(in crate::backend::gpu) fn scalars(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Unary(op, _) => fusion::scalars(*op).len(),
                Node::Dropout(..) => 4,
                Node::Const(_) => 1,
                _ => 0,
            })
            .sum()
    }

    /// The strided leaves' views coalesced over the dims: the dims, and per
    /// strided leaf (in leaf order) its strides.
    pub(in crate::backend::gpu) fn layout(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let Some(dims) = &self.dims else { return (Vec::new(), Vec::new()) };
        let mut strides: Vec<Vec<usize>> =
            self.leaves.iter().filter_map(|l| l.view.as_ref().map(|v| v.strides.clone())).collect();
        let dims = coalesce(dims, &mut strides);
        (dims, strides)
    }

    /// Words of parameters the kernel needs: the count, the dims, each
    /// strided leaf's offset and strides, the scalars.
    pub(in crate::backend::gpu) fn words(&self) -> usize {
        let (dims, strides) = self.layout();
        1 + dims.len() + strides.iter().map(|s| 1 + s.len()).sum::<usize>() + self.scalars()
    }

    pub(super) fn fits(&self) -> bool {
        // A product's epilogue shares the immediates and the bindings with
        // the product, and cannot read its words from a buffer.
        let (leaves, words) = match &self.product {
            Some(p) => (epilogue::LEAVES, p.words()),
            None => (MAX_LEAVES, WORDS),
        };
        self.ops() <= MAX_OPS && self.leaves.len() <= leaves && self.words() <= words
    }

    /// The device-side checks of what it reads: its leaves' and its
    /// product's operands'.
    pub(super) fn taints(&self) -> impl Iterator<Item = &crate::backend::gpu::taint::Taint> {
        let product = self.product.iter().flat_map(|p| [&p.a.taint, &p.b.taint]);
        self.leaves.iter().map(|l| &l.buffer.taint).chain(product)
    }

    /// Drops its hold on its product (before computing the buffer it came
    /// from: a product nothing else holds is not written out raw).
    pub(super) fn release(&mut self) {
        self.product = None;
    }

    /// Whether the expression reads `buffer`.
    pub(super) fn reads(&self, buffer: &Arc<Pooled>) -> bool {
        let by_product = |p: &Product| {
            Arc::ptr_eq(&p.a, buffer)
                || Arc::ptr_eq(&p.b, buffer)
                || p.result.get().is_some_and(|r| Arc::ptr_eq(r, buffer))
        };
        self.leaves.iter().any(|l| Arc::ptr_eq(&l.buffer, buffer)) || self.product.as_deref().is_some_and(by_product)
    }

    /// The index of `node`, appended unless an equal node exists.
    pub(in crate::backend::gpu) fn intern(&mut self, node: Node) -> usize {
        if let Some(i) = self.nodes.iter().position(|&m| m == node) {
            return i;
        }
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Merges `other` into this expression; returns the index of its root.
    /// The two must agree on their dims where both have any.
    pub(super) fn absorb(&mut self, other: &Expr) -> usize {
        if self.dims.is_none() {
            self.dims = other.dims.clone();
        }
        if self.product.is_none() {
            self.product = other.product.clone();
        }
        let mut map = Vec::with_capacity(other.nodes.len());
        for node in &other.nodes {
            let node = match *node {
                Node::Leaf(l) => Node::Leaf(self.add_leaf(&other.leaves[l])),
                Node::Unary(op, a) => Node::Unary(op, map[a]),
                Node::Binary(op, a, b) => Node::Binary(op, map[a], map[b]),
                Node::Select(c, a, b) => Node::Select(map[c], map[a], map[b]),
                Node::Dropout(x, w) => Node::Dropout(map[x], w),
                Node::Product => Node::Product,
                Node::Const(v) => Node::Const(v),
            };
            map.push(self.intern(node));
        }
        map[other.root]
    }

    /// `op(self)`.
    pub(super) fn unary(mut self, op: UnaryOp) -> Expr {
        self.root = self.intern(Node::Unary(op, self.root));
        self
    }

    pub(super) fn dropout(mut self, words: [u32; 4]) -> Expr {
        self.root = self.intern(Node::Dropout(self.root, words));
        self
    }

    /// Whether `other` indexes its strided leaves through the same dims
    /// (or one of the two has none), and the two have at most one product.
    pub(super) fn compatible(&self, other: &Expr) -> bool {
        let dims = match (&self.dims, &other.dims) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let products = match (&self.product, &other.product) {
            (Some(p), Some(q)) => Arc::ptr_eq(p, q),
            _ => true,
        };
        dims && products
    }

    /// `op(self, other)`, or `None` when the two index their strided leaves
    /// through different dims.
    pub(super) fn binary(mut self, op: BinaryOp, other: &Expr) -> Option<Expr> {
        if !self.compatible(other) {
            return None;
        }
        let b = self.absorb(other);
        self.root = self.intern(Node::Binary(op, self.root, b));
        Some(self)
    }

    /// `self ≠ 0 ? a : b`, or `None` when the three disagree on dims.
    pub(super) fn select(mut self, a: &Expr, b: &Expr) -> Option<Expr> {
        if !self.compatible(a) || !self.compatible(b) || !a.compatible(b) {
            return None;
        }
        let a = self.absorb(a);
        let b = self.absorb(b);
        self.root = self.intern(Node::Select(self.root, a, b));
        Some(self)
    }
}
