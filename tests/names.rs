//! The names models (examples/names.rs) learn on both devices: one epoch
//! beats the unigram baseline, and the CPU and the GPU agree step for step.

mod common;

use wgrad::data::names::{self, Names};
use wgrad::models::{Gpt, GptConfig, LstmLm};
use wgrad::nn::Module;
use wgrad::optim::{Adam, Optimizer};
use wgrad::train::{FitConfig, evaluate_with, fit};
use wgrad::{CrossEntropyOptions, Device, Generator, manual_seed};

/// The unigram baseline's validation loss on this split (each character
/// by its training frequency; `benches/names_torch.py --bigram`).
const UNIGRAM: f32 = 2.8672;

fn data() -> Names {
    names::load(concat!(env!("CARGO_MANIFEST_DIR"), "/data/names"), 16).unwrap()
}

fn gpt(dev: &Device) -> Gpt {
    manual_seed(0);
    Gpt::new(GptConfig { vocab: 28, context: 16, d_model: 64, heads: 4, layers: 2 }, dev)
}

fn lstm(dev: &Device) -> LstmLm {
    manual_seed(0);
    LstmLm::new(28, 64, 128, 1, dev)
}

fn one_epoch_beats_the_unigram_baseline(dev: &Device) {
    let data = data();
    let model = gpt(dev);
    let before = evaluate_with(&model, &data.validation, 1024, &names::loss(), &[]).unwrap().loss;
    assert!(before > UNIGRAM, "untrained: {before}");
    let mut opt = Adam::new(model.parameters(), 3e-3);
    let config = FitConfig {
        epochs: 1,
        batch_size: 64,
        validation_data: Some(data.validation.clone()),
        loss: Some(names::loss()),
        metrics: Some(Vec::new()),
        verbose: false,
        ..FitConfig::default()
    };
    let history = fit(&model, &mut opt, &data.train, &config).unwrap();
    let val = history[0].validation.as_ref().unwrap().loss;
    // PyTorch's twin reaches 2.23 after its first epoch.
    assert!(val < UNIGRAM - 0.4, "validation loss after one epoch: {val}");
}
test_device!(one_epoch_beats_the_unigram_baseline);

/// 30 Adam steps on the same batches: the losses of each step.
fn losses(model: &dyn Module, data: &Names, dev: &Device) -> Vec<f32> {
    let mut opt = Adam::new(model.parameters(), 3e-3);
    let opts = CrossEntropyOptions { ignore_index: Some(-1), ..Default::default() };
    let mut g = Generator::new(4);
    data.train
        .batches(64, Some(&mut g), dev)
        .take(30)
        .map(|(x, y)| {
            let loss = model.forward(&x).cross_entropy_with(&y, opts);
            opt.step(&loss.backward());
            loss.item().unwrap()
        })
        .collect()
}

#[test]
fn both_devices_agree_over_30_steps() {
    let Some(gpu) = common::gpu() else { return };
    let data = data();
    for (name, cpu_model, gpu_model) in [
        ("transformer", Box::new(gpt(&Device::Cpu)) as Box<dyn Module>, Box::new(gpt(&gpu)) as Box<dyn Module>),
        ("lstm", Box::new(lstm(&Device::Cpu)), Box::new(lstm(&gpu))),
    ] {
        let (c, g) = (losses(&*cpu_model, &data, &Device::Cpu), losses(&*gpu_model, &data, &gpu));
        for (step, (c, g)) in c.iter().zip(&g).enumerate() {
            assert!((c - g).abs() <= 2e-3 * c.abs(), "{name} step {step}: cpu {c}, gpu {g}");
        }
        assert!(c[29] < c[0] - 0.5, "{name}: the loss fell from {} to {}", c[0], c[29]);
    }
}
