//! Small ready-made models built from [`crate::nn`]: the character-level
//! language models of `examples/names.rs`, which `cpu_vs_gpu` and the tests
//! train too. Their `state_dict` names are those of the PyTorch twins in
//! `benches/names_torch.py`, so weights move between the two.

use crate::nn::{Embedding, EvalMode, LSTM, LayerNorm, Linear, Module, TransformerBlock, Visitor, torch_linear};
use crate::rng::{Generator, with_default_generator};
use crate::{Device, Result, Sampling, Tensor, no_grad, sample};

/// The size of a [`Gpt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptConfig {
    /// Tokens.
    pub vocab: usize,
    /// The longest sequence (the position table's length).
    pub context: usize,
    /// Features.
    pub d_model: usize,
    /// Attention heads (dividing `d_model`).
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
}

/// A GPT: token and position embeddings (`wte`, `wpe`), pre-norm causal
/// [`TransformerBlock`]s (`blocks.{i}`, an MLP of `4·d_model`), a final
/// [`LayerNorm`] (`ln_f`) and a linear head (`lm_head`). Input `[batch,
/// seq]` token ids (seq ≤ context), output `[batch, seq, vocab]` logits.
pub struct Gpt {
    /// Token embedding.
    pub wte: Embedding,
    /// Position embedding.
    pub wpe: Embedding,
    /// The blocks.
    pub blocks: Vec<TransformerBlock>,
    /// The final normalisation.
    pub ln_f: LayerNorm,
    /// Logits.
    pub lm_head: Linear,
    config: GptConfig,
}

impl Gpt {
    /// Drawn from the calling thread's default generator, PyTorch's
    /// initialisation.
    pub fn new(config: GptConfig, device: &Device) -> Self {
        with_default_generator(|g| {
            let GptConfig { vocab, context, d_model, heads, layers } = config;
            Gpt {
                wte: Embedding::with_generator(vocab, d_model, g, device),
                wpe: Embedding::with_generator(context, d_model, g, device),
                blocks: (0..layers)
                    .map(|_| TransformerBlock::with_generator(d_model, heads, 4 * d_model, true, g, device))
                    .collect(),
                ln_f: LayerNorm::new([d_model], device),
                lm_head: torch_linear(d_model, vocab, g, device),
                config,
            }
        })
    }

    /// Its size.
    pub fn config(&self) -> GptConfig {
        self.config
    }
}

impl Module for Gpt {
    fn forward(&self, ids: &Tensor) -> Tensor {
        assert!(
            ids.rank() == 2 && ids.dims()[1] <= self.config.context,
            "Gpt: expected [batch, seq ≤ {}] token ids, got {}",
            self.config.context,
            ids.shape()
        );
        let positions = Tensor::arange(0.0, ids.dims()[1] as f32, &ids.device());
        let mut h = &self.wte.forward(ids) + &self.wpe.forward(&positions);
        for b in &self.blocks {
            h = b.forward(&h);
        }
        self.lm_head.forward(&self.ln_f.forward(&h))
    }

    fn visit(&self, v: &mut Visitor) {
        v.child("wte", &self.wte);
        v.child("wpe", &self.wpe);
        for (i, b) in self.blocks.iter().enumerate() {
            v.child(&format!("blocks.{i}"), b);
        }
        v.child("ln_f", &self.ln_f);
        v.child("lm_head", &self.lm_head);
    }

    fn describe(&self) -> String {
        let c = self.config;
        format!(
            "Gpt(vocab {}, context {}, d_model {}, heads {}, layers {})",
            c.vocab, c.context, c.d_model, c.heads, c.layers
        )
    }
}

/// An LSTM language model: an embedding (`wte`), an [`LSTM`] (`lstm`) and
/// a linear head (`lm_head`). Input `[batch, seq]` token ids, output
/// `[batch, seq, vocab]` logits.
pub struct LstmLm {
    /// Token embedding.
    pub wte: Embedding,
    /// The recurrence.
    pub lstm: LSTM,
    /// Logits.
    pub lm_head: Linear,
}

impl LstmLm {
    /// `vocab` tokens embedded in `embed` features, `layers` layers of
    /// `hidden`, drawn from the calling thread's default generator.
    pub fn new(vocab: usize, embed: usize, hidden: usize, layers: usize, device: &Device) -> Self {
        with_default_generator(|g| LstmLm {
            wte: Embedding::with_generator(vocab, embed, g, device),
            lstm: LSTM::with_generator(embed, hidden, layers, g, device),
            lm_head: torch_linear(hidden, vocab, g, device),
        })
    }
}

impl Module for LstmLm {
    fn forward(&self, ids: &Tensor) -> Tensor {
        self.lm_head.forward(&self.lstm.forward(&self.wte.forward(ids)))
    }

    fn visit(&self, v: &mut Visitor) {
        v.child("wte", &self.wte);
        v.child("lstm", &self.lstm);
        v.child("lm_head", &self.lm_head);
    }

    fn describe(&self) -> String {
        format!("LstmLm({}, {})", self.wte.describe(), self.lstm.describe())
    }
}

/// Generates `count` sequences from `model` (a `[batch, seq]` → `[batch,
/// seq, vocab]` language model), each starting from token `start` and
/// ending at `end` (not included) or after `max_len` tokens: all sequences
/// at once, one forward per position over the whole prefix, sampling the
/// next tokens with `options` from `generator`. The model is run in
/// evaluation mode and without a tape; its mode flags are restored (also
/// on an error or a panic). The longest
/// sequence fed to the model is `max_len` tokens: at most a [`Gpt`]'s
/// context.
pub fn generate(
    model: &dyn Module,
    count: usize,
    (start, end): (usize, usize),
    max_len: usize,
    options: Sampling,
    generator: &mut Generator,
    device: &Device,
) -> Result<Vec<Vec<usize>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let _mode = EvalMode::enter(model);
    no_grad(|| {
        let mut seqs: Vec<Vec<usize>> = vec![vec![start]; count];
        let mut done = vec![false; count];
        for _ in 0..max_len {
            if done.iter().all(|&d| d) {
                break;
            }
            let len = seqs[0].len();
            let ids: Vec<f32> = seqs.iter().flat_map(|s| s.iter().map(|&t| t as f32)).collect();
            let logits = model.forward(&Tensor::from_vec(ids, [count, len], device)?);
            let last = logits.narrow(1, len - 1, 1).squeeze(1);
            for (i, next) in sample(&last, options, generator)?.into_iter().enumerate() {
                done[i] |= next == end;
                seqs[i].push(if done[i] { end } else { next });
            }
        }
        Ok(seqs.into_iter().map(|s| s[1..].iter().copied().take_while(|&t| t != end).collect()).collect())
    })
}
