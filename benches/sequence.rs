//! A transformer's kernels, CPU vs GPU: layer normalisation and scaled
//! dot-product attention (causal), forward and forward+backward, at a
//! GPT-small-like shape and at the names model's; and an LSTM layer at the
//! names model's shape (the CPU's fused layer, the GPU's unrolled steps).

mod common;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgrad::nn::Module;
use wgrad::{Tensor, scaled_dot_product_attention};

fn layer_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer_norm");
    group.sample_size(10);
    for (rows, cols) in [(1024usize, 64usize), (8192, 768)] {
        for (name, dev) in common::devices() {
            wgrad::manual_seed(0);
            let x = Tensor::randn([rows, cols], &dev);
            let (w, b) = (Tensor::ones([cols], &dev).requires_grad(), Tensor::zeros([cols], &dev).requires_grad());
            let g = Tensor::randn([rows, cols], &dev);
            let size = format!("{rows}x{cols}");
            group.bench_function(BenchmarkId::new(format!("{name} fwd"), &size), |bench| {
                common::iter_synced(bench, &dev, || x.layer_norm(1, Some(&w), Some(&b), 1e-5))
            });
            let xv = x.detach().requires_grad();
            group.bench_function(BenchmarkId::new(format!("{name} fwd+bwd"), &size), |bench| {
                common::iter_synced(bench, &dev, || xv.layer_norm(1, Some(&w), Some(&b), 1e-5).backward_with(g.clone()))
            });
        }
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    // [batch, heads, seq, head_dim]
    for dims in [[64usize, 4, 16, 16], [8, 12, 256, 64]] {
        for (name, dev) in common::devices() {
            wgrad::manual_seed(0);
            let [q, k, v] = [0; 3].map(|_| Tensor::randn(dims, &dev).requires_grad());
            let g = Tensor::randn(dims, &dev);
            let size = format!("{}x{}x{}x{}", dims[0], dims[1], dims[2], dims[3]);
            group.bench_function(BenchmarkId::new(format!("{name} causal fwd"), &size), |bench| {
                common::iter_synced(bench, &dev, || wgrad::no_grad(|| scaled_dot_product_attention(&q, &k, &v, true)))
            });
            group.bench_function(BenchmarkId::new(format!("{name} causal fwd+bwd"), &size), |bench| {
                common::iter_synced(bench, &dev, || {
                    scaled_dot_product_attention(&q, &k, &v, true).backward_with(g.clone())
                })
            });
        }
    }
    group.finish();
}

fn lstm(c: &mut Criterion) {
    let mut group = c.benchmark_group("lstm");
    group.sample_size(10);
    // [batch, seq, input] → hidden, one layer: the names model's LSTM.
    let (batch, seq, input, hidden) = (64usize, 16usize, 64usize, 128usize);
    for (name, dev) in common::devices() {
        wgrad::manual_seed(0);
        let lstm = wgrad::nn::LSTM::new(input, hidden, 1, &dev);
        let x = Tensor::randn([batch, seq, input], &dev).requires_grad();
        let g = Tensor::randn([batch, seq, hidden], &dev);
        let size = format!("{batch}x{seq}x{input}->{hidden}");
        group.bench_function(BenchmarkId::new(format!("{name} fwd"), &size), |bench| {
            common::iter_synced(bench, &dev, || wgrad::no_grad(|| lstm.forward(&x)))
        });
        group.bench_function(BenchmarkId::new(format!("{name} fwd+bwd"), &size), |bench| {
            common::iter_synced(bench, &dev, || lstm.forward(&x).backward_with(g.clone()))
        });
    }
    group.finish();
}

criterion_group!(benches, layer_norm, attention, lstm);
criterion_main!(benches);
