//! Softmax and cross-entropy (forward and backward), CPU vs GPU, at the
//! MNIST shape and at a classifier with 1000 classes.

mod common;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wgrad::Tensor;

fn softmax_xent(c: &mut Criterion) {
    let mut group = c.benchmark_group("softmax_xent");
    group.sample_size(20);
    for (rows, classes) in [(32usize, 10usize), (1024, 1000)] {
        for (name, dev) in common::devices() {
            wgrad::manual_seed(0);
            let logits = Tensor::randn([rows, classes], &dev);
            let labels = Tensor::from_vec((0..rows).map(|i| (i % classes) as f32).collect(), [rows], &dev).unwrap();
            let size = format!("{rows}x{classes}");
            group.bench_function(BenchmarkId::new(format!("{name} softmax"), &size), |b| {
                common::iter_synced(b, &dev, || logits.softmax(-1))
            });
            group.bench_function(BenchmarkId::new(format!("{name} cross_entropy fwd+bwd"), &size), |b| {
                let x = logits.detach().requires_grad();
                common::iter_synced(b, &dev, || x.cross_entropy(&labels).backward())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, softmax_xent);
criterion_main!(benches);
