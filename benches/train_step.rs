//! One training step of the seed's MNIST model (forward, backward, Adam),
//! CPU vs GPU, at batch 32, 128 and 1024.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wgrad::Tensor;
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};

fn step(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_train_step");
    group.sample_size(20);
    for batch in [32usize, 128, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        for (name, dev) in common::devices() {
            wgrad::manual_seed(0);
            let model = nn::Sequential::new()
                .add(nn::Flatten)
                .add(nn::Linear::new(784, 128, &dev))
                .add(nn::ReLU)
                .add(nn::Dropout::new(0.2))
                .add(nn::Linear::new(128, 10, &dev));
            let mut opt = Adam::new(model.parameters(), 1e-3);
            let x = Tensor::rand_uniform([batch, 28, 28], 0.0, 1.0, &dev);
            let y = Tensor::from_vec((0..batch).map(|i| (i % 10) as f32).collect(), [batch], &dev).unwrap();
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
                common::iter_synced(b, &dev, || {
                    let loss = model.forward(&x).cross_entropy(&y);
                    opt.step(&loss.backward());
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
