//! Ops of sequence models: layer normalisation, triangular masks, scaled
//! dot-product attention, and sampling from a model's logits.

use super::same_device;
use crate::rng::Generator;
use crate::{Result, Tensor};

impl Tensor {
    /// Layer normalisation over the last `normalized_dims` axes (PyTorch's
    /// `F.layer_norm(x, x.shape[-normalized_dims:], weight, bias, eps)`):
    /// each row is shifted to mean 0 and scaled to variance 1 (the biased
    /// variance, plus `eps`), then multiplied by `weight` and shifted by
    /// `bias` (both of the normalised shape; `None` means 1 and 0).
    ///
    /// One kernel forward, two backward on the GPU (see
    /// `shaders/layer_norm.wgsl`).
    ///
    /// ```
    /// use wgrad::{Device, Tensor};
    /// let x = Tensor::new([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]], &Device::Cpu).unwrap();
    /// let y = x.layer_norm(1, None, None, 1e-5).to_vec().unwrap();
    /// assert!((y[0] + 1.2247).abs() < 1e-3 && y[3] == 0.0);
    /// ```
    pub fn layer_norm(
        &self,
        normalized_dims: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Tensor {
        let rank = self.rank();
        assert!(
            (1..=rank).contains(&normalized_dims),
            "layer_norm: cannot normalise the last {normalized_dims} axes of a tensor of shape {}",
            self.shape()
        );
        let dims = self.dims();
        let normalized = &dims[rank - normalized_dims..];
        let cols: usize = normalized.iter().product();
        let rows = self.elem_count().checked_div(cols).unwrap_or(0);
        let device = self.device();
        for (what, t) in [("weight", weight), ("bias", bias)] {
            if let Some(t) = t {
                assert!(
                    t.elem_count() == cols && t.dims().iter().rev().zip(normalized.iter().rev()).all(|(a, b)| a == b),
                    "layer_norm: {what} of shape {} for normalised shape {:?} (input {})",
                    t.shape(),
                    normalized,
                    self.shape()
                );
                same_device("layer_norm", self, t);
            }
        }
        let ones;
        let w = match weight {
            Some(w) => w,
            None => {
                ones = Tensor::ones([cols], &device);
                &ones
            }
        };
        let zeros;
        let b = match bias {
            Some(b) => b,
            None => {
                zeros = Tensor::zeros([cols], &device);
                &zeros
            }
        };
        let [y, stats] =
            Tensor::with_storages(&[self, w, b], |s| device.backend().layer_norm(s[0], s[1], s[2], rows, cols, eps));
        let stats = Tensor::from_storage(stats, [rows, 2].into(), device.clone());
        let out = Tensor::from_storage(y, self.shape().clone(), device);
        let (w_shape, b_shape) = (w.shape().clone(), b.shape().clone());
        out.record("layer_norm", &[self, w, b], move |c| {
            let device = c.grad.device();
            let (x, w) = (c.input(0), c.input(1));
            let [dx, dw, db] = Tensor::with_storages(&[x, &stats, w, c.grad], |s| {
                device.backend().layer_norm_backward(s[0], s[1], s[2], s[3], rows, cols)
            });
            vec![
                c.needs[0].then(|| Tensor::from_storage(dx, c.shape(0).clone(), device.clone())),
                c.needs[1].then(|| Tensor::from_storage(dw, w_shape, device.clone())),
                c.needs[2].then(|| Tensor::from_storage(db, b_shape, device.clone())),
            ]
        })
    }

    /// The lower triangle of the last two axes: elements with
    /// `column - row ≤ diagonal` kept, the rest zero (PyTorch's `tril`).
    pub fn tril(&self, diagonal: i64) -> Tensor {
        self.triangle("tril", diagonal, true)
    }

    /// The upper triangle of the last two axes: elements with
    /// `column - row ≥ diagonal` kept, the rest zero (PyTorch's `triu`).
    pub fn triu(&self, diagonal: i64) -> Tensor {
        self.triangle("triu", diagonal, false)
    }

    fn triangle(&self, op: &str, diagonal: i64, lower: bool) -> Tensor {
        assert!(self.rank() >= 2, "{op}: needs at least 2 axes, got shape {}", self.shape());
        let d = self.dims();
        let mask = triangle_mask(d[d.len() - 2], d[d.len() - 1], diagonal, lower, &self.device());
        // A select, not a product: ±∞ and NaN outside the triangle become
        // 0, as in PyTorch (`full(-inf).triu(1)` is a causal mask).
        mask.where_cond(self, &Tensor::zeros([], &self.device()))
    }
}

impl Tensor {
    /// One LSTM step's gate arithmetic, fused (see
    /// [`crate::backend::Backend::lstm_cell`]): `self` the pre-activation
    /// gates `[batch, 4·hidden]`, `hc_prev` the state `[batch, 2·hidden]`
    /// (`[h | c]`); returns the new `[h | c]`.
    pub(crate) fn lstm_cell(&self, hc_prev: &Tensor) -> Tensor {
        let (batch, hidden) = (hc_prev.dims()[0], hc_prev.dims()[1] / 2);
        assert!(
            self.dims() == [batch, 4 * hidden] && hc_prev.dims() == [batch, 2 * hidden],
            "lstm_cell: gates {} and state {} do not fit [batch, 4·hidden] and [batch, 2·hidden]",
            self.shape(),
            hc_prev.shape()
        );
        same_device("lstm_cell", self, hc_prev);
        let device = self.device();
        let storage =
            Tensor::with_storages(&[self, hc_prev], |s| device.backend().lstm_cell(s[0], s[1], batch, hidden));
        let out = Tensor::from_storage(storage, [batch, 2 * hidden].into(), device);
        out.record("lstm_cell", &[self, hc_prev], move |c| {
            let device = c.grad.device();
            let [dg, dhc] = Tensor::with_storages(&[c.input(0), c.input(1), c.grad], |s| {
                device.backend().lstm_cell_backward(s[0], s[1], s[2], batch, hidden)
            });
            vec![
                c.needs[0].then(|| Tensor::from_storage(dg, [batch, 4 * hidden].into(), device.clone())),
                c.needs[1].then(|| Tensor::from_storage(dhc, [batch, 2 * hidden].into(), device.clone())),
            ]
        })
    }
}

impl Tensor {
    /// A whole LSTM layer over the sequence, fused, where the device's
    /// backend has one (see [`crate::backend::Backend::lstm_layer`]; the
    /// CPU does): `self` the input projections `[batch, seq, 4·hidden]`
    /// (both biases in), `w_hh` `[4·hidden, hidden]`, `hc0` the initial
    /// `[batch, 2·hidden]` state `[h | c]`; returns every step's state
    /// `[batch, seq, 2·hidden]`, recorded as one tape entry whose backward
    /// runs through time in one pass. `None` where the backend has none:
    /// the caller unrolls the sequence into [`lstm_cell`](Self::lstm_cell)s.
    pub(crate) fn lstm_layer(&self, w_hh: &Tensor, hc0: &Tensor) -> Option<Tensor> {
        let (batch, hidden) = (hc0.dims()[0], hc0.dims()[1] / 2);
        assert!(
            self.rank() == 3
                && self.dims()[0] == batch
                && self.dims()[2] == 4 * hidden
                && w_hh.dims() == [4 * hidden, hidden]
                && hc0.dims() == [batch, 2 * hidden],
            "lstm_layer: projections {}, w_hh {} and state {} do not fit [batch, seq, 4·hidden], \
             [4·hidden, hidden] and [batch, 2·hidden]",
            self.shape(),
            w_hh.shape(),
            hc0.shape()
        );
        same_device("lstm_layer", self, w_hh);
        same_device("lstm_layer", self, hc0);
        let (device, seq) = (self.device(), self.dims()[1]);
        let [acts, hc] = Tensor::with_storages(&[self, w_hh, hc0], |s| {
            device.backend().lstm_layer(s[0], s[1], s[2], batch, seq, hidden)
        })?;
        let acts = Tensor::from_storage(acts, [batch, seq, 4 * hidden].into(), device.clone());
        let out = Tensor::from_storage(hc, [batch, seq, 2 * hidden].into(), device);
        Some(out.record("lstm_layer", &[self, w_hh, hc0], move |c| {
            let device = c.grad.device();
            let [dp, dw, dhc0] = Tensor::with_storages(&[&acts, c.output(), c.input(2), c.input(1), c.grad], |s| {
                device.backend().lstm_layer_backward(s[0], s[1], s[2], s[3], s[4], batch, seq, hidden)
            });
            let wrap = |need: bool, s: crate::backend::Storage, shape: crate::Shape| {
                need.then(|| Tensor::from_storage(s, shape, device.clone()))
            };
            vec![
                wrap(c.needs[0], dp, [batch, seq, 4 * hidden].into()),
                wrap(c.needs[1], dw, [4 * hidden, hidden].into()),
                wrap(c.needs[2], dhc0, [batch, 2 * hidden].into()),
            ]
        }))
    }
}

/// `[rows, cols]` of 1 where `column - row ≤ diagonal` (`lower`) or
/// `≥ diagonal`, else 0.
fn triangle_mask(rows: usize, cols: usize, diagonal: i64, lower: bool, device: &crate::Device) -> Tensor {
    Tensor::generate("triangle mask", [rows, cols].into(), device, |i| {
        let offset = (i % cols) as i64 - (i / cols) as i64;
        f32::from(if lower { offset <= diagonal } else { offset >= diagonal })
    })
}

/// Scaled dot-product attention, PyTorch's
/// `F.scaled_dot_product_attention(q, k, v, is_causal=causal)`:
/// `softmax(q·kᵀ/√d) · v` for `q` of shape `[…, seq_q, d]`, `k` of
/// `[…, seq_k, d]` and `v` of `[…, seq_k, d_v]` (the leading axes, batch
/// and heads, broadcast). With `causal`, query `i` attends to keys
/// `j ≤ i` only (the top-left-aligned triangle, as PyTorch).
///
/// Built from batched matmuls and a softmax along the keys (which
/// subtracts the row maximum: scores of any size stay finite); the masked
/// scores are set to `-∞` before it, so they weigh exactly 0. On the GPU
/// every step stays on the device: two batched matmul kernels, the scale
/// and mask fused into one elementwise kernel, one softmax kernel. A fused
/// flash-attention kernel (scores never written to memory) pays on real
/// GPUs at long sequences; at the context lengths this engine trains
/// (tens to hundreds of tokens) the scores are small, and the composite
/// keeps the backward exact and shared with the ops it is made of.
///
/// # Panics
/// If the ranks are below 2 or differ, or `q`, `k` and `v` disagree on
/// `d`, on the key length, or on the leading axes; the message names the
/// op and the shapes.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let r = qd.len();
    let ok = r >= 2
        && kd.len() == r
        && vd.len() == r
        && qd[r - 1] == kd[r - 1]
        && kd[r - 2] == vd[r - 2]
        && kd[..r - 2] == vd[..r - 2];
    assert!(
        ok,
        "scaled_dot_product_attention: q {}, k {} and v {} do not fit [.., seq_q, d], [.., seq_k, d], [.., seq_k, d_v]",
        q.shape(),
        k.shape(),
        v.shape()
    );
    same_device("scaled_dot_product_attention", q, k);
    same_device("scaled_dot_product_attention", q, v);
    let scale = 1.0 / (qd[r - 1] as f32).sqrt();
    // q·kᵀ with kᵀ read through the matmul's transpose flag, not copied.
    let mut scores = q.matmul_t(k, false, true) * scale;
    if causal {
        // PyTorch's math path: an additive bias of 0 and -∞, which the GPU
        // fuses with the scaling into one elementwise kernel.
        let (sq, sk) = (qd[r - 2], kd[r - 2]);
        let bias = Tensor::generate("causal mask", [sq, sk].into(), &q.device(), |i| {
            if i % sk > i / sk { f32::NEG_INFINITY } else { 0.0 }
        });
        scores = &scores + &bias;
    }
    scores.softmax(-1).matmul(v)
}

/// Options of [`sample`]: PyTorch/Hugging Face's generation knobs.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Logits are divided by this before the softmax: below 1 sharpens
    /// the distribution, above 1 flattens it. Must be positive.
    pub temperature: f32,
    /// Sample among the `k` most likely tokens only (`None`: all).
    pub top_k: Option<usize>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_k: None }
    }
}

/// The probabilities `softmax(logits / temperature)` along the last axis,
/// with every token outside the `top_k` largest logits of its row set to
/// probability 0 (ties at the k-th logit are kept).
pub fn sampling_probs(logits: &Tensor, options: Sampling) -> Tensor {
    assert!(
        options.temperature > 0.0 && options.temperature.is_finite(),
        "sampling_probs: temperature {} is not a positive number",
        options.temperature
    );
    let mut scaled = logits.div_scalar(options.temperature);
    if let Some(k) = options.top_k {
        let classes = logits.dims().last().copied().unwrap_or(0);
        assert!(k >= 1, "sampling_probs: top_k must be at least 1");
        if k < classes {
            let (top, _) = scaled.topk(k, -1, true);
            let kth = top.narrow(-1, k - 1, 1);
            scaled = scaled.masked_fill(&scaled.lt(&kth), f32::NEG_INFINITY);
        }
    }
    scaled.softmax(-1)
}

/// Draws one index per row of `probs` (`[classes]` or `[rows, classes]`,
/// non-negative weights, not necessarily normalised) from `generator`:
/// PyTorch's `torch.multinomial(probs, 1)`. Reads the probabilities back
/// to the host (sampling is a host step of generation). A row with no
/// positive finite weight is an error.
pub fn multinomial(probs: &Tensor, generator: &mut Generator) -> Result<Vec<usize>> {
    assert!(
        (1..=2).contains(&probs.rank()),
        "multinomial: expected [classes] or [rows, classes], got {}",
        probs.shape()
    );
    let classes = *probs.dims().last().expect("rank ≥ 1");
    let rows = if probs.rank() == 1 { 1 } else { probs.dims()[0] };
    if classes == 0 && rows > 0 {
        return Err(crate::Error::InvalidArgument { op: "multinomial", msg: "no classes to draw from".into() });
    }
    let values = probs.to_vec()?;
    let mut out = Vec::new();
    for row in values.chunks(classes.max(1)) {
        let total: f64 = row.iter().map(|&p| f64::from(p)).sum();
        if !(total > 0.0 && total.is_finite()) || row.iter().any(|&p| p < 0.0) {
            return Err(crate::Error::InvalidArgument {
                op: "multinomial",
                msg: format!("a row of weights that sums to {total} or holds a negative one"),
            });
        }
        let mut u = f64::from(generator.uniform()) * total;
        let mut pick = classes - 1;
        for (i, &p) in row.iter().enumerate() {
            if p > 0.0 && u < f64::from(p) {
                pick = i;
                break;
            }
            u -= f64::from(p);
        }
        // Rounding can leave `u` past the last positive weight: take it.
        if row[pick] <= 0.0 {
            pick = row.iter().rposition(|&p| p > 0.0).expect("a positive weight");
        }
        out.push(pick);
    }
    Ok(out)
}

/// Samples one token per row of `logits` (`[classes]` or
/// `[rows, classes]`): [`sampling_probs`] then [`multinomial`].
pub fn sample(logits: &Tensor, options: Sampling, generator: &mut Generator) -> Result<Vec<usize>> {
    multinomial(&crate::no_grad(|| sampling_probs(logits, options)), generator)
}
