//! Captured steps (`CapturedStep`): replayed steps compute exactly what
//! eager steps compute — parameters, optimizer state and losses bit for
//! bit over 50 steps with dropout, a learning-rate change and a smaller
//! batch that falls back to eager; a replaced optimizer state is noticed
//! and the step captured again; a step that reads back stays eager; bad
//! labels in a replayed step are still reported; and a replay dispatches
//! the eager step's kernels, counted on the noop adapter.

mod common;

use std::cell::RefCell;
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::{CaptureStats, CapturedStep, Device, Error, GpuDevice, GpuOptions, Tensor, manual_seed};

/// Batch `i` (rows of 28×28 pixels and labels), the same on every run.
fn batch(i: usize, rows: usize, dev: &Device) -> (Tensor, Tensor) {
    let mut g = wgrad::Generator::new(1000 + i as u64);
    let x: Vec<f32> = (0..rows * 784).map(|_| g.uniform()).collect();
    let y: Vec<f32> = (0..rows).map(|_| g.below(10) as f32).collect();
    (Tensor::from_vec(x, [rows, 28, 28], dev).unwrap(), Tensor::from_vec(y, [rows], dev).unwrap())
}

/// Rows of the batch fed at step `i`: one smaller batch, as an epoch's last.
fn rows_at(i: usize) -> usize {
    if i == 25 { 20 } else { 32 }
}

/// Losses, parameters, optimizer buffers, optimizer numbers, capture stats.
type Run = (Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<(String, f64)>, CaptureStats);

/// 50 steps of Adam on the MNIST model, captured or eager; the learning
/// rate drops at step 30. Returns the losses, the parameters, the
/// optimizer's state and the capture's stats.
fn train_captured(dev: &Device) -> Run {
    manual_seed(7);
    let model = common::seed_mlp(dev);
    let opt = RefCell::new(Adam::new(model.parameters(), 1e-3));
    let mut f = |xy: &[Tensor]| mnist_step(&model, &opt, &xy[0], &xy[1]);
    let mut step = CapturedStep::new(&mut f);
    let mut losses = Vec::new();
    for i in 0..50 {
        if i == 30 {
            opt.borrow_mut().set_learning_rate(3e-4);
        }
        let (x, y) = batch(i, rows_at(i), dev);
        let out = step.run(&[x, y]).unwrap();
        losses.push(out[0].item().unwrap());
    }
    let stats = step.stats();
    drop(step);
    let params = common::values(&model.parameters());
    let state = opt.borrow().state_dict();
    let buffers = state.tensors.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    (losses, params, buffers, state.scalars, stats)
}

fn captured_and_eager_steps_agree_bit_for_bit(dev: &Device) {
    let eager = train_eager(dev);
    let captured = train_captured(dev);
    assert_eq!(eager.0, captured.0, "losses");
    assert_eq!(eager.1, captured.1, "parameters");
    assert_eq!(eager.2, captured.2, "optimizer buffers");
    assert_eq!(eager.3, captured.3, "optimizer step counts and learning rate");
    let stats = captured.4;
    if !dev.is_cpu() {
        // Warm-up and the smaller batch eager, one capture, 47 replays.
        assert_eq!(stats, CaptureStats { eager: 2, captures: 1, replays: 47 });
    } else {
        assert_eq!(stats, CaptureStats { eager: 50, captures: 0, replays: 0 });
    }
}
test_device!(captured_and_eager_steps_agree_bit_for_bit);

/// As `train`, every step eager.
fn train_eager(dev: &Device) -> Run {
    manual_seed(7);
    let model = common::seed_mlp(dev);
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let mut losses = Vec::new();
    for i in 0..50 {
        if i == 30 {
            opt.set_learning_rate(3e-4);
        }
        let (x, y) = batch(i, rows_at(i), dev);
        let loss = model.forward(&x).cross_entropy(&y);
        opt.step(&loss.backward());
        losses.push(loss.item().unwrap());
    }
    let params = common::values(&model.parameters());
    let state = opt.state_dict();
    let buffers = state.tensors.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    (losses, params, buffers, state.scalars, CaptureStats::default())
}

#[test]
fn a_replaced_optimizer_state_is_captured_again() {
    let Some(dev) = common::gpu() else { return };
    let run = |reload: bool| {
        manual_seed(3);
        let model = common::seed_mlp(&dev);
        let opt = RefCell::new(Adam::new(model.parameters(), 1e-3));
        let mut f = |xy: &[Tensor]| mnist_step(&model, &opt, &xy[0], &xy[1]);
        let mut step = CapturedStep::new(&mut f);
        let mut kept = None;
        for i in 0..8 {
            if reload && i == 4 {
                // New moment tensors: a replay would update the old ones,
                // which `kept` still holds.
                let state = opt.borrow().state_dict();
                opt.borrow_mut().load_state_dict(&state).unwrap();
                kept = Some(state);
            }
            let (x, y) = batch(i, 32, &dev);
            step.run(&[x, y]).unwrap();
        }
        let stats = step.stats();
        drop((step, kept));
        (common::values(&model.parameters()), stats)
    };
    let (plain, stats) = run(false);
    assert_eq!(stats, CaptureStats { eager: 1, captures: 1, replays: 6 });
    let (reloaded, stats) = run(true);
    // The reload is noticed at step 4, which runs eagerly (a warm-up: a new
    // optimizer may create state in its first step); step 5 is captured.
    assert_eq!(stats, CaptureStats { eager: 2, captures: 2, replays: 4 });
    assert_eq!(plain, reloaded);
}

#[test]
fn a_new_optimizer_and_invalidate_warm_up_before_capturing_again() {
    let Some(dev) = common::gpu() else { return };
    let run = |captured: bool| {
        manual_seed(4);
        let model = common::seed_mlp(&dev);
        let opt = RefCell::new(Adam::new(model.parameters(), 1e-3));
        let mut f = |xy: &[Tensor]| mnist_step(&model, &opt, &xy[0], &xy[1]);
        let mut step = CapturedStep::new(&mut f);
        let mut losses = Vec::new();
        for i in 0..8 {
            if i == 4 {
                // A fresh optimizer: its first step creates the moments,
                // which a capture of that step would zero at every replay.
                *opt.borrow_mut() = Adam::new(model.parameters(), 2e-3);
                step.invalidate();
            }
            let (x, y) = batch(i, 32, &dev);
            let out = if captured { step.run(&[x, y]).unwrap() } else { mnist_step(&model, &opt, &x, &y) };
            losses.push(out[0].item().unwrap());
        }
        let stats = step.stats();
        drop(step);
        (losses, common::values(&model.parameters()), stats)
    };
    let (eager_losses, eager_params, _) = run(false);
    let (losses, params, stats) = run(true);
    assert_eq!(losses, eager_losses);
    assert_eq!(params, eager_params);
    assert_eq!(stats, CaptureStats { eager: 2, captures: 2, replays: 4 });
}

/// One training step of `model` on a batch of labelled rows: the loss, as
/// a step's outputs.
fn mnist_step(model: &impl Module, opt: &RefCell<Adam>, x: &Tensor, y: &Tensor) -> Vec<Tensor> {
    let loss = model.forward(x).cross_entropy(y);
    opt.borrow_mut().step(&loss.backward());
    vec![loss]
}

#[test]
fn host_side_random_numbers_keep_a_step_eager() {
    let Some(dev) = common::gpu() else { return };
    let w = Tensor::ones([4], &dev).requires_grad();
    let mut f = |x: &[Tensor]| {
        // Noise drawn on the host: a replay would repeat it.
        let noisy = &x[0] + &Tensor::randn([4], &x[0].device());
        let loss = (&w * &noisy).sum();
        wgrad::optim::Sgd::new(vec![w.clone()], 0.1).step(&loss.backward());
        vec![loss]
    };
    let mut step = CapturedStep::new(&mut f);
    for _ in 0..4 {
        step.run(&[Tensor::ones([4], &dev)]).unwrap();
    }
    assert!(step.fallback().is_some_and(|why| why.contains("random numbers")), "{:?}", step.fallback());
    assert_eq!(step.stats().replays, 0);
}

#[test]
fn a_step_that_reads_back_stays_eager_and_correct() {
    let Some(dev) = common::gpu() else { return };
    let w = Tensor::ones([4], &dev).requires_grad();
    let mut seen = Vec::new();
    let mut f = |x: &[Tensor]| {
        let loss = (&w * &x[0]).sum();
        // A host decision on a value: cannot be replayed.
        seen.push(loss.item().unwrap());
        let mut opt = wgrad::optim::Sgd::new(vec![w.clone()], 0.5);
        opt.step(&loss.backward());
        vec![loss]
    };
    let mut step = CapturedStep::new(&mut f);
    for _ in 0..5 {
        step.run(&[Tensor::ones([4], &dev)]).unwrap();
    }
    assert!(step.fallback().is_some_and(|why| why.contains("reads a tensor back")), "{:?}", step.fallback());
    assert_eq!(step.stats().replays, 0);
    drop(step);
    assert_eq!(seen, [4.0, 2.0, 0.0, -2.0, -4.0]);
    assert_eq!(w.to_vec().unwrap(), [-1.5; 4]);
}

#[test]
fn bad_labels_in_a_replayed_step_are_reported() {
    let Some(dev) = common::gpu() else { return };
    manual_seed(5);
    let model = nn::Linear::new(6, 3, &dev);
    let opt = RefCell::new(Adam::new(model.parameters(), 1e-2));
    let mut f = |xy: &[Tensor]| mnist_step(&model, &opt, &xy[0], &xy[1]);
    let mut step = CapturedStep::new(&mut f);
    let x = Tensor::randn([4, 6], &dev);
    let good = Tensor::from_vec(vec![0.0, 1.0, 2.0, 1.0], [4], &dev).unwrap();
    let bad = Tensor::from_vec(vec![0.0, 7.0, 2.0, 1.0], [4], &dev).unwrap();
    for _ in 0..3 {
        assert!(step.run(&[x.clone(), good.clone()]).unwrap()[0].item().unwrap().is_finite());
    }
    let loss = step.run(&[x.clone(), bad]).unwrap().remove(0);
    assert_eq!(step.stats().replays, 2);
    assert!(matches!(loss.item(), Err(Error::IndexOutOfRange { .. })), "{:?}", loss.item());
    // The parameters the bad step updated carry its error, as in an eager step.
    assert!(model.parameters()[0].to_vec().is_err());
}

#[test]
fn a_replay_dispatches_the_eager_steps_kernels_on_the_noop_adapter() {
    let gpu = GpuDevice::with_options(GpuOptions { backends: Some("noop".into()), ..GpuOptions::default() }).unwrap();
    let dev = Device::Gpu(gpu.clone());
    manual_seed(0);
    let model = common::seed_mlp(&dev);
    let opt = RefCell::new(Adam::new(model.parameters(), 1e-3));
    let mut f = |xy: &[Tensor]| mnist_step(&model, &opt, &xy[0], &xy[1]);
    let mut step = CapturedStep::new(&mut f);
    let (x, y) = batch(0, 32, &dev);
    let count = |step: &mut CapturedStep<_>| {
        let before = gpu.kernels_dispatched();
        step.run(&[x.clone(), y.clone()]).unwrap();
        gpu.synchronize().unwrap();
        gpu.kernels_dispatched() - before
    };
    // The warm-up also creates Adam's moments (a fill each).
    let _warm_up = count(&mut step);
    let captured = count(&mut step);
    let replayed = count(&mut step);
    assert_eq!(replayed, captured);
    assert_eq!(step.dispatches(), Some(captured as usize));
    assert_eq!(step.stats(), CaptureStats { eager: 1, captures: 1, replays: 1 });
}

/// `fit` with `capture` trains exactly as without: the same history
/// (losses, accuracy, validation) and parameters, bit for bit, with
/// dropout, a schedule, gradient clipping and a smaller last batch.
fn fit_with_capture_trains_as_without(dev: &Device) {
    use wgrad::data::Dataset;
    use wgrad::optim::Cosine;
    use wgrad::train::{FitConfig, fit};
    let mut g = wgrad::Generator::new(1);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    // 84 training items: five batches of 16 and one of 4.
    for i in 0..105 {
        let class = i % 3;
        for d in 0..4 {
            x.push(if d == class { 2.0 } else { 0.0 } + 0.3 * g.normal());
        }
        y.push(class as f32);
    }
    let data = Dataset::new(x, y, &[4], 3);
    let run = |capture: bool| {
        manual_seed(5);
        let model = nn::Sequential::new()
            .add(nn::Linear::new(4, 16, dev))
            .add(nn::ReLU)
            .add(nn::Dropout::new(0.3))
            .add(nn::Linear::new(16, 3, dev));
        let mut opt = Adam::new(model.parameters(), 1e-2);
        let config = FitConfig {
            epochs: 3,
            batch_size: 16,
            validation_split: 0.2,
            schedule: Some(Box::new(Cosine { warmup: 3, min_lr: 1e-4 })),
            clip_grad_norm: Some(1.0),
            verbose: false,
            capture,
            ..FitConfig::default()
        };
        let history = fit(&model, &mut opt, &data, &config).unwrap();
        let stats: Vec<_> = history.iter().map(|e| (e.train.clone(), e.validation.clone(), e.lr)).collect();
        let params: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.to_vec().unwrap()).collect();
        (format!("{stats:?}"), params)
    };
    assert_eq!(run(true), run(false));
}
test_device!(fit_with_capture_trains_as_without);

/// As `captured_and_eager_steps_agree_bit_for_bit`, with the optimizer's
/// parameters updated by multi-tensor dispatches and matmul epilogues (the
/// defaults on hardware GPUs; software rasterisers batch only small
/// parameters, and `WGRAD_EPILOGUES=0` turns epilogues off): replays share one optimizer rule
/// per step, and redraw the dropout keys inside the epilogues' parameters.
#[test]
fn captured_multi_tensor_steps_agree_bit_for_bit() {
    if common::gpu().is_none() {
        return;
    }
    let options = GpuOptions { multi_tensor: Some(true), epilogues: Some(true), ..GpuOptions::from_env() };
    let dev = Device::Gpu(GpuDevice::with_options(options).unwrap());
    captured_and_eager_steps_agree_bit_for_bit(&dev);
}

/// A replay updates the parameters in place, as an eager step does: a
/// backward that saved them before it refuses (the in-place check), rather
/// than silently computing with the new weights.
#[test]
fn a_backward_saved_before_a_replay_refuses() {
    let Some(dev) = common::gpu() else { return };
    manual_seed(7);
    let model = common::seed_mlp(&dev);
    let opt = RefCell::new(Adam::new(model.parameters(), 1e-3));
    let mut f = |xy: &[Tensor]| mnist_step(&model, &opt, &xy[0], &xy[1]);
    let mut step = CapturedStep::new(&mut f);
    for i in 0..3 {
        let (x, y) = batch(i, 32, &dev);
        step.run(&[x, y]).unwrap();
    }
    let replays = step.stats().replays;
    assert!(replays >= 1, "{:?}", step.stats());
    let (x, y) = batch(9, 32, &dev);
    let saved = model.forward(&x).cross_entropy(&y);
    let (x, y) = batch(10, 32, &dev);
    step.run(&[x, y]).unwrap();
    assert_eq!(step.stats().replays, replays + 1, "the last run was a replay");
    let msg = common::panic_message_of(|| drop(saved.backward()));
    assert!(msg.contains("modified in place"), "{msg}");
}
