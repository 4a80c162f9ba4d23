//! The seed's MNIST model and Keras's simple convnet end to end on each
//! device: they learn from the bundled digits, a saved copy predicts exactly
//! what the original does, and one seed gives the same training trajectory
//! on the CPU and the GPU.

mod common;

use wgrad::data::mnist;
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::train::{FitConfig, evaluate, fit, predict};
use wgrad::{Device, io, manual_seed};

fn learns_the_bundled_digits(dev: &Device) {
    let data = mnist::load("data/mnist").unwrap();
    manual_seed(0);
    let model = common::seed_mlp(dev);
    let mut opt = Adam::new(model.parameters(), 1e-3);
    // One epoch: 251 steps of batch 32.
    let config = FitConfig { epochs: 1, verbose: false, ..FitConfig::default() };
    let history = fit(&model, &mut opt, &data.train, &config).unwrap();
    let test = evaluate(&model, &data.test, 256).unwrap();
    // Chance is 0.10; one epoch of this model reaches about 0.92 here.
    assert!(test.accuracy() > 0.85, "test accuracy {} after one epoch", test.accuracy());
    assert!(history[0].train.loss < 1.0, "training loss {}", history[0].train.loss);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist.safetensors");
    io::save(&model, &path, io::Dtype::F32).unwrap();
    manual_seed(99);
    let reloaded = common::seed_mlp(dev);
    io::load(&reloaded, &path).unwrap();
    assert_eq!(predict(&model, &data.test, 256).unwrap(), predict(&reloaded, &data.test, 256).unwrap());
}
test_device!(learns_the_bundled_digits);

#[test]
fn cpu_and_gpu_follow_the_same_trajectory() {
    let Some(gpu) = common::gpu() else { return };
    let data = mnist::load("data/mnist").unwrap();
    let run = |dev: &Device| {
        manual_seed(7);
        let model = common::seed_mlp(dev);
        let mut opt = Adam::new(model.parameters(), 1e-3);
        let mut losses = Vec::new();
        let mut shuffle = wgrad::Generator::new(3);
        for (x, y) in data.train.batches(32, Some(&mut shuffle), dev).take(60) {
            let loss = model.forward(&x).cross_entropy(&y);
            losses.push(loss.item().unwrap());
            opt.step(&loss.backward());
        }
        model.set_training(false);
        (losses, model.parameters()[0].to_vec().unwrap())
    };
    let (loss_c, w_c) = run(&Device::Cpu);
    let (loss_g, w_g) = run(&gpu);
    // Same data, same init, same dropout masks: only f32 rounding differs
    // (matmul summation order), and Adam's normalised steps keep it small.
    common::assert_close(&loss_g, &loss_c, 1e-3, 1e-3, "losses");
    common::assert_close(&w_g, &w_c, 1e-4, 1e-3, "first-layer weights");
}

/// Keras's "simple MNIST convnet", as `examples/mnist.rs --model cnn`.
fn convnet(dev: &Device) -> nn::Sequential {
    nn::Sequential::new()
        .add(nn::Unflatten::new(1, [1, 28]))
        .add(nn::Conv2d::new(1, 32, 3, dev))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Conv2d::new(32, 64, 3, dev))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Flatten)
        .add(nn::Dropout::new(0.5))
        .add(nn::Linear::new(64 * 5 * 5, 10, dev))
}

fn a_convnet_learns_the_bundled_digits_in_one_epoch(dev: &Device) {
    let data = mnist::load("data/mnist").unwrap();
    manual_seed(0);
    let model = convnet(dev);
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    // torch.nn.Sequential of the same layers names its parameters alike.
    assert_eq!(names, ["1.weight", "1.bias", "4.weight", "4.bias", "9.weight", "9.bias"]);
    let mut opt = Adam::new(model.parameters(), 1e-3);
    // All 8,004 digits, batch 64: 126 steps. It reaches ~0.93 here.
    let config = FitConfig { epochs: 1, batch_size: 64, validation_split: 0.0, verbose: false, ..FitConfig::default() };
    fit(&model, &mut opt, &data.train, &config).unwrap();
    let test = evaluate(&model, &data.test, 256).unwrap();
    assert!(test.accuracy() > 0.9, "test accuracy {} after one epoch on {dev:?}", test.accuracy());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.safetensors");
    io::save(&model, &path, io::Dtype::F32).unwrap();
    manual_seed(99);
    let reloaded = convnet(dev);
    io::load(&reloaded, &path).unwrap();
    assert_eq!(predict(&model, &data.test, 256).unwrap(), predict(&reloaded, &data.test, 256).unwrap());
}
test_device!(a_convnet_learns_the_bundled_digits_in_one_epoch);

#[test]
fn a_convnet_follows_the_same_trajectory_on_both_devices() {
    let Some(gpu) = common::gpu() else { return };
    let data = mnist::load("data/mnist").unwrap();
    let run = |dev: &Device| {
        manual_seed(11);
        let model = convnet(dev);
        let mut opt = Adam::new(model.parameters(), 1e-3);
        let mut shuffle = wgrad::Generator::new(5);
        let mut losses = Vec::new();
        for (x, y) in data.train.batches(64, Some(&mut shuffle), dev).take(30) {
            let loss = model.forward(&x).cross_entropy(&y);
            losses.push(loss.item().unwrap());
            opt.step(&loss.backward());
        }
        (losses, model.parameters()[2].to_vec().unwrap())
    };
    let (loss_c, w_c) = run(&Device::Cpu);
    let (loss_g, w_g) = run(&gpu);
    common::assert_close(&loss_g, &loss_c, 1e-3, 1e-3, "convnet losses");
    // Where a weight's gradient is near zero, rounding can flip its sign,
    // and Adam then steps ±lr (1e-3) the other way: a few lr after 30 steps.
    common::assert_close(&w_g, &w_c, 3e-3, 0.0, "second convolution's weights");
}

#[test]
fn fit_and_evaluate_refuse_what_they_cannot_use() {
    let data = mnist::load("data/mnist").unwrap();
    let model = common::seed_mlp(&Device::Cpu);
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let invalid = |r: wgrad::Result<_>, what: &str| match r {
        Err(wgrad::Error::InvalidArgument { msg, .. }) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected InvalidArgument mentioning {what:?}, got {other:?}"),
    };
    // An empty training set reported loss 0 and accuracy 0 before.
    let empty = wgrad::data::Dataset::new(Vec::new(), Vec::new(), &[28, 28], 10);
    let quiet = FitConfig { epochs: 1, verbose: false, ..FitConfig::default() };
    invalid(fit(&model, &mut opt, &empty, &quiet).map(drop), "no training data");
    invalid(fit(&model, &mut opt, &data.test, &FitConfig { batch_size: 0, ..quiet }).map(drop), "batch_size");
    let whole = FitConfig { validation_split: 1.0, epochs: 1, verbose: false, ..FitConfig::default() };
    invalid(fit(&model, &mut opt, &data.test, &whole).map(drop), "validation_split");
    invalid(evaluate(&model, &empty, 32).map(drop), "nothing to evaluate");
    invalid(predict(&model, &data.test, 0).map(drop), "batch size");
}
