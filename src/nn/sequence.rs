//! Layers of sequence models: [`Embedding`], [`LayerNorm`],
//! [`MultiheadAttention`], the pre-norm [`TransformerBlock`] of a GPT, and
//! the recurrent [`LSTM`] and [`GRU`]. Parameter names, layouts, gate
//! orders and initialisations are PyTorch's, so a `state_dict` saved here
//! loads into the PyTorch module each names (and back).

use super::{Linear, Module, Visitor};
use crate::rng::{Generator, with_default_generator};
use crate::{Device, Tensor, scaled_dot_product_attention};

/// PyTorch's `nn.Linear` initialisation: weight and bias both
/// `U(±1/√in)`.
pub(crate) fn torch_linear(inputs: usize, outputs: usize, g: &mut Generator, device: &Device) -> Linear {
    let bound = 1.0 / (inputs.max(1) as f32).sqrt();
    Linear {
        weight: Tensor::rand_uniform_with([outputs, inputs], -bound, bound, g, device).requires_grad(),
        bias: Some(Tensor::rand_uniform_with([outputs], -bound, bound, g, device).requires_grad()),
    }
}

/// A lookup table of `num_embeddings` vectors of `dim` (PyTorch's
/// `nn.Embedding`: `weight` of `[num_embeddings, dim]`, drawn from N(0, 1)).
/// Its input is a tensor of integer-valued ids of any shape; its output
/// has that shape plus `[dim]`. An id that is negative, fractional or not
/// below `num_embeddings` is a [`crate::Error::IndexOutOfRange`] when the
/// result is read, on both devices. The backward adds each output row's
/// gradient into its id's row (repeated ids accumulate), in time
/// proportional to the number of ids.
pub struct Embedding {
    /// `[num_embeddings, dim]`.
    pub weight: Tensor,
    /// PyTorch's `padding_idx`: this id's row starts at zeros and gets no
    /// gradient (its value is still what the forward returns: a loaded
    /// non-zero row is used as is, and decoupled weight decay shrinks it,
    /// as in PyTorch).
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// A table drawn from the calling thread's default generator.
    pub fn new(num_embeddings: usize, dim: usize, device: &Device) -> Self {
        with_default_generator(|g| Embedding::with_generator(num_embeddings, dim, g, device))
    }

    /// A table drawn from `generator`.
    pub fn with_generator(num_embeddings: usize, dim: usize, g: &mut Generator, device: &Device) -> Self {
        let weight = Tensor::randn_with([num_embeddings, dim], 0.0, 1.0, g, device).requires_grad();
        Embedding { weight, padding_idx: None }
    }

    /// A table (drawn as [`new`](Self::new)) whose row `padding_idx` is
    /// zeros and never trained, as PyTorch's `nn.Embedding(n, dim,
    /// padding_idx=..)`: the id of padding in batches of sequences.
    pub fn with_padding_idx(num_embeddings: usize, dim: usize, padding_idx: usize, device: &Device) -> Self {
        assert!(
            padding_idx < num_embeddings,
            "Embedding: padding_idx {padding_idx} is not below num_embeddings {num_embeddings}"
        );
        let mut keep = vec![1.0; num_embeddings];
        keep[padding_idx] = 0.0;
        let keep = Tensor::from_vec(keep, [num_embeddings, 1], device).expect("a column");
        let drawn = with_default_generator(|g| Tensor::randn_with([num_embeddings, dim], 0.0, 1.0, g, device));
        let weight = keep.where_cond(&drawn, &Tensor::zeros([], device)).requires_grad();
        Embedding { weight, padding_idx: Some(padding_idx) }
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Tensor {
        let dim = self.weight.dims()[1];
        let mut shape = ids.dims().to_vec();
        shape.push(dim);
        let flat = ids.reshape([ids.elem_count()]);
        let rows = self.weight.index_select(0, &flat);
        let rows = match self.padding_idx {
            // The same values; the padding positions' gradient stops here.
            Some(p) if rows.is_tracked() => flat.ne_scalar(p as f32).unsqueeze(-1).where_cond(&rows, &rows.detach()),
            _ => rows,
        };
        rows.reshape(shape)
    }

    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
    }

    fn describe(&self) -> String {
        let d = self.weight.dims();
        match self.padding_idx {
            Some(p) => format!("Embedding({}, {}, padding_idx={p})", d[0], d[1]),
            None => format!("Embedding({}, {})", d[0], d[1]),
        }
    }
}

/// Layer normalisation over the last axes (PyTorch's `nn.LayerNorm`,
/// `elementwise_affine=True`): `weight` (ones) and `bias` (zeros) of the
/// normalised shape, eps 1e-5 by default. See [`Tensor::layer_norm`].
pub struct LayerNorm {
    /// The normalised shape (the input's last axes).
    pub weight: Tensor,
    /// The normalised shape.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Normalising the last axes of shape `normalized_shape`.
    pub fn new(normalized_shape: impl Into<crate::Shape>, device: &Device) -> Self {
        let shape = normalized_shape.into();
        LayerNorm {
            weight: Tensor::ones(shape.clone(), device).requires_grad(),
            bias: Tensor::zeros(shape, device).requires_grad(),
            eps: 1e-5,
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let normalized = self.weight.dims();
        let r = x.rank();
        assert!(
            r >= normalized.len() && &x.dims()[r - normalized.len()..] == normalized,
            "{}: input of shape {} does not end in the normalised shape {}",
            self.describe(),
            x.shape(),
            self.weight.shape()
        );
        x.layer_norm(normalized.len(), Some(&self.weight), Some(&self.bias), self.eps)
    }

    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
        v.param("bias", &self.bias);
    }

    fn describe(&self) -> String {
        format!("LayerNorm({:?})", self.weight.dims())
    }
}

/// Multi-head self-attention over `[batch, seq, embed]` inputs (PyTorch's
/// `nn.MultiheadAttention(embed, heads, batch_first=True)` called as
/// `mha(x, x, x, attn_mask=causal mask, need_weights=False)`): one
/// projection to queries, keys and values (`in_proj_weight` `[3·embed,
/// embed]`, Xavier-uniform; `in_proj_bias` zeros), `heads` heads of
/// [`scaled_dot_product_attention`], and `out_proj` (bias zeros).
pub struct MultiheadAttention {
    /// `[3·embed, embed]`: the query, key and value projections stacked.
    pub in_proj_weight: Tensor,
    /// `[3·embed]`.
    pub in_proj_bias: Tensor,
    /// `embed → embed`.
    pub out_proj: Linear,
    /// Heads; divides `embed`.
    pub heads: usize,
    /// Position `i` attends to positions `≤ i` only.
    pub causal: bool,
}

impl MultiheadAttention {
    /// `heads` heads over `embed` features, drawn from the calling thread's
    /// default generator.
    ///
    /// # Panics
    /// If `heads` does not divide `embed`.
    pub fn new(embed: usize, heads: usize, causal: bool, device: &Device) -> Self {
        with_default_generator(|g| MultiheadAttention::with_generator(embed, heads, causal, g, device))
    }

    /// Drawn from `generator`.
    pub fn with_generator(embed: usize, heads: usize, causal: bool, g: &mut Generator, device: &Device) -> Self {
        assert!(
            heads > 0 && embed % heads == 0,
            "MultiheadAttention: {heads} heads do not divide the embedding size {embed}"
        );
        let bound = (6.0 / (embed + 3 * embed) as f32).sqrt();
        let mut out_proj = torch_linear(embed, embed, g, device);
        out_proj.bias = Some(Tensor::zeros([embed], device).requires_grad());
        MultiheadAttention {
            in_proj_weight: Tensor::rand_uniform_with([3 * embed, embed], -bound, bound, g, device).requires_grad(),
            in_proj_bias: Tensor::zeros([3 * embed], device).requires_grad(),
            out_proj,
            heads,
            causal,
        }
    }
}

impl Module for MultiheadAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let embed = self.in_proj_weight.dims()[1];
        assert!(
            x.rank() == 3 && x.dims()[2] == embed,
            "{}: expected [batch, seq, {embed}] input, got {}",
            self.describe(),
            x.shape()
        );
        let (b, s, h) = (x.dims()[0], x.dims()[1], self.heads);
        let d = embed / h;
        // [b, s, 3·embed] → three [b, h, s, d].
        // One copy into [3, b, h, s, d]; each of q, k, v is then a
        // contiguous block of it.
        let qkv =
            x.linear(&self.in_proj_weight, Some(&self.in_proj_bias)).reshape([b, s, 3, h, d]).permute(&[2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.narrow(0, i, 1).reshape([b, h, s, d]);
        let y = scaled_dot_product_attention(&part(0), &part(1), &part(2), self.causal);
        self.out_proj.forward(&y.permute(&[0, 2, 1, 3]).reshape([b, s, embed]))
    }

    fn visit(&self, v: &mut Visitor) {
        v.param("in_proj_weight", &self.in_proj_weight);
        v.param("in_proj_bias", &self.in_proj_bias);
        v.child("out_proj", &self.out_proj);
    }

    fn describe(&self) -> String {
        let e = self.in_proj_weight.dims()[1];
        format!("MultiheadAttention({e}, heads {}{})", self.heads, if self.causal { ", causal" } else { "" })
    }
}

/// The pre-norm transformer block of GPT-2:
/// `x = x + attn(norm1(x)); x = x + linear2(gelu(linear1(norm2(x))))`.
/// PyTorch's `nn.TransformerEncoderLayer(d_model, nhead,
/// dim_feedforward, dropout=0.0, activation="gelu", batch_first=True,
/// norm_first=True)` called with a causal mask (`is_causal=True`) when
/// `causal`: the same parameter names (`self_attn.*`, `linear1.*`,
/// `linear2.*`, `norm1.*`, `norm2.*`) and initialisation. Its GELU is
/// the exact one, as that layer's `activation="gelu"`; GPT-2's own weights
/// were trained with the tanh approximation ([`Tensor::gelu_tanh`]), which
/// differs by up to ~5e-4 per activation.
pub struct TransformerBlock {
    /// Attention.
    pub self_attn: MultiheadAttention,
    /// `d_model → dim_feedforward`.
    pub linear1: Linear,
    /// `dim_feedforward → d_model`.
    pub linear2: Linear,
    /// Before attention.
    pub norm1: LayerNorm,
    /// Before the MLP.
    pub norm2: LayerNorm,
}

impl TransformerBlock {
    /// A block of `d_model` features, `heads` heads and an MLP of
    /// `dim_feedforward` (GPT uses `4 · d_model`), drawn from the calling
    /// thread's default generator.
    pub fn new(d_model: usize, heads: usize, dim_feedforward: usize, causal: bool, device: &Device) -> Self {
        with_default_generator(|g| TransformerBlock::with_generator(d_model, heads, dim_feedforward, causal, g, device))
    }

    /// Drawn from `generator`.
    pub fn with_generator(
        d_model: usize,
        heads: usize,
        dim_feedforward: usize,
        causal: bool,
        g: &mut Generator,
        device: &Device,
    ) -> Self {
        TransformerBlock {
            self_attn: MultiheadAttention::with_generator(d_model, heads, causal, g, device),
            linear1: torch_linear(d_model, dim_feedforward, g, device),
            linear2: torch_linear(dim_feedforward, d_model, g, device),
            norm1: LayerNorm::new([d_model], device),
            norm2: LayerNorm::new([d_model], device),
        }
    }
}

impl Module for TransformerBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + &self.self_attn.forward(&self.norm1.forward(x));
        let mlp = self.linear2.forward(&self.linear1.forward(&self.norm2.forward(&x)).gelu());
        &x + &mlp
    }

    fn visit(&self, v: &mut Visitor) {
        v.child("self_attn", &self.self_attn);
        v.child("linear1", &self.linear1);
        v.child("linear2", &self.linear2);
        v.child("norm1", &self.norm1);
        v.child("norm2", &self.norm2);
    }

    fn describe(&self) -> String {
        format!("TransformerBlock({}, mlp {})", self.linear1.weight.dims()[1], self.linear1.weight.dims()[0])
    }
}

/// One layer's weights of a recurrent network, PyTorch's layout:
/// `weight_ih` `[gates·hidden, input]`, `weight_hh` `[gates·hidden,
/// hidden]`, and the two biases, all `U(±1/√hidden)`.
struct RnnLayer {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
}

impl RnnLayer {
    fn new(gates: usize, input: usize, hidden: usize, g: &mut Generator, device: &Device) -> Self {
        let k = 1.0 / (hidden.max(1) as f32).sqrt();
        let mut u = |shape: &[usize]| Tensor::rand_uniform_with(shape.to_vec(), -k, k, g, device).requires_grad();
        RnnLayer {
            weight_ih: u(&[gates * hidden, input]),
            weight_hh: u(&[gates * hidden, hidden]),
            bias_ih: u(&[gates * hidden]),
            bias_hh: u(&[gates * hidden]),
        }
    }

    fn visit(&self, v: &mut Visitor, layer: usize) {
        v.param(&format!("weight_ih_l{layer}"), &self.weight_ih);
        v.param(&format!("weight_hh_l{layer}"), &self.weight_hh);
        v.param(&format!("bias_ih_l{layer}"), &self.bias_ih);
        v.param(&format!("bias_hh_l{layer}"), &self.bias_hh);
    }
}

/// Checks a recurrent layer's `[batch, seq, features]` input.
fn check_sequence(what: &str, x: &Tensor, features: usize) -> (usize, usize) {
    assert!(
        x.rank() == 3 && x.dims()[2] == features,
        "{what}: expected a batch-first [batch, seq, {features}] input, got {}",
        x.shape()
    );
    (x.dims()[0], x.dims()[1])
}

/// The `[batch, hidden]` gate slice `i` of `[batch, gates·hidden]`.
fn gate(all: &Tensor, i: usize, hidden: usize) -> Tensor {
    all.narrow(1, i * hidden, hidden)
}

/// Stacks `[batch, hidden]` steps into `[batch, seq, hidden]`.
fn stack_steps(steps: &[Tensor]) -> Tensor {
    let steps: Vec<Tensor> = steps.iter().map(|h| h.unsqueeze(1)).collect();
    Tensor::cat(&steps.iter().collect::<Vec<_>>(), 1)
}

/// A long short-term memory network, batch-first (PyTorch's
/// `nn.LSTM(input, hidden, num_layers, batch_first=True)`): per layer
/// `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` with
/// the gates in PyTorch's order (input, forget, cell, output). The input
/// projections of every step are one matmul; the recurrence is then one
/// fused op per layer on the CPU (each thread runs the whole sequence for
/// its block of batch rows, and the backward through time is one pass),
/// and on a GPU it is unrolled on the tape: per step one `[batch,
/// hidden]·[hidden, 4·hidden]` matmul and the gate arithmetic as one fused
/// kernel (forward and backward).
pub struct LSTM {
    layers: Vec<RnnLayer>,
    hidden: usize,
}

/// The `(h, c)` state of every layer of an [`LSTM`]: each `[layers, batch,
/// hidden]`, PyTorch's `(h_n, c_n)`.
pub type LstmState = (Tensor, Tensor);

impl LSTM {
    /// `layers` layers, drawn from the calling thread's default generator.
    pub fn new(input: usize, hidden: usize, layers: usize, device: &Device) -> Self {
        with_default_generator(|g| LSTM::with_generator(input, hidden, layers, g, device))
    }

    /// Drawn from `generator`.
    pub fn with_generator(input: usize, hidden: usize, layers: usize, g: &mut Generator, device: &Device) -> Self {
        assert!(layers >= 1, "LSTM: needs at least one layer");
        let layers = (0..layers).map(|l| RnnLayer::new(4, if l == 0 { input } else { hidden }, hidden, g, device));
        LSTM { layers: layers.collect(), hidden }
    }

    /// The output sequence `[batch, seq, hidden]` (the last layer's `h` at
    /// every step) and the final state, from `state` (zeros if `None`).
    pub fn forward_with_state(&self, x: &Tensor, state: Option<&LstmState>) -> (Tensor, LstmState) {
        self.run(x, state, true)
    }

    /// [`forward_with_state`](Self::forward_with_state), each layer one
    /// fused op where the backend has one (`fused`) or unrolled per step.
    fn run(&self, x: &Tensor, state: Option<&LstmState>, fused: bool) -> (Tensor, LstmState) {
        let input = self.layers[0].weight_ih.dims()[1];
        let (batch, seq) = check_sequence("LSTM", x, input);
        let hd = self.hidden;
        if let Some((h0, c0)) = state {
            let want = [self.layers.len(), batch, hd];
            assert!(
                h0.dims() == want && c0.dims() == want,
                "LSTM: initial state of shapes {} and {}, expected {want:?}",
                h0.shape(),
                c0.shape()
            );
        }
        let mut layer_input = x.clone();
        let (mut hs, mut cs) = (Vec::new(), Vec::new());
        for (l, layer) in self.layers.iter().enumerate() {
            // The state as one [batch, 2·hidden] tensor, [h | c]: what the
            // fused cell reads and writes.
            let hc0 = match state {
                Some((h0, c0)) => {
                    let layer_of = |t: &Tensor| t.narrow(0, l, 1).squeeze(0);
                    Tensor::cat(&[&layer_of(h0), &layer_of(c0)], 1)
                }
                None => Tensor::zeros([batch, 2 * hd], &x.device()),
            };
            // Every step's input projection, both biases folded in: [batch, seq, 4h].
            let projected = layer_input.linear(&layer.weight_ih, Some(&(&layer.bias_ih + &layer.bias_hh)));
            // The whole layer as one op (the CPU's: one pass forward, one
            // backward through time), or unrolled on the tape: per step one
            // matmul and the fused cell (a GPU runs these as kernels anyway).
            let whole = if fused && seq > 0 { projected.lstm_layer(&layer.weight_hh, &hc0) } else { None };
            let hc = match whole {
                Some(states) => {
                    layer_input = states.narrow(2, 0, hd);
                    states.narrow(1, seq - 1, 1).squeeze(1)
                }
                None => {
                    let w_hh_t = layer.weight_hh.t();
                    let mut hc = hc0;
                    let mut states = Vec::with_capacity(seq);
                    for t in 0..seq {
                        let h = hc.narrow(1, 0, hd);
                        let gates = &projected.narrow(1, t, 1).squeeze(1) + &h.matmul(&w_hh_t);
                        hc = gates.lstm_cell(&hc);
                        states.push(hc.clone());
                    }
                    layer_input = if seq == 0 {
                        Tensor::zeros([batch, 0, hd], &x.device())
                    } else {
                        // [batch, seq, 2h] → the h half.
                        stack_steps(&states).narrow(2, 0, hd)
                    };
                    hc
                }
            };
            hs.push(hc.narrow(1, 0, hd).unsqueeze(0));
            cs.push(hc.narrow(1, hd, hd).unsqueeze(0));
        }
        let cat = |v: &[Tensor]| Tensor::cat(&v.iter().collect::<Vec<_>>(), 0);
        (layer_input, (cat(&hs), cat(&cs)))
    }
}

impl Module for LSTM {
    /// The output sequence, from a zero state.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with_state(x, None).0
    }

    fn visit(&self, v: &mut Visitor) {
        for (l, layer) in self.layers.iter().enumerate() {
            layer.visit(v, l);
        }
    }

    fn describe(&self) -> String {
        let input = self.layers[0].weight_ih.dims()[1];
        format!("LSTM({input}, {}, layers {})", self.hidden, self.layers.len())
    }
}

/// A gated recurrent unit network, batch-first (PyTorch's
/// `nn.GRU(input, hidden, num_layers, batch_first=True)`): the same
/// parameter names as [`LSTM`], gates in PyTorch's order (reset, update,
/// new), and PyTorch's `n = tanh(W_in·x + b_in + r ⊙ (W_hn·h + b_hn))`,
/// `h' = (1 - z) ⊙ n + z ⊙ h`.
pub struct GRU {
    layers: Vec<RnnLayer>,
    hidden: usize,
}

impl GRU {
    /// `layers` layers, drawn from the calling thread's default generator.
    pub fn new(input: usize, hidden: usize, layers: usize, device: &Device) -> Self {
        with_default_generator(|g| GRU::with_generator(input, hidden, layers, g, device))
    }

    /// Drawn from `generator`.
    pub fn with_generator(input: usize, hidden: usize, layers: usize, g: &mut Generator, device: &Device) -> Self {
        assert!(layers >= 1, "GRU: needs at least one layer");
        let layers = (0..layers).map(|l| RnnLayer::new(3, if l == 0 { input } else { hidden }, hidden, g, device));
        GRU { layers: layers.collect(), hidden }
    }

    /// The output sequence `[batch, seq, hidden]` and the final `h` of
    /// every layer, `[layers, batch, hidden]`, from `h0` (zeros if `None`).
    pub fn forward_with_state(&self, x: &Tensor, h0: Option<&Tensor>) -> (Tensor, Tensor) {
        let input = self.layers[0].weight_ih.dims()[1];
        let (batch, seq) = check_sequence("GRU", x, input);
        let hd = self.hidden;
        if let Some(h0) = h0 {
            let want = [self.layers.len(), batch, hd];
            assert!(h0.dims() == want, "GRU: initial state of shape {}, expected {want:?}", h0.shape());
        }
        let mut layer_input = x.clone();
        let mut hs = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let mut h = match h0 {
                Some(h0) => h0.narrow(0, l, 1).squeeze(0),
                None => Tensor::zeros([batch, hd], &x.device()),
            };
            let projected = layer_input.linear(&layer.weight_ih, Some(&layer.bias_ih));
            let mut outputs = Vec::with_capacity(seq);
            for t in 0..seq {
                let xg = projected.narrow(1, t, 1).squeeze(1);
                let hg = h.linear(&layer.weight_hh, Some(&layer.bias_hh));
                let r = (&gate(&xg, 0, hd) + &gate(&hg, 0, hd)).sigmoid();
                let z = (&gate(&xg, 1, hd) + &gate(&hg, 1, hd)).sigmoid();
                let n = (&gate(&xg, 2, hd) + &(&r * &gate(&hg, 2, hd))).tanh();
                // (1 - z)·n + z·h = n + z·(h - n)
                h = &n + &(&z * &(&h - &n));
                outputs.push(h.clone());
            }
            layer_input = if seq == 0 { Tensor::zeros([batch, 0, hd], &x.device()) } else { stack_steps(&outputs) };
            hs.push(h.unsqueeze(0));
        }
        (layer_input, Tensor::cat(&hs.iter().collect::<Vec<_>>(), 0))
    }
}

impl Module for GRU {
    /// The output sequence, from a zero state.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with_state(x, None).0
    }

    fn visit(&self, v: &mut Visitor) {
        for (l, layer) in self.layers.iter().enumerate() {
            layer.visit(v, l);
        }
    }

    fn describe(&self) -> String {
        let input = self.layers[0].weight_ih.dims()[1];
        format!("GRU({input}, {}, layers {})", self.hidden, self.layers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's fused LSTM layer (forward, and backward through time)
    /// against the unrolled per-step tape, which the GPU runs and which
    /// the PyTorch-reference tests pin: values and every gradient, at
    /// sizes whose batch splits unevenly over threads (and batch 1), two
    /// layers, from a given state and from zeros.
    #[test]
    fn fused_lstm_layer_matches_the_unrolled_steps() {
        let dev = Device::Cpu;
        let mut g = Generator::new(11);
        // Hidden 33: two full 16-lane blocks and a partial one.
        for (batch, seq, hidden, state) in
            [(3, 5, 7, true), (1, 4, 9, false), (5, 1, 3, true), (6, 6, 16, false), (2, 3, 33, true)]
        {
            let lstm = LSTM::with_generator(4, hidden, 2, &mut g, &dev);
            let x = Tensor::randn_with([batch, seq, 4], 0.0, 1.0, &mut g, &dev).requires_grad();
            let h0 = Tensor::randn_with([2, batch, hidden], 0.0, 1.0, &mut g, &dev).requires_grad();
            let c0 = Tensor::randn_with([2, batch, hidden], 0.0, 1.0, &mut g, &dev).requires_grad();
            let weights = Tensor::randn_with([batch, seq, hidden], 0.0, 1.0, &mut g, &dev);
            let run = |fused: bool| {
                let st = (h0.clone(), c0.clone());
                let (y, (hn, cn)) = lstm.run(&x, state.then_some(&st), fused);
                // A loss reading every step's h and the final h and c.
                let loss = (&y * &weights).sum() + (&hn * &hn).sum() + cn.sum() * 0.5;
                let grads = loss.backward();
                let mut params = vec![&x];
                let layer_params: Vec<&Tensor> =
                    lstm.layers.iter().flat_map(|l| [&l.weight_ih, &l.weight_hh, &l.bias_ih, &l.bias_hh]).collect();
                params.extend(layer_params);
                if state {
                    params.extend([&h0, &c0]);
                }
                let mut out = vec![y.to_vec().unwrap(), hn.to_vec().unwrap(), cn.to_vec().unwrap()];
                out.extend(params.iter().map(|p| grads.get(p).expect("a gradient").to_vec().unwrap()));
                out
            };
            let (fused, unrolled) = (run(true), run(false));
            for (k, (a, b)) in fused.iter().zip(&unrolled).enumerate() {
                assert_eq!(a.len(), b.len());
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    // Same formulas, different summation order in the GEMMs.
                    assert!(
                        (x - y).abs() <= 1e-5 + 1e-4 * y.abs(),
                        "batch {batch} seq {seq} hidden {hidden}: output {k}[{i}] fused {x} unrolled {y}"
                    );
                }
            }
        }
    }
}
