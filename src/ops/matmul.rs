//! Matrix products: 2-D, batched (leading axes broadcast, as `torch.matmul`),
//! and the transposed products the backward pass needs, which the kernels
//! read through transpose flags instead of materialising a transpose.

use super::same_device;
use crate::Tensor;
use crate::backend::MatmulSpec;
use crate::shape::Shape;

impl Tensor {
    /// Matrix product with `torch.matmul`'s rules: 2-D × 2-D is a matrix
    /// product; leading axes are batch axes and broadcast; a 1-D operand is a
    /// vector (a row on the left, a column on the right) whose axis is
    /// removed from the result.
    pub fn matmul(&self, rhs: &Tensor) -> Tensor {
        assert!(
            self.rank() >= 1 && rhs.rank() >= 1,
            "matmul: scalars cannot be multiplied as matrices (shapes {} and {})",
            self.shape(),
            rhs.shape()
        );
        match (self.rank(), rhs.rank()) {
            (1, 1) => self.unsqueeze(0).matmul_t(&rhs.unsqueeze(1), false, false).reshape(()),
            (1, _) => self.unsqueeze(0).matmul_t(rhs, false, false).squeeze(-2),
            (_, 1) => self.matmul_t(&rhs.unsqueeze(1), false, false).squeeze(-1),
            _ => self.matmul_t(rhs, false, false),
        }
    }

    /// `self · weightᵀ + bias` for a `[out, in]` weight, as PyTorch's
    /// `F.linear`. The transpose is a kernel flag, not a copy.
    ///
    /// One node of the graph: its backward computes the weight's and the
    /// bias's gradients together ([`Backend::linear_grads`]: one product
    /// kernel on a GPU, instead of a product and a column sum), the input's
    /// as `g · weight`.
    ///
    /// [`Backend::linear_grads`]: crate::backend::Backend::linear_grads
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        assert!(weight.rank() == 2, "linear: weight must be [out, in], got shape {}", weight.shape());
        let (outs, ins) = (weight.dims()[0], weight.dims()[1]);
        let fits = self.rank() >= 1 && self.dims()[self.rank() - 1] == ins;
        let rows = if fits { self.elem_count() / ins.max(1) } else { 0 };
        let bias_fits = bias.is_none_or(|b| b.dims() == [outs] && b.device() == self.device());
        if fits && rows > 0 && ins > 0 && outs > 0 && bias_fits && weight.device() == self.device() {
            return self.linear_node(weight, bias, rows, outs, ins);
        }
        // Empty, mismatched or misplaced operands: the unfused ops (which
        // handle the empty cases and name what does not fit).
        let y = if self.rank() == 1 {
            self.unsqueeze(0).matmul_t(weight, false, true).squeeze(0)
        } else {
            self.matmul_t(weight, false, true)
        };
        match bias {
            Some(b) => y + b,
            None => y,
        }
    }

    /// [`linear`](Self::linear) over `rows` rows of `ins` features, all
    /// non-empty, as one node.
    fn linear_node(&self, weight: &Tensor, bias: Option<&Tensor>, rows: usize, outs: usize, ins: usize) -> Tensor {
        let mut out_dims = self.dims()[..self.rank() - 1].to_vec();
        out_dims.push(outs);
        let y = crate::no_grad(|| {
            let y = self.reshape([rows, ins]).matmul_t(weight, false, true);
            match bias {
                Some(b) => y + b,
                None => y,
            }
        })
        .reshape(out_dims);
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let x_shape = self.shape().clone();
        y.record("linear", &inputs, move |c| {
            let g = c.grad.reshape([rows, outs]);
            let dx = c.needs[0].then(|| g.matmul_t(c.input(1), false, false).reshape(x_shape.clone()));
            let needs_bias = c.needs.get(2).copied().unwrap_or(false);
            let (dw, db) = match (c.needs[1], needs_bias) {
                (true, true) => {
                    let x = c.input(0).reshape([rows, ins]);
                    let device = g.device();
                    let [dw, db] = Tensor::with_storages(&[&g, &x], |s| {
                        device.backend().linear_grads(s[0], s[1], rows, outs, ins)
                    });
                    let dw = Tensor::from_storage(dw, [outs, ins].into(), device.clone());
                    (Some(dw), Some(Tensor::from_storage(db, [outs].into(), device)))
                }
                (true, false) => (Some(g.matmul_t(&c.input(0).reshape([rows, ins]), true, false)), None),
                (false, true) => (None, Some(g.sum_dim(0, false))),
                (false, false) => (None, None),
            };
            let mut grads = vec![dx, dw];
            if c.needs.len() > 2 {
                grads.push(db);
            }
            grads
        })
    }

    /// `op(self) · op(rhs)`, where `op` swaps the last two axes when its flag
    /// is set. Both operands have rank ≥ 2.
    pub(crate) fn matmul_t(&self, rhs: &Tensor, ta: bool, tb: bool) -> Tensor {
        same_device("matmul", self, rhs);
        let fail = |why: &str| -> ! { panic!("matmul: shapes {} and {} do not fit: {why}", self.shape(), rhs.shape()) };
        if self.rank() < 2 || rhs.rank() < 2 {
            fail("both operands need at least 2 axes here");
        }
        let (ad, bd) = (self.dims(), rhs.dims());
        let (ar, ac) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (br, bc) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if tb { (bc, br) } else { (br, bc) };
        if k != kb {
            fail(&format!("inner dimensions {k} and {kb} differ"));
        }
        let a_batch = Shape::from(&ad[..ad.len() - 2]);
        let b_batch = Shape::from(&bd[..bd.len() - 2]);
        let batch_shape =
            Shape::broadcast(&a_batch, &b_batch).unwrap_or_else(|| fail("batch axes cannot be broadcast"));
        let mut out_dims = batch_shape.dims().to_vec();
        out_dims.extend([m, n]);
        let out_shape = Shape::from(out_dims).checked("matmul");
        if out_shape.elem_count() == 0 || k == 0 {
            // Nothing to compute (and the batch count may not even fit in a
            // usize when m or n is 0), or sums of nothing: zeros, whose
            // gradients are zeros (empty ones when k is 0).
            return crate::no_grad(|| Tensor::zeros(out_shape, &self.device())).record("matmul", &[self, rhs], |c| {
                vec![
                    c.needs[0].then(|| Tensor::zeros(c.shape(0).clone(), &c.grad.device())),
                    c.needs[1].then(|| Tensor::zeros(c.shape(1).clone(), &c.grad.device())),
                ]
            });
        }
        let batch = batch_shape.elem_count();

        // Each operand is read with batch stride 0 (one matrix for all),
        // its own stride (one matrix per batch entry), or, when only some
        // batch axes broadcast, from a broadcast copy.
        let operand = |t: &Tensor, own_batch: &Shape, rows: usize, cols: usize| -> (Tensor, usize) {
            if own_batch.elem_count() == 1 {
                (t.clone(), 0)
            } else if own_batch == &batch_shape {
                (t.clone(), rows * cols)
            } else {
                let mut dims = batch_shape.dims().to_vec();
                dims.extend([rows, cols]);
                (crate::no_grad(|| t.broadcast_to(dims)), rows * cols)
            }
        };
        let (a, a_stride) = operand(self, &a_batch, ar, ac);
        let (b, b_stride) = operand(rhs, &b_batch, br, bc);

        let mut spec =
            MatmulSpec { batch, m, n, k, trans_a: ta, trans_b: tb, a_batch_stride: a_stride, b_batch_stride: b_stride };
        if batch > 1 && b_stride == 0 && a_stride == m * k && !ta {
            // A stack of A's times one B is a single taller product.
            spec = MatmulSpec { batch: 1, m: batch * m, a_batch_stride: 0, ..spec };
        }
        let device = self.device();
        let storage = Tensor::with_storages(&[&a, &b], |s| device.backend().matmul(s[0], s[1], spec));
        let out = Tensor::from_storage(storage, out_shape, self.device().clone());

        // Each gradient reads the other operand only, as PyTorch saves them:
        // updating a weight in place between the forward and the backward
        // is an error only where the weight's value is needed.
        out.record("matmul", &[self, rhs], move |c| {
            let g = c.grad;
            let da = c.needs[0].then(|| {
                let b = c.input(1);
                let d = if ta { b.matmul_t(g, tb, true) } else { g.matmul_t(b, false, !tb) };
                d.sum_to(c.shape(0))
            });
            let db = c.needs[1].then(|| {
                let a = c.input(0);
                if c.shape(1).rank() == 2 && a.rank() > 2 && !ta {
                    // Fold the batch into the rows: Σ_b A_bᵀ g_b = [A_1; …]ᵀ [g_1; …].
                    let a2 = a.reshape([a.elem_count() / k, k]);
                    let g2 = g.reshape([g.elem_count() / n, n]);
                    if tb { g2.matmul_t(&a2, true, false) } else { a2.matmul_t(&g2, true, false) }
                } else {
                    let d = if tb { g.matmul_t(a, true, ta) } else { a.matmul_t(g, !ta, false) };
                    d.sum_to(c.shape(1))
                }
            });
            vec![da, db]
        })
    }
}
