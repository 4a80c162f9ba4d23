//! The sequence-model ops and layers: values and gradients against
//! PyTorch (tests/fixtures/make_torch_sequence.py) with parameters loaded
//! by their PyTorch names, gradchecks, CPU/GPU parity, causality, and bad
//! token ids.

#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{assert_close, panic_message_of, rand};
use std::collections::HashMap;
use wgrad::nn::{self, Module};
use wgrad::{
    CrossEntropyOptions, Device, Error, Generator, GradcheckOptions, Sampling, Tensor, gradcheck_with, io, manual_seed,
    multinomial, sampling_probs, scaled_dot_product_attention,
};

type Fixture = HashMap<String, io::HostTensor>;

fn fixture() -> Fixture {
    io::read("tests/fixtures/torch_sequence.safetensors").unwrap().into_iter().collect()
}

fn tensor(f: &Fixture, key: &str, dev: &Device) -> Tensor {
    let t = f.get(key).unwrap_or_else(|| panic!("no {key} in the fixture"));
    Tensor::from_vec(t.values.clone(), t.shape.clone(), dev).unwrap()
}

/// Loads `prefix.<name>` into every parameter of `model` (by its
/// state_dict name, which must be PyTorch's), runs `forward` on
/// `prefix.input`, backpropagates `(output · prefix.r).sum()`, and compares
/// the output and every gradient with PyTorch's.
fn matches_pytorch(prefix: &str, model: &dyn Module, dev: &Device, forward: impl Fn(&Tensor) -> Tensor, tol: f32) {
    let f = fixture();
    for (name, p) in model.state_dict() {
        let key = format!("{prefix}.{name}");
        let want = f.get(&key).unwrap_or_else(|| panic!("{key}: not a PyTorch parameter name"));
        assert_eq!(p.dims(), want.shape.as_slice(), "{key}: layout");
        p.assign(&tensor(&f, &key, dev));
    }
    let x = tensor(&f, &format!("{prefix}.input"), dev).requires_grad();
    let y = forward(&x);
    assert_close(&y.to_vec().unwrap(), &f[&format!("{prefix}.output")].values, tol, tol, &format!("{prefix} output"));
    let grads = (&y * &tensor(&f, &format!("{prefix}.r"), dev)).sum().backward();
    let g = grads.get(&x).unwrap().to_vec().unwrap();
    assert_close(&g, &f[&format!("{prefix}.grad.input")].values, tol, tol, &format!("{prefix} input grad"));
    for (name, p) in model.named_parameters() {
        let g = grads.get(&p).unwrap_or_else(|| panic!("{prefix}.{name}: no gradient")).to_vec().unwrap();
        assert_close(&g, &f[&format!("{prefix}.grad.{name}")].values, tol, tol, &format!("{prefix}.{name} grad"));
    }
}

fn lstm_matches_pytorch(dev: &Device) {
    let lstm = nn::LSTM::new(5, 7, 2, dev);
    let names: Vec<String> = lstm.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(&names[..4], ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]);
    matches_pytorch("lstm", &lstm, dev, |x| lstm.forward(x), 1e-5);
}
test_device!(lstm_matches_pytorch);

fn gru_matches_pytorch(dev: &Device) {
    let gru = nn::GRU::new(5, 7, 2, dev);
    matches_pytorch("gru", &gru, dev, |x| gru.forward(x), 1e-5);
}
test_device!(gru_matches_pytorch);

fn transformer_block_matches_pytorch(dev: &Device) {
    let block = nn::TransformerBlock::new(16, 4, 32, true, dev);
    matches_pytorch("block", &block, dev, |x| block.forward(x), 2e-5);
}
test_device!(transformer_block_matches_pytorch);

fn multihead_attention_matches_pytorch(dev: &Device) {
    let mha = nn::MultiheadAttention::new(16, 4, false, dev);
    matches_pytorch("mha", &mha, dev, |x| mha.forward(x), 1e-5);
}
test_device!(multihead_attention_matches_pytorch);

fn layer_norm_matches_pytorch(dev: &Device) {
    let ln = nn::LayerNorm::new([6], dev);
    matches_pytorch("ln", &ln, dev, |x| ln.forward(x), 1e-5);
}
test_device!(layer_norm_matches_pytorch);

fn embedding_matches_pytorch_with_repeated_ids(dev: &Device) {
    let f = fixture();
    let emb = nn::Embedding::new(10, 4, dev);
    emb.weight.assign(&tensor(&f, "emb.weight", dev));
    let y = emb.forward(&tensor(&f, "emb.ids", dev));
    assert_eq!(y.dims(), [2, 3, 4]);
    assert_close(&y.to_vec().unwrap(), &f["emb.output"].values, 0.0, 0.0, "embedding");
    let grads = (&y * &tensor(&f, "emb.r", dev)).sum().backward();
    // Id 3 appears three times, 1 twice: their rows sum the gradients.
    let g = grads.get(&emb.weight).unwrap().to_vec().unwrap();
    assert_close(&g, &f["emb.grad.weight"].values, 1e-6, 1e-6, "embedding grad");
}
test_device!(embedding_matches_pytorch_with_repeated_ids);

fn attention_matches_pytorch(dev: &Device) {
    let f = fixture();
    for p in ["sdpa.full", "sdpa.causal"] {
        let [q, k, v] = ["q", "k", "v"].map(|n| tensor(&f, &format!("{p}.{n}"), dev).requires_grad());
        let y = scaled_dot_product_attention(&q, &k, &v, p.ends_with("causal"));
        assert_close(&y.to_vec().unwrap(), &f[&format!("{p}.output")].values, 1e-5, 1e-5, p);
        let grads = (&y * &tensor(&f, &format!("{p}.r"), dev)).sum().backward();
        for (n, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let g = grads.get(t).unwrap().to_vec().unwrap();
            assert_close(&g, &f[&format!("{p}.grad.{n}")].values, 1e-5, 1e-5, &format!("{p} grad {n}"));
        }
    }
}
test_device!(attention_matches_pytorch);

fn cross_entropy_over_sequences_ignores_padding(dev: &Device) {
    let f = fixture();
    let logits = tensor(&f, "ce.logits", dev).requires_grad();
    let labels = tensor(&f, "ce.labels", dev);
    let opts = CrossEntropyOptions { ignore_index: Some(-1), ..Default::default() };
    let loss = logits.cross_entropy_with(&labels, opts);
    assert_close(&[loss.item().unwrap()], &f["ce.loss"].values, 1e-6, 1e-6, "loss");
    let g = loss.backward().get(&logits).unwrap().to_vec().unwrap();
    assert_close(&g, &f["ce.grad.logits"].values, 1e-6, 1e-6, "grad");
    // With smoothing the ignored rows still contribute nothing: the loss
    // equals that of the kept rows alone.
    let smooth = CrossEntropyOptions { label_smoothing: 0.1, ignore_index: Some(-1), ..Default::default() };
    let flat = logits.reshape([6, 5]);
    let kept = Tensor::new([0.0, 2.0, 3.0, 4.0], dev).unwrap();
    let alone = flat.index_select(0, &kept).cross_entropy_with(
        &Tensor::new([1.0, 4.0, 0.0, 2.0], dev).unwrap(),
        CrossEntropyOptions { label_smoothing: 0.1, ..Default::default() },
    );
    let both = logits.cross_entropy_with(&labels, smooth).item().unwrap();
    assert!((both - alone.item().unwrap()).abs() < 1e-6, "{both} vs {}", alone.item().unwrap());
}
test_device!(cross_entropy_over_sequences_ignores_padding);

const LINEAR: GradcheckOptions = GradcheckOptions { eps: 1e-2, atol: 1e-3, rtol: 1e-2 };

fn check(name: &str, f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor]) {
    if let Err(e) = gradcheck_with(f, inputs, LINEAR) {
        panic!("{name}: {e}");
    }
}

#[test]
fn gradchecks() {
    manual_seed(3);
    let dev = Device::Cpu;
    // layer_norm: size-1 rows (the output is the bias, the input's
    // gradient 0), rows of 5, two normalised axes.
    for (shape, axes) in [(&[4, 1][..], 1), (&[3, 5], 1), (&[2, 3, 4], 2)] {
        let n: usize = shape[shape.len() - axes..].iter().product();
        let norm_shape = shape[shape.len() - axes..].to_vec();
        let x = rand(shape, -2.0, 2.0, 1);
        let w = rand(&norm_shape, 0.5, 1.5, 2);
        let b = rand(&[n], -1.0, 1.0, 3).reshape(norm_shape.clone());
        check("layer_norm", |v| v[0].layer_norm(axes, Some(&v[1]), Some(&v[2]), 1e-5), &[x.clone(), w, b]);
        check("layer_norm plain", |v| v[0].layer_norm(axes, None, None, 1e-5).sqr(), &[x]);
    }
    let (q, k, v) = (rand(&[2, 3, 4], -1.0, 1.0, 4), rand(&[2, 5, 4], -1.0, 1.0, 5), rand(&[2, 5, 3], -1.0, 1.0, 6));
    check(
        "attention",
        |t| scaled_dot_product_attention(&t[0], &t[1], &t[2], false),
        &[q.clone(), k.clone(), v.clone()],
    );
    let k3 = rand(&[2, 3, 4], -1.0, 1.0, 7);
    let v3 = rand(&[2, 3, 3], -1.0, 1.0, 8);
    check("causal attention", |t| scaled_dot_product_attention(&t[0], &t[1], &t[2], true), &[q, k3, v3]);
    // LSTM and GRU over 3 steps, two layers: the gradients of the input
    // and of the initial state through time (the weights' gradients are
    // checked against PyTorch's above).
    let x = rand(&[2, 3, 4], -1.0, 1.0, 9);
    let (h0, c0) = (rand(&[2, 2, 3], -1.0, 1.0, 11), rand(&[2, 2, 3], -1.0, 1.0, 12));
    let lstm = nn::LSTM::new(4, 3, 2, &dev);
    check(
        "lstm",
        |t| {
            let (y, (h, c)) = lstm.forward_with_state(&t[0], Some(&(t[1].clone(), t[2].clone())));
            &(&y.sum() + &h.sqr().sum()) + &c.sum()
        },
        &[x.clone(), h0.clone(), c0],
    );
    let gru = nn::GRU::new(4, 3, 2, &dev);
    check(
        "gru",
        |t| {
            let (y, h) = gru.forward_with_state(&t[0], Some(&t[1]));
            &y.sqr().sum() + &h.sum()
        },
        &[x, h0],
    );
    // Embedding with repeated ids: the table's gradient.
    let table = rand(&[6, 3], -1.0, 1.0, 10);
    let ids = Tensor::new([[0.0, 5.0, 5.0], [2.0, 0.0, 5.0]], &dev).unwrap();
    check("embedding", |t| t[0].index_select(0, &ids.reshape([6])).sqr(), &[table]);
}

/// A tiny causal language model: embeddings, a position table, one
/// transformer block, a head.
fn causal_lm(dev: &Device) -> impl Fn(&Tensor) -> Tensor {
    manual_seed(21);
    let (tok, pos) = (nn::Embedding::new(7, 8, dev), nn::Embedding::new(6, 8, dev));
    let block = nn::TransformerBlock::new(8, 2, 16, true, dev);
    let head = nn::Linear::new(8, 7, dev);
    let positions = Tensor::arange(0.0, 6.0, dev);
    move |ids: &Tensor| {
        let x = &tok.forward(ids) + &pos.forward(&positions);
        head.forward(&block.forward(&x))
    }
}

fn a_causal_model_never_looks_ahead(dev: &Device) {
    let model = causal_lm(dev);
    let a = Tensor::new([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dev).unwrap();
    let ya = model(&a).to_vec().unwrap();
    for t in 0..5 {
        // Change every token after position t.
        let mut ids = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        for id in &mut ids[t + 1..] {
            *id = (*id + 3.0) % 7.0;
        }
        let yb = model(&Tensor::from_vec(ids, [1, 6], dev).unwrap()).to_vec().unwrap();
        let upto = (t + 1) * 7;
        assert_eq!(ya[..upto], yb[..upto], "outputs at ≤ {t} changed with later tokens");
        assert_ne!(ya[upto..], yb[upto..], "later outputs should see the change");
    }
    // The LSTM is causal by construction; check it too.
    let lstm = nn::LSTM::new(3, 4, 2, dev);
    let x = rand(&[1, 5, 3], -1.0, 1.0, 30).to_device(dev).unwrap();
    let mut later = x.to_vec().unwrap();
    for v in &mut later[9..] {
        *v += 1.0;
    }
    let (ya, yb) = (
        lstm.forward(&x).to_vec().unwrap(),
        lstm.forward(&Tensor::from_vec(later, [1, 5, 3], dev).unwrap()).to_vec().unwrap(),
    );
    assert_eq!(ya[..12], yb[..12]);
}
test_device!(a_causal_model_never_looks_ahead);

fn bad_token_ids_are_errors(dev: &Device) {
    let emb = nn::Embedding::new(5, 3, dev);
    for bad in [5.0, -1.0, 1.5, f32::NAN] {
        let ids = Tensor::new([0.0, bad, 2.0], dev).unwrap();
        let err = emb.forward(&ids).to_vec().unwrap_err();
        assert!(matches!(err, Error::IndexOutOfRange { .. }), "id {bad}: {err}");
        // And through a whole model's loss and gradient.
        let loss = emb.forward(&ids).sum();
        assert!(loss.item().is_err(), "id {bad}: the loss reads");
        let g = loss.backward();
        assert!(g.get(&emb.weight).unwrap().to_vec().is_err(), "id {bad}: the gradient reads");
    }
}
test_device!(bad_token_ids_are_errors);

#[test]
fn mismatched_attention_shapes_name_the_op_and_shapes() {
    let dev = Device::Cpu;
    let (q, k) = (Tensor::zeros([2, 3, 4], &dev), Tensor::zeros([2, 3, 5], &dev));
    let msg = panic_message_of(|| {
        scaled_dot_product_attention(&q, &k, &k, false);
    });
    assert!(
        msg.contains("scaled_dot_product_attention") && msg.contains("[2, 3, 4]") && msg.contains("[2, 3, 5]"),
        "{msg}"
    );
    let msg = panic_message_of(|| {
        nn::MultiheadAttention::new(10, 4, true, &dev);
    });
    assert!(msg.contains("4 heads") && msg.contains("10"), "{msg}");
    let mha = nn::MultiheadAttention::new(8, 2, true, &dev);
    let msg = panic_message_of(|| {
        mha.forward(&Tensor::zeros([2, 3, 6], &dev));
    });
    assert!(msg.contains("MultiheadAttention") && msg.contains("[2, 3, 6]"), "{msg}");
    let msg = panic_message_of(|| {
        nn::LSTM::new(4, 3, 1, &dev).forward(&Tensor::zeros([2, 3], &dev));
    });
    assert!(msg.contains("LSTM") && msg.contains("[2, 3]"), "{msg}");
}

fn layer_norm_propagates_nan_and_infinity(dev: &Device) {
    let x = Tensor::new([[1.0, f32::NAN, 3.0], [1.0, f32::INFINITY, 2.0], [1.0, 2.0, 3.0]], dev).unwrap();
    let y = x.layer_norm(1, None, None, 1e-5).to_vec().unwrap();
    assert!(y[..6].iter().all(|v| v.is_nan()), "{y:?}");
    assert!(y[6..].iter().all(|v| v.is_finite()), "{y:?}");
}
test_device!(layer_norm_propagates_nan_and_infinity);

fn triangles_and_sampling(dev: &Device) {
    let x = Tensor::new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dev).unwrap();
    assert_eq!(x.tril(0).to_vec().unwrap(), [1.0, 0.0, 0.0, 4.0, 5.0, 0.0]);
    assert_eq!(x.triu(1).to_vec().unwrap(), [0.0, 2.0, 3.0, 0.0, 0.0, 6.0]);
    assert_eq!(x.tril(-1).to_vec().unwrap(), [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]);
    let logits = Tensor::new([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0]], dev).unwrap();
    // Top-2 with temperature 0.5: only the two largest keep probability.
    let p = sampling_probs(&logits, Sampling { temperature: 0.5, top_k: Some(2) }).to_vec().unwrap();
    let e = (-2.0f32).exp();
    assert_close(&p[..4], &[1.0 / (1.0 + e), e / (1.0 + e), 0.0, 0.0], 1e-6, 1e-6, "top-2 row");
    assert_eq!(p[5..].iter().filter(|&&v| v > 0.0).count(), 3, "ties at the k-th logit are kept: {p:?}");
    // Multinomial: seeded, and the frequencies follow the weights.
    let w = Tensor::new([0.1, 0.0, 0.6, 0.3], dev).unwrap();
    let mut g = Generator::new(5);
    let mut counts = [0usize; 4];
    for _ in 0..4000 {
        counts[multinomial(&w, &mut g).unwrap()[0]] += 1;
    }
    assert_eq!(counts[1], 0);
    for (c, want) in counts.iter().zip([0.1, 0.0, 0.6, 0.3]) {
        assert!((*c as f64 / 4000.0 - want).abs() < 0.03, "{counts:?}");
    }
    let (mut a, mut b) = (Generator::new(9), Generator::new(9));
    assert_eq!(multinomial(&w, &mut a).unwrap(), multinomial(&w, &mut b).unwrap());
    let err = multinomial(&Tensor::zeros([3], dev), &mut g).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "multinomial", .. }), "{err}");
}
test_device!(triangles_and_sampling);

/// Kernels a GPT block's forward and backward dispatch on the GPU, and
/// those of its parts (README: "Where a GPT block's dispatches go").
#[test]
fn dispatches_of_a_gpt_block() {
    common::gpu();
    // With matmul epilogues, as a hardware GPU runs it.
    let options = wgrad::GpuOptions { epilogues: Some(true), ..wgrad::GpuOptions::from_env() };
    let Ok(gpu) = wgrad::GpuDevice::with_options(options) else { return };
    // A device of its own: other tests' kernels do not reach its count.
    let dev = wgrad::Device::Gpu(gpu.clone());
    manual_seed(1);
    let block = nn::TransformerBlock::new(64, 4, 256, true, &dev);
    let x = Tensor::randn([8, 16, 64], &dev).requires_grad();
    let count = |what: &str, f: &dyn Fn() -> Tensor| {
        let g = Tensor::randn(f().dims().to_vec(), &dev);
        gpu.synchronize().unwrap();
        let before = gpu.kernels_dispatched();
        let out = f();
        gpu.synchronize().unwrap();
        let fwd = gpu.kernels_dispatched() - before;
        let grads = out.backward_with(g);
        for (_, p) in block.named_parameters() {
            grads.get(&p).map(|t| t.to_vec().unwrap());
        }
        grads.get(&x).map(|t| t.to_vec().unwrap());
        gpu.synchronize().unwrap();
        let total = gpu.kernels_dispatched() - before;
        eprintln!("{what}: {fwd} forward, {} backward", total - fwd);
        total
    };
    let total = count("block", &|| block.forward(&x));
    count("norm1", &|| block.norm1.forward(&x));
    count("self_attn", &|| block.self_attn.forward(&x));
    count("linear1", &|| block.linear1.forward(&x));
    count("linear1+gelu", &|| block.linear1.forward(&x).gelu());
    let (q, k, v) =
        (x.reshape([8, 16, 4, 16]).permute(&[0, 2, 1, 3]), x.reshape([8, 4, 16, 16]), x.reshape([8, 4, 16, 16]));
    count("sdpa", &|| scaled_dot_product_attention(&q, &k, &v, true));
    assert!(total <= 47, "a GPT block's forward and backward took {total} dispatches (README: 18 + 29)");
}

fn infinities_outside_the_kept_part_do_not_leak(dev: &Device) {
    // tril/triu select: -∞ above the diagonal of a causal mask, 0 below.
    let mask = Tensor::full([3, 3], f32::NEG_INFINITY, dev).triu(1).to_vec().unwrap();
    let inf = f32::NEG_INFINITY;
    assert_eq!(mask, [0.0, inf, inf, 0.0, 0.0, inf, 0.0, 0.0, 0.0]);
    let x = Tensor::new([[1.0, f32::INFINITY], [2.0, 3.0]], dev).unwrap();
    assert_eq!(x.tril(0).to_vec().unwrap(), [1.0, 0.0, 2.0, 3.0]);
    // An ignored row with a -∞ logit at the stand-in label: the loss is the
    // kept row's, ln 2 (PyTorch's), with or without smoothing and weights.
    let logits = Tensor::new([[f32::NEG_INFINITY, 0.0], [0.0, 0.0]], dev).unwrap();
    let labels = Tensor::new([-100.0, 1.0], dev).unwrap();
    let w = Tensor::new([1.0, 2.0], dev).unwrap();
    for opts in [
        CrossEntropyOptions { ignore_index: Some(-100), ..Default::default() },
        CrossEntropyOptions { ignore_index: Some(-100), label_smoothing: 0.1, ..Default::default() },
        CrossEntropyOptions { ignore_index: Some(-100), weight: Some(&w), ..Default::default() },
    ] {
        let loss = logits.cross_entropy_with(&labels, opts).item().unwrap();
        assert!((loss - std::f32::consts::LN_2).abs() < 1e-6, "{opts:?}: {loss}");
    }
}
test_device!(infinities_outside_the_kept_part_do_not_leak);

#[test]
fn edge_cases_of_gru_state_generation_and_sampling() {
    let dev = Device::Cpu;
    let gru = nn::GRU::new(3, 4, 2, &dev);
    let msg = panic_message_of(|| {
        gru.forward_with_state(&Tensor::zeros([2, 5, 3], &dev), Some(&Tensor::zeros([2, 1, 4], &dev)));
    });
    assert!(msg.contains("GRU") && msg.contains("[2, 1, 4]"), "{msg}");
    let lm = wgrad::models::LstmLm::new(5, 4, 6, 1, &dev);
    let none = wgrad::models::generate(&lm, 0, (0, 0), 8, Sampling::default(), &mut Generator::new(0), &dev).unwrap();
    assert!(none.is_empty());
    let err = multinomial(&Tensor::zeros([2, 0], &dev), &mut Generator::new(0)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "multinomial", .. }), "{err}");
}

/// `padding_idx` as PyTorch's: the padding row starts at zeros, the forward
/// returns whatever it holds, and it gets no gradient however often it is
/// looked up, while every other row gets its usual sum.
fn embedding_padding_rows_start_at_zero_and_get_no_gradient(dev: &Device) {
    wgrad::manual_seed(2);
    let emb = nn::Embedding::with_padding_idx(5, 3, 0, dev);
    assert_eq!(emb.describe(), "Embedding(5, 3, padding_idx=0)");
    let w = emb.weight.to_vec().unwrap();
    assert_eq!(w[..3], [0.0; 3], "the padding row starts at zeros");
    assert!(w[3..].iter().any(|&v| v != 0.0));
    let ids = Tensor::from_vec(vec![0.0, 2.0, 0.0, 1.0, 2.0, 4.0], [2, 3], dev).unwrap();
    let r: Vec<f32> = (0..18).map(|i| 0.5 + i as f32).collect();
    let y = emb.forward(&ids);
    let grads = (&y * &Tensor::from_vec(r.clone(), [2, 3, 3], dev).unwrap()).sum().backward();
    let g = grads.get(&emb.weight).unwrap().to_vec().unwrap();
    let row = |pos: usize| r[3 * pos..3 * pos + 3].to_vec();
    let mut want = vec![0.0f32; 15];
    for (pos, id) in [(1usize, 2usize), (3, 1), (4, 2), (5, 4)] {
        for (j, v) in row(pos).into_iter().enumerate() {
            want[3 * id + j] += v;
        }
    }
    assert_eq!(g, want, "{dev:?}: no gradient for the padding row");
    // A loaded non-zero padding row is what the forward returns.
    emb.weight.assign(&Tensor::ones([5, 3], dev));
    assert_eq!(emb.forward(&ids).to_vec().unwrap(), vec![1.0; 18]);
}
test_device!(embedding_padding_rows_start_at_zero_and_get_no_gradient);
