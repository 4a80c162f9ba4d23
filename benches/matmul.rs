//! Matrix products, CPU vs GPU: square sizes, and the seed MNIST model's
//! first layer with the two products its backward pass computes (through
//! the kernels' transpose flags).

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use wgrad::Tensor;

fn square(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_square");
    group.sample_size(10).warm_up_time(Duration::from_millis(500));
    for n in [128usize, 256, 512, 1024, 2048] {
        group.throughput(Throughput::Elements((2 * n * n * n) as u64));
        for (name, dev) in common::devices() {
            wgrad::manual_seed(0);
            let (a, b) = (Tensor::randn([n, n], &dev), Tensor::randn([n, n], &dev));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                common::iter_synced(bench, &dev, || a.matmul(&b))
            });
        }
    }
    group.finish();
}

fn mnist_shapes(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_mnist");
    for (name, dev) in common::devices() {
        wgrad::manual_seed(0);
        let x = Tensor::randn([32, 784], &dev);
        let w1 = Tensor::randn([128, 784], &dev);
        let g1 = Tensor::randn([32, 128], &dev);
        let h = Tensor::randn([32, 128], &dev);
        let w2 = Tensor::randn([10, 128], &dev);
        let g2 = Tensor::randn([32, 10], &dev);
        // Forward x·Wᵀ, weight gradient gᵀ·x, input gradient g·W.
        group.bench_function(BenchmarkId::new(name, "32x784 · 784x128"), |b| {
            common::iter_synced(b, &dev, || x.linear(&w1, None))
        });
        group.bench_function(BenchmarkId::new(name, "dW1 = g1ᵀ·x"), |b| {
            let w = w1.detach().requires_grad();
            common::iter_synced(b, &dev, || x.linear(&w, None).backward_with(g1.clone()))
        });
        group.bench_function(BenchmarkId::new(name, "32x128 · 128x10"), |b| {
            common::iter_synced(b, &dev, || h.linear(&w2, None))
        });
        group.bench_function(BenchmarkId::new(name, "layer 2 backward (dW2, dh)"), |b| {
            let (hv, w) = (h.detach().requires_grad(), w2.detach().requires_grad());
            common::iter_synced(b, &dev, || hv.linear(&w, None).backward_with(g2.clone()))
        });
    }
    group.finish();
}

criterion_group!(benches, square, mnist_shapes);
criterion_main!(benches);
