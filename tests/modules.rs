//! The module design: parameters, buffers, children and mode flags are all
//! reached through one required `visit`, so names, saving, freezing, modes
//! and moves agree; `Box<dyn Module>` is a module; `Sequential` indexes and
//! iterates; evaluation restores the mode it found.

mod common;

use wgrad::nn::{self, Module, Visitor};
use wgrad::optim::{Adam, Optimizer};
use wgrad::train::{FitConfig, evaluate, fit, predict};
use wgrad::{Device, Tensor, manual_seed};

/// A residual block with its own parameter and a child module.
struct Residual {
    inner: nn::Sequential,
    gate: Tensor,
}

impl Residual {
    fn new(width: usize, dev: &Device) -> Self {
        let inner =
            nn::Sequential::new().add(nn::Linear::new(width, width, dev)).add(nn::ReLU).add(nn::Dropout::new(0.5));
        Residual { inner, gate: Tensor::full([width], 0.5, dev).requires_grad() }
    }
}

impl Module for Residual {
    fn forward(&self, x: &Tensor) -> Tensor {
        x + &(&self.inner.forward(x) * &self.gate)
    }
    fn visit(&self, v: &mut Visitor) {
        v.child("inner", &self.inner);
        v.param("gate", &self.gate);
    }
}

fn model(dev: &Device) -> nn::Sequential {
    manual_seed(3);
    nn::Sequential::new().add(nn::Linear::new(4, 8, dev)).add(Residual::new(8, dev)).add(nn::Linear::new(8, 3, dev))
}

#[test]
fn names_counts_and_descriptions_come_from_visit() {
    let m = model(&Device::Cpu);
    let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.inner.0.weight", "1.inner.0.bias", "1.gate", "2.weight", "2.bias"]);
    assert_eq!(m.num_parameters(), 4 * 8 + 8 + 8 * 8 + 8 + 8 + 8 * 3 + 3);
    assert_eq!(m.state_dict().len(), 7);
    assert_eq!(m[1].describe(), "Residual");
    assert_eq!(m.describe(), "Sequential(Linear(4 -> 8), Residual, Linear(8 -> 3))");
    // Indexing and iterating.
    assert_eq!(m.len(), 3);
    assert_eq!(m.iter().map(|l| l.num_parameters()).collect::<Vec<_>>(), [40, 80, 27]);
    assert!(m.get(3).is_none());
}

#[test]
fn boxed_modules_are_modules() {
    let dev = Device::Cpu;
    let layers: Vec<Box<dyn Module>> = vec![Box::new(nn::Linear::new(2, 3, &dev)), Box::new(nn::Tanh)];
    let boxed: Box<dyn Module> = Box::new(layers.into_iter().collect::<nn::Sequential>());
    assert_eq!(boxed.num_parameters(), 9);
    let nested = nn::Sequential::new().add(boxed).add(nn::Linear::new(3, 1, &dev));
    assert_eq!(nested.named_parameters()[0].0, "0.0.weight");
    assert_eq!(nested.forward(&Tensor::ones([5, 2], &dev)).dims(), &[5, 1]);
}

fn evaluation_restores_the_mode_it_found(dev: &Device) {
    let data = wgrad::data::Dataset::new(vec![0.5; 20 * 4], (0..20).map(|i| (i % 3) as f32).collect(), &[4], 3);
    let m = model(dev);
    assert!(m.is_training(), "modules start in training mode");
    evaluate(&m, &data, 8).unwrap();
    assert!(m.is_training(), "evaluate left the model in eval mode");
    predict(&m, &data, 8).unwrap();
    assert!(m.is_training());
    m.eval();
    evaluate(&m, &data, 8).unwrap();
    assert!(!m.is_training());
    // Dropout follows the mode: identical outputs in eval mode only.
    let x = Tensor::ones([2, 4], dev);
    assert_eq!(m.forward(&x).to_vec().unwrap(), m.forward(&x).to_vec().unwrap());
    m.train();
    assert_ne!(m.forward(&x).to_vec().unwrap(), m.forward(&x).to_vec().unwrap());
}
test_device!(evaluation_restores_the_mode_it_found);

fn a_frozen_submodule_gets_no_gradient_and_does_not_move(dev: &Device) {
    let m = model(dev);
    m[1].requires_grad(false);
    let frozen: Vec<Vec<f32>> = m[1].parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    let before_last = m[2].parameters()[0].to_vec().unwrap();
    let mut opt = Adam::new(m.parameters(), 0.01);
    let x = Tensor::ones([6, 4], dev);
    let y = Tensor::from_vec(vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0], [6], dev).unwrap();
    for _ in 0..3 {
        let grads = m.forward(&x).cross_entropy(&y).backward();
        for p in m[1].parameters() {
            assert!(grads.get(&p).is_none(), "a frozen parameter received a gradient");
        }
        assert!(grads.get(&m[0].parameters()[0]).is_some(), "gradients stop at the frozen block");
        opt.step(&grads);
    }
    let after: Vec<Vec<f32>> = m[1].parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    assert_eq!(frozen, after);
    assert_ne!(before_last, m[2].parameters()[0].to_vec().unwrap());
    // Unfrozen, it trains again.
    m[1].requires_grad(true);
    let grads = m.forward(&x).cross_entropy(&y).backward();
    assert!(grads.get(&m[1].parameters()[0]).is_some());
}
test_device!(a_frozen_submodule_gets_no_gradient_and_does_not_move);

#[test]
fn to_device_moves_parameters_in_place() {
    let Some(gpu) = common::gpu() else { return };
    let m = model(&Device::Cpu);
    m.eval();
    let x = Tensor::from_vec((0..8).map(|v| v as f32 / 8.0).collect(), [2, 4], &Device::Cpu).unwrap();
    let want = m.forward(&x).to_vec().unwrap();
    let held = m[0].parameters()[0].clone();
    m.to_device(&gpu).unwrap();
    assert!(m.parameters().iter().all(|p| p.device() == gpu));
    assert_eq!(held.device(), gpu, "handles held elsewhere see the move");
    let got = m.forward(&x.to_device(&gpu).unwrap()).to_vec().unwrap();
    common::assert_close(&got, &want, 1e-5, 1e-5, "forward after the move");
    // And it trains there, and comes back.
    let mut opt = Adam::new(m.parameters(), 0.01);
    let data = wgrad::data::Dataset::new(vec![0.5; 8 * 4], vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0], &[4], 3);
    let before: Vec<Vec<f32>> = m.parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    fit(&m, &mut opt, &data, &FitConfig { epochs: 1, verbose: false, ..FitConfig::default() }).unwrap();
    let trained: Vec<Vec<f32>> = m.parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    assert_ne!(trained, before, "fit on the GPU changed no parameter");
    // fit leaves the model training; dropout must not make the two forwards differ.
    m.eval();
    let on_gpu = m.forward(&x.to_device(&gpu).unwrap()).to_vec().unwrap();
    m.to_device(&Device::Cpu).unwrap();
    assert!(m.parameters().iter().all(|p| p.device().is_cpu()));
    let back: Vec<Vec<f32>> = m.parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    assert_eq!(back, trained, "the move back changed the trained parameters");
    let on_cpu = m.forward(&x).to_vec().unwrap();
    common::assert_close(&on_cpu, &on_gpu, 1e-5, 1e-5, "forward after coming back");
}

#[test]
fn a_linear_shape_error_names_the_layer() {
    let layer = nn::Linear::new(784, 128, &Device::Cpu);
    let msg = common::panic_message_of(|| drop(layer.forward(&Tensor::zeros([8, 5], &Device::Cpu))));
    assert!(msg.starts_with("Linear(784 -> 128): input of shape [8, 5] has 5 features, the layer takes 784"), "{msg}");
}

/// `Linear::torch` draws PyTorch's `nn.Linear` initialisation: weight and
/// bias both within ±1/√inputs, the bias not zero.
#[test]
fn linear_torch_draws_weight_and_bias_as_pytorch() {
    wgrad::manual_seed(4);
    let layer = nn::Linear::torch(16, 8, &Device::Cpu);
    let bound = 0.25;
    let w = layer.weight.to_vec().unwrap();
    let b = layer.bias.as_ref().unwrap().to_vec().unwrap();
    assert_eq!((w.len(), b.len()), (128, 8));
    assert!(w.iter().chain(&b).all(|v| v.abs() <= bound), "outside ±{bound}");
    assert!(b.iter().any(|&v| v != 0.0) && w.iter().any(|&v| v.abs() > 0.2), "not spread over the range");
}
