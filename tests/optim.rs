//! Optimizers against their update rules worked by hand, and the fused GPU
//! update kernels against the CPU over many steps.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::optim::{Adam, Optimizer, Sgd, clip_grad_norm};
use wgrad::{Device, Gradients, Tensor};

/// One step of `opt` on `w` with loss Σ g·w, so the gradient is exactly `g`.
fn step_with(opt: &mut dyn Optimizer, w: &Tensor, g: &[f32]) {
    let g = Tensor::from_slice(g, w.shape().clone(), &w.device()).unwrap();
    let grads = (w * &g).sum().backward();
    opt.step(&grads);
}

fn var(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, [v.len()], &Device::Cpu).unwrap().requires_grad()
}

#[test]
fn sgd_plain_and_weight_decay() {
    let w = var(&[1.0, -2.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1).weight_decay(0.5);
    step_with(&mut opt, &w, &[1.0, 1.0]);
    // w -= 0.1 · (g + 0.5·w): 1 - 0.1·1.5 = 0.85; -2 - 0.1·0 = -2.
    assert_close(&w.to_vec().unwrap(), &[0.85, -2.0], 1e-6, 0.0, "sgd");
}

#[test]
fn sgd_momentum_and_nesterov() {
    // Two steps with g = 1: v1 = 1, v2 = 0.9 + 1 = 1.9.
    let w = var(&[0.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1).momentum(0.9);
    step_with(&mut opt, &w, &[1.0]);
    step_with(&mut opt, &w, &[1.0]);
    assert_close(&w.to_vec().unwrap(), &[-0.1 - 0.19], 1e-6, 0.0, "momentum");
    // Nesterov steps by g + 0.9·v: 1.9, then 1 + 0.9·1.9 = 2.71.
    let w = var(&[0.0]);
    let mut opt = Sgd::new(vec![w.clone()], 0.1).momentum(0.9).nesterov(true);
    step_with(&mut opt, &w, &[1.0]);
    step_with(&mut opt, &w, &[1.0]);
    assert_close(&w.to_vec().unwrap(), &[-0.19 - 0.271], 1e-6, 0.0, "nesterov");
}

#[test]
fn adam_first_steps_move_by_the_learning_rate() {
    // With bias correction, Adam's first step is lr·sign(g) (up to ε).
    let w = var(&[1.0, 1.0]);
    let mut opt = Adam::new(vec![w.clone()], 0.01);
    step_with(&mut opt, &w, &[3.0, -0.5]);
    assert_close(&w.to_vec().unwrap(), &[0.99, 1.01], 1e-6, 0.0, "adam step 1");
    // Second step with g = 1 after g = 3: m̂ = (0.09+0.1)/0.19·… worked out:
    // m = 0.9·0.3 + 0.1·1 = 0.37, v = 0.999·0.009 + 0.001·1 = 0.009991,
    // m̂ = 0.37/0.19, v̂ = 0.009991/0.001999; step = 0.01·m̂/√v̂.
    step_with(&mut opt, &w, &[1.0, 1.0]);
    let (m_hat, v_hat) = (0.37f64 / 0.19, 0.009991f64 / 0.001999);
    let want = 0.99 - 0.01 * m_hat / (v_hat.sqrt() + 1e-8);
    assert_close(&w.to_vec().unwrap()[..1], &[want as f32], 1e-6, 0.0, "adam step 2");
}

#[test]
fn adamw_decays_weights_directly() {
    // A zero gradient leaves only the decoupled decay: w·(1 - lr·wd).
    let w = var(&[2.0]);
    let mut opt = Adam::adamw(vec![w.clone()], 0.1).weight_decay(0.5);
    step_with(&mut opt, &w, &[0.0]);
    assert_close(&w.to_vec().unwrap(), &[2.0 * (1.0 - 0.05)], 1e-6, 0.0, "adamw");
}

#[test]
fn variables_without_gradients_are_left_alone() {
    let (a, b) = (var(&[1.0]), var(&[1.0]));
    let mut opt = Sgd::new(vec![a.clone(), b.clone()], 0.5);
    step_with(&mut opt, &a, &[1.0]);
    assert_eq!(b.to_vec().unwrap(), vec![1.0]);
    assert_eq!(a.to_vec().unwrap(), vec![0.5]);
}

#[test]
fn clipping_scales_to_the_global_norm() {
    let (a, b) = (var(&[0.0, 0.0]), var(&[0.0]));
    // Gradients (3, 0) and (4): global norm 5.
    let g = (&a * &Tensor::from_vec(vec![3.0, 0.0], [2], &Device::Cpu).unwrap()).sum() + (&b * 4.0).sum();
    let mut grads: Gradients = g.backward();
    let norm = clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 1.0).unwrap();
    assert_close(&[norm.item().unwrap()], &[5.0], 1e-6, 0.0, "norm");
    assert_close(&grads.get(&a).unwrap().to_vec().unwrap(), &[0.6, 0.0], 1e-5, 0.0, "clipped a");
    assert_close(&grads.get(&b).unwrap().to_vec().unwrap(), &[0.8], 1e-5, 0.0, "clipped b");
    // Below the limit nothing changes.
    let small = (&a * 0.3).sum() + (&b * 0.4).sum();
    let mut grads = small.backward();
    clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 1.0).unwrap();
    assert_close(&grads.get(&a).unwrap().to_vec().unwrap(), &[0.3, 0.3], 1e-6, 0.0, "unclipped a");
    // Variables without gradients contribute nothing and get none.
    let c = var(&[1.0]);
    let mut grads = small.detach().sum().backward();
    assert!(clip_grad_norm(&mut grads, &[c], 1.0).is_none());
}

/// Runs 20 steps of an optimizer on a small quadratic problem on `dev`.
fn trajectory(dev: &Device, make: &dyn Fn(Vec<Tensor>) -> Box<dyn Optimizer>) -> Vec<f32> {
    let w = Tensor::from_vec(uniform(&[257], -1.0, 1.0, 1), [257], dev).unwrap().requires_grad();
    let target = Tensor::from_vec(uniform(&[257], -1.0, 1.0, 2), [257], dev).unwrap();
    let mut opt = make(vec![w.clone()]);
    for _ in 0..20 {
        let loss = (&w - &target).sqr().sum();
        opt.step(&loss.backward());
    }
    w.to_vec().unwrap()
}

#[test]
fn fused_gpu_updates_match_the_cpu() {
    let Some(dev) = gpu() else { return };
    type Make = Box<dyn Fn(Vec<Tensor>) -> Box<dyn Optimizer>>;
    let optimizers: Vec<(&str, Make)> = vec![
        ("sgd", Box::new(|p| Box::new(Sgd::new(p, 0.05).weight_decay(0.01)))),
        ("momentum", Box::new(|p| Box::new(Sgd::new(p, 0.05).momentum(0.9)))),
        ("nesterov", Box::new(|p| Box::new(Sgd::new(p, 0.05).momentum(0.9).nesterov(true)))),
        ("adam", Box::new(|p| Box::new(Adam::new(p, 0.05).weight_decay(0.01)))),
        ("adamw", Box::new(|p| Box::new(Adam::adamw(p, 0.05)))),
    ];
    for (name, make) in &optimizers {
        let cpu = trajectory(&Device::Cpu, make.as_ref());
        let gpu = trajectory(&dev, make.as_ref());
        // Twenty steps of the same f32 formula; Adam's sqrt and division may
        // round differently on the GPU by an ulp per step.
        assert_close(&gpu, &cpu, 1e-5, 1e-4, name);
    }
}

/// The multi-tensor update (several parameters per dispatch, as PyTorch's
/// fused optimizers) gives the bits of one update per parameter: each rule,
/// parameters of odd sizes (partial vec4s, a single element) and one large
/// enough to take a dispatch of its own, over several steps.
#[test]
fn multi_tensor_updates_match_per_parameter_updates_bit_for_bit() {
    if gpu().is_none() {
        return;
    }
    // A device of its own with multi-tensor updates on (whatever
    // WGRAD_MULTI_TENSOR says).
    let g =
        wgrad::GpuDevice::with_options(wgrad::GpuOptions { multi_tensor: Some(true), ..wgrad::GpuOptions::from_env() })
            .unwrap();
    let dev = Device::Gpu(g.clone());
    let g = &g;
    // 1M elements take a dispatch of their own on every adapter, 16,384 on
    // a software rasteriser (which runs every parameter's branch of a
    // multi-tensor kernel in every workgroup).
    let sizes: &[&[usize]] = &[&[3], &[17, 5], &[1], &[64], &[1 << 20], &[6, 7], &[128, 128], &[2]];
    let software = g.info().device_type == "Cpu";
    let alone: &[u64] = if software { &[1 << 20, 1 << 14] } else { &[1 << 20] };
    type Make = fn(Vec<Tensor>) -> Box<dyn Optimizer>;
    let rules: [(&str, Make); 5] = [
        ("sgd", |p| Box::new(Sgd::new(p, 0.1).weight_decay(0.01))),
        ("momentum", |p| Box::new(Sgd::new(p, 0.1).momentum(0.9))),
        ("nesterov", |p| Box::new(Sgd::new(p, 0.1).momentum(0.9).nesterov(true).weight_decay(1e-3))),
        ("adam", |p| Box::new(Adam::new(p, 1e-2).weight_decay(0.1))),
        ("adamw", |p| Box::new(Adam::adamw(p, 1e-2))),
    ];
    for (name, make) in rules {
        let run = |together: bool| {
            wgrad::manual_seed(9);
            let params: Vec<Tensor> = sizes.iter().map(|s| Tensor::randn(s.to_vec(), &dev).requires_grad()).collect();
            let mut opts: Vec<Box<dyn Optimizer>> = if together {
                vec![make(params.clone())]
            } else {
                params.iter().map(|p| make(vec![p.clone()])).collect()
            };
            let (mut dispatched, mut own) = (0, Vec::new());
            for step in 0..4 {
                let loss = params
                    .iter()
                    .map(|p| (p * (step as f32 + 1.0)).tanh().sqr().sum())
                    .reduce(|a, b| a + b)
                    .expect("parameters");
                let grads = loss.backward();
                g.synchronize().unwrap();
                let before = g.kernels_dispatched();
                g.start_profiling();
                for opt in &mut opts {
                    opt.step(&grads);
                }
                dispatched = g.kernels_dispatched() - before;
                // The sizes of the parameters the per-parameter kernel
                // (`optim.wgsl`) updated: its first binding, the gradient.
                own = g
                    .stop_profiling()
                    .unwrap()
                    .events
                    .iter()
                    .filter(|e| e.kernel.starts_with("optim::"))
                    .map(|e| e.elements[0])
                    .collect::<Vec<u64>>();
            }
            (params.iter().map(|p| p.to_vec().unwrap()).collect::<Vec<_>>(), dispatched, own)
        };
        let ((together, fewer, own), (apart, each, _)) = (run(true), run(false));
        assert!(together == apart, "{name}: multi-tensor and per-parameter updates differ");
        // Eight parameters: the large ones alone, the others in one or more
        // multi-tensor dispatches.
        assert!(fewer < each && each == 8, "{name}: {fewer} dispatches together, {each} apart");
        // (A group of one small parameter, left over, takes that kernel too.)
        for size in alone {
            assert!(own.contains(size), "{name}: {size} elements not updated alone ({own:?})");
        }
    }
}

/// One optimizer over parameters on two devices, and over two parameters
/// sharing one storage (each updated once, in turn, as before multi-tensor
/// updates), steps without locking a storage twice.
#[test]
fn parameters_on_two_devices_or_sharing_storage_step() {
    let Some(dev) = gpu() else { return };
    let a = Tensor::ones([3], &Device::Cpu).requires_grad();
    let b = Tensor::ones([3], &dev).requires_grad();
    let mut grads = a.sqr().sum().backward();
    let gb = b.sqr().sum().backward();
    grads.insert(&b, gb.get(&b).unwrap().clone());
    Sgd::new(vec![a.clone(), b.clone()], 0.1).step(&grads);
    assert_eq!(a.to_vec().unwrap(), [0.8; 3]);
    assert_eq!(b.to_vec().unwrap(), [0.8; 3]);

    for device in [Device::Cpu, dev] {
        let w = Tensor::ones([3], &device);
        let (x, y) = (w.clone().requires_grad(), w.requires_grad());
        let grads = (&x + &y).sum().backward();
        Sgd::new(vec![x.clone(), y.clone()], 0.1).step(&grads);
        // One storage, two updates of 0.1 each: 1 → 0.9 → 0.8.
        assert_close(&x.to_vec().unwrap(), &[0.8; 3], 1e-6, 0.0, "a storage shared by two parameters");
    }
}

/// An optimizer's state fits only an optimizer over as many parameters:
/// Adam's state over a whole model does not load into an Adam over its
/// head (whose parameter 0 would take the first layer's moments), and
/// nothing changes; the same state loads into an Adam over the same
/// parameters.
#[test]
fn optimizer_state_for_other_parameters_is_refused() {
    // Four parameters of one shape, so only the count can tell them apart.
    let params: Vec<Tensor> = (0..4).map(|i| var(&[0.5 + i as f32; 4])).collect();
    let mut opt = Adam::new(params.clone(), 0.01);
    for p in &params {
        let g: Vec<f32> = (0..p.elem_count()).map(|i| 0.1 * i as f32).collect();
        step_with(&mut opt, p, &g);
    }
    let state = opt.state_dict();
    let head = vec![var(&[0.5; 4]), var(&[0.1; 4])];
    let mut head_opt = Adam::new(head.clone(), 0.5);
    let err = head_opt.load_state_dict(&state).unwrap_err().to_string();
    assert!(err.contains("2.exp_avg"), "{err}");
    assert_eq!(head_opt.learning_rate(), 0.5, "changed by a refused state");
    assert!(head_opt.state_dict().tensors.is_empty());
    // The same parameters' state loads.
    let mut again = Adam::new(params.clone(), 0.5);
    again.load_state_dict(&state).unwrap();
    assert_eq!(again.learning_rate(), 0.01);
}

/// A tensor an op computed is no parameter: it gets no gradient of its own
/// (`requires_grad` on it keeps it in its graph, as PyTorch's does), so an
/// optimizer over it refuses at once, as PyTorch's refuse a non-leaf
/// tensor, rather than never updating it.
#[test]
#[should_panic(expected = "parameter 1 (shape [3]) is not a variable")]
fn optimizers_refuse_a_computed_tensor() {
    let p = var(&[1.0, 2.0, 3.0]);
    let computed = p.mul_scalar(2.0).requires_grad();
    // Its gradient reaches `p`, through it.
    let g = computed.sum().backward();
    assert_eq!(g.get(&p).unwrap().to_vec().unwrap(), [2.0, 2.0, 2.0]);
    let _ = Adam::new(vec![p, computed], 0.1);
}
