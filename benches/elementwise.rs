//! Elementwise ops, CPU vs GPU: a chain of 1000 small dependent ops read
//! once at the end (per-op overhead; on the GPU with fusion, as by default,
//! and without, one dispatch per op), and single ops on large tensors
//! (bandwidth).

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wgrad::Tensor;

fn chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise_chain_1000_ops");
    group.sample_size(10);
    let unfused = common::gpu_unfused().map(|d| ("gpu unfused", d));
    for (name, dev) in common::devices().into_iter().chain(unfused) {
        let x = Tensor::ones([1024], &dev);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut y = x.clone();
                for _ in 0..1000 {
                    y = &y * 1.0001;
                }
                y.to_vec().unwrap()
            })
        });
    }
    group.finish();
}

fn large(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise_large");
    for n in [1usize << 16, 1 << 20, 1 << 22] {
        group.throughput(Throughput::Bytes((3 * 4 * n) as u64));
        for (name, dev) in common::devices() {
            wgrad::manual_seed(0);
            let (a, b) = (Tensor::randn([n], &dev), Tensor::randn([n], &dev));
            group.bench_with_input(BenchmarkId::new(format!("{name} add"), n), &n, |bench, _| {
                common::iter_synced(bench, &dev, || &a + &b)
            });
            group.bench_with_input(BenchmarkId::new(format!("{name} gelu"), n), &n, |bench, _| {
                common::iter_synced(bench, &dev, || a.gelu())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, chain, large);
criterion_main!(benches);
