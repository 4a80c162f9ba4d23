#!/usr/bin/env python3
"""PyTorch twin of the character-level name models (makemore-style), for
comparing wgrad's names example against PyTorch on the same data, encoding,
models, optimiser and schedule.

Run (CPU; PyTorch only, no other dependency):

    python3 benches/names_torch.py --bigram                  # count baselines
    python3 benches/names_torch.py --model transformer       # 10 epochs
    python3 benches/names_torch.py --model lstm --threads 2

Options: --data DIR (default data/names next to this folder: reads train.txt
and val.txt), --model transformer|lstm, --epochs 10, --batch 64, --lr 3e-3,
--seed 0, --threads N (default: all cores), --layers (transformer 2, lstm 1),
--d-model 64, --heads 4, --hidden 128 (lstm), --samples 20, --device cpu.

Data and encoding (makemore's CharDataset)
------------------------------------------
Tokens: 0 is '.', the start/end marker; 1.. are the sorted alphabet of
train.txt, which must be 27 characters ('-' = 1, 'a' = 2, ..., 'z' = 27), so
the vocabulary is 28. Block (context) size 16, so a name holds at most 15
characters (the longest in the corpus has 15; checked). For a name of tokens
ix (length L):

    x = [0] + ix + [0] * (15 - L)          # 16 inputs
    y = ix + [0] + [-1] * (15 - L)         # 16 targets, -1 = ignored

Loss: cross-entropy of the [B, 16, 28] logits against y, ignore_index=-1,
mean over the non-ignored positions (L + 1 per name).

Models (PyTorch default initialisation everywhere, no dropout)
--------------------------------------------------------------
`--model transformer` (d = --d-model 64, H = --heads 4, n = --layers 2),
state_dict keys and shapes (nn.Linear stores weight as [out, in], y = x W^T + b):

    wte.weight                     [28, d]     token embedding   N(0, 1)
    wpe.weight                     [16, d]     position embedding N(0, 1)
    blocks.{i}.self_attn.in_proj_weight  [3d, d]  rows 0..d = q, d..2d = k, 2d..3d = v
    blocks.{i}.self_attn.in_proj_bias    [3d]
    blocks.{i}.self_attn.out_proj.weight [d, d]   output projection
    blocks.{i}.self_attn.out_proj.bias   [d]
    blocks.{i}.linear1.weight, .bias     [4d, d], [4d]   then GELU (exact, erf)
    blocks.{i}.linear2.weight, .bias     [d, 4d], [d]
    blocks.{i}.norm1.weight, .bias       [d]      LayerNorm eps 1e-5 (ones, zeros)
    blocks.{i}.norm2.weight, .bias       [d]
    ln_f.weight, ln_f.bias         [d]
    lm_head.weight                 [28, d]
    lm_head.bias                   [28]

  forward(x [B, T]):  h = wte(x) + wpe(arange(T))
    each block is nn.TransformerEncoderLayer(d, H, 4d, dropout=0.0,
    activation="gelu", batch_first=True, norm_first=True) called with the
    causal mask (wgrad's nn::TransformerBlock, the same names):
      h = h + self_attn(norm1(h));  h = h + linear2(gelu(linear1(norm2(h))))
      self_attn: q, k, v = in_proj(u) split in three; H heads of
               softmax(q k^T / sqrt(d/H) + causal mask) v; out_proj
    logits = lm_head(ln_f(h))      [B, T, 28]
  PyTorch's initialisation: in_proj_weight Xavier-uniform, in_proj_bias and
  out_proj.bias zeros; the other Linear weights and biases (out_proj.weight,
  linear1, linear2, lm_head) U(-1/sqrt(in), 1/sqrt(in)).

`--model lstm` (e = 64, hidden = --hidden 128, n = --layers 1):

    wte.weight                     [28, 64]
    lstm.weight_ih_l{k}            [4*hidden, in]   in = 64 for k = 0, else hidden
    lstm.weight_hh_l{k}            [4*hidden, hidden]
    lstm.bias_ih_l{k}              [4*hidden]
    lstm.bias_hh_l{k}              [4*hidden]
    lm_head.weight                 [28, hidden]
    lm_head.bias                   [28]

  forward: logits = lm_head(lstm(wte(x))) with zero initial h and c; the
  4*hidden gate rows are ordered i, f, g, o (i, f, o sigmoid, g tanh;
  c' = f*c + i*g, h' = o*tanh(c')); all LSTM parameters init
  U(-1/sqrt(hidden), 1/sqrt(hidden)).

Training and what is printed
----------------------------
torch.manual_seed(seed) before building the model. Adam(lr 3e-3, betas (0.9,
0.999), eps 1e-8, no weight decay). Each epoch the training names are shuffled
by torch.randperm with a torch.Generator seeded once with --seed, and cut into
batches of 64 (the last one smaller, kept). Per epoch one line:

    epoch E  loss L  val_loss V  chars/s C  seconds S

loss: mean training loss over the epoch's batches, each weighted by its
non-ignored targets (= per-token mean over the epoch, taken as it trains);
val_loss: per-token mean over the whole validation set, model in eval mode,
no grad; seconds: the epoch's training time (shuffle, forward, backward,
step; not the validation); chars/s: non-ignored training targets (characters
plus one end marker per name) / seconds. Before training it prints the
initial `init val_loss V`; at the end 20 sampled names (from [0], softmax of
the last position's logits at temperature 1, torch.multinomial with a
generator seeded with --seed, until '.' or 16 tokens) and `final val_loss V`.

`--bigram` (also `--unigram`) prints count baselines on the same encoding,
over the same target positions: unigram (each target by its frequency among
the training targets), bigram (next token given the current input token,
counts of training (x, y) pairs plus one, over all 28 tokens), and the
uniform ln 28.

Reference (torch 2.15.0, CPU, 2 threads, defaults, seed 0): both models have
104,732 parameters (a coincidence). val_loss: uniform 3.3322, unigram 2.8672,
bigram 2.4414; transformer init 3.5359, epoch 1 2.2322, epoch 10 2.0166,
about 33,000 chars/s; lstm init 3.3490, epoch 1 2.2056, epoch 10 1.9615,
about 62,000 chars/s. The runs are repeatable to the printed digits.
"""

import argparse
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK = 16


def read_names(path):
    with open(path, encoding="ascii") as f:
        return [line.strip() for line in f if line.strip()]


class Vocab:
    def __init__(self, train):
        chars = sorted(set("".join(train)))
        assert len(chars) == 27, f"expected 27 characters, got {len(chars)}: {''.join(chars)!r}"
        self.chars = chars
        self.stoi = {c: i + 1 for i, c in enumerate(chars)}
        self.itos = {i + 1: c for i, c in enumerate(chars)}
        self.itos[0] = "."
        self.size = len(chars) + 1

    def encode(self, names):
        """(x, y) LongTensors [N, 16] as in makemore's CharDataset."""
        longest = max(len(n) for n in names)
        assert longest <= BLOCK - 1, (
            f"a name of {longest} characters does not fit block size {BLOCK}"
            f" (at most {BLOCK - 1})")
        x = torch.zeros(len(names), BLOCK, dtype=torch.long)
        y = torch.full((len(names), BLOCK), -1, dtype=torch.long)
        for r, name in enumerate(names):
            ix = [self.stoi[c] for c in name]
            x[r, 1:1 + len(ix)] = torch.tensor(ix, dtype=torch.long)
            y[r, :len(ix)] = torch.tensor(ix, dtype=torch.long)
            y[r, len(ix)] = 0
        return x, y

    def decode(self, ix):
        return "".join(self.itos[i] for i in ix)


def block(d, heads):
    """GPT-2's pre-norm block: PyTorch's own encoder layer, used causally."""
    return nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu",
                                      batch_first=True, norm_first=True)


class Transformer(nn.Module):
    def __init__(self, vocab, d, heads, layers):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(BLOCK, d)
        self.blocks = nn.ModuleList(block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, x):
        t = x.shape[1]
        pos = torch.arange(t, device=x.device)
        h = self.wte(x) + self.wpe(pos)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        for b in self.blocks:
            h = b(h, src_mask=mask, is_causal=True)
        return self.lm_head(self.ln_f(h))


class Lstm(nn.Module):
    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.wte = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.lm_head = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.lstm(self.wte(x))
        return self.lm_head(h)


def loss_of(logits, y, reduction="mean"):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                           ignore_index=-1, reduction=reduction)


@torch.no_grad()
def evaluate(model, x, y):
    was_training = model.training
    model.eval()
    total = loss_of(model(x), y, reduction="sum").item()
    model.train(was_training)
    return total / (y >= 0).sum().item()


@torch.no_grad()
def sample(model, vocab, n, gen, device):
    model.eval()
    out = []
    for _ in range(n):
        ctx = [0]
        for _ in range(BLOCK):
            logits = model(torch.tensor([ctx], device=device))[0, -1]
            probs = F.softmax(logits / 1.0, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=gen).item()
            if nxt == 0:
                break
            ctx.append(nxt)
        out.append(vocab.decode(ctx[1:]))
    model.train()
    return out


def baselines(vocab, xt, yt, xv, yv):
    v = vocab.size
    mask_t, mask_v = yt >= 0, yv >= 0
    # unigram: each target by its frequency among the training targets
    uni = torch.bincount(yt[mask_t], minlength=v).double()
    assert (uni[yv[mask_v]] > 0).all(), "a validation target never occurs in training"
    logp_uni = (uni / uni.sum()).log()
    # bigram: counts of (input, target) pairs + 1 over the 28 next tokens
    big = torch.zeros(v, v, dtype=torch.float64)
    big.index_put_((xt[mask_t], yt[mask_t]), torch.ones(int(mask_t.sum()), dtype=torch.float64),
                   accumulate=True)
    logp_big = ((big + 1) / (big + 1).sum(1, keepdim=True)).log()

    def nll(logp, x, y, m):
        return -(logp[y[m]] if logp.dim() == 1 else logp[x[m], y[m]]).mean().item()

    print(f"targets: train {int(mask_t.sum())}  val {int(mask_v.sum())}")
    print(f"uniform  loss {math.log(v):.4f}  (ln {v})")
    print(f"unigram  train_loss {nll(logp_uni, xt, yt, mask_t):.4f}"
          f"  val_loss {nll(logp_uni, xv, yv, mask_v):.4f}")
    print(f"bigram   train_loss {nll(logp_big, xt, yt, mask_t):.4f}"
          f"  val_loss {nll(logp_big, xv, yv, mask_v):.4f}  (add-one smoothing)")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(here, "..", "data", "names"))
    p.add_argument("--model", choices=["transformer", "lstm"], default="transformer")
    p.add_argument("--bigram", action="store_true", help="print the count baselines and exit")
    p.add_argument("--unigram", action="store_true", help="same as --bigram")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="0: all cores")
    p.add_argument("--layers", type=int, default=None, help="transformer 2, lstm 1")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128, help="lstm hidden size")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    torch.set_num_threads(a.threads or os.cpu_count())
    train = read_names(os.path.join(a.data, "train.txt"))
    val = read_names(os.path.join(a.data, "val.txt"))
    vocab = Vocab(train)
    assert set("".join(val)) <= set(vocab.chars), "val.txt has characters train.txt lacks"
    xt, yt = vocab.encode(train)
    xv, yv = vocab.encode(val)
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}  device {a.device}")
    print(f"train {len(train)} names  val {len(val)} names  vocab {vocab.size}"
          f" ('.' + {''.join(vocab.chars)!r})  block {BLOCK}")

    if a.bigram or a.unigram:
        baselines(vocab, xt, yt, xv, yv)
        return

    torch.manual_seed(a.seed)
    if a.model == "transformer":
        layers = 2 if a.layers is None else a.layers
        model = Transformer(vocab.size, a.d_model, a.heads, layers)
        print(f"model transformer  layers {layers}  d_model {a.d_model}  heads {a.heads}")
    else:
        layers = 1 if a.layers is None else a.layers
        model = Lstm(vocab.size, a.d_model, a.hidden, layers)
        print(f"model lstm  layers {layers}  embed {a.d_model}  hidden {a.hidden}")
    model.to(a.device)
    print(f"parameters {sum(t.numel() for t in model.parameters())}")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)

    dev = torch.device(a.device)
    xt, yt, xv, yv = xt.to(dev), yt.to(dev), xv.to(dev), yv.to(dev)
    train_targets = int((yt >= 0).sum())
    gen = torch.Generator().manual_seed(a.seed)
    print(f"init val_loss {evaluate(model, xv, yv):.4f}")
    model.train()
    for epoch in range(1, a.epochs + 1):
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), generator=gen).to(dev)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for s in range(0, len(train), a.batch):
            idx = perm[s:s + a.batch]
            x, y = xt[idx], yt[idx]
            loss = loss_of(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * (y >= 0).sum()
        sync()
        seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / train_targets
        val_loss = evaluate(model, xv, yv)
        print(f"epoch {epoch}  loss {train_loss:.4f}  val_loss {val_loss:.4f}"
              f"  chars/s {train_targets / seconds:.0f}  seconds {seconds:.2f}", flush=True)

    sgen = torch.Generator().manual_seed(a.seed)
    print("samples: " + " ".join(sample(model, vocab, a.samples, sgen, dev)))
    print(f"final val_loss {evaluate(model, xv, yv):.4f}")


if __name__ == "__main__":
    main()
