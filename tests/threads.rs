//! Tensors and devices cross threads, and two threads training two models on
//! one device at once both get the results they would get alone.

mod common;

use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::{Device, GpuDevice, Gradients, Tensor};

#[test]
fn the_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tensor>();
    check::<Device>();
    check::<GpuDevice>();
    check::<Gradients>();
    check::<nn::Sequential>();
    check::<wgrad::Error>();
}

/// Trains a small model for 40 steps on fixed data; returns its weights.
fn train(dev: &Device, seed: u64) -> Vec<f32> {
    wgrad::manual_seed(seed);
    let model = nn::Sequential::new().add(nn::Linear::new(20, 32, dev)).add(nn::Tanh).add(nn::Linear::new(32, 4, dev));
    let mut opt = Adam::new(model.parameters(), 1e-2);
    let x = Tensor::randn([64, 20], dev);
    let y = Tensor::from_vec((0..64).map(|i| (i % 4) as f32).collect(), [64], dev).unwrap();
    for _ in 0..40 {
        let loss = model.forward(&x).cross_entropy(&y);
        opt.step(&loss.backward());
    }
    model.parameters().iter().flat_map(|p| p.to_vec().unwrap()).collect()
}

fn two_threads_train_at_once(dev: &Device) {
    let alone: Vec<Vec<f32>> = [1, 2].iter().map(|&s| train(dev, s)).collect();
    let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [1, 2].iter().map(|&s| scope.spawn(move || train(dev, s))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Each thread has its own default generator and the kernels are
    // deterministic, so interleaving changes nothing.
    assert_eq!(together, alone);
    assert_ne!(alone[0], alone[1]);
}
test_device!(two_threads_train_at_once);

#[test]
fn a_tensor_made_on_one_thread_is_used_on_another() {
    let devices: Vec<Device> = std::iter::once(Device::Cpu).chain(common::gpu()).collect();
    for dev in devices {
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], [3], &dev).unwrap().requires_grad();
        let grads = std::thread::spawn({
            let x = x.clone();
            move || (&x * &x).sum().backward()
        })
        .join()
        .unwrap();
        assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![2.0, 4.0, 6.0], "{dev}");
    }
}

/// Threads gathering with bad indices on one GPU while others read results
/// back: every bad gather is an error. (A read back on one thread used to
/// resolve another thread's check begun but not yet in the submission as
/// clean, so a bad index read back as a value now and then.)
#[test]
fn bad_indices_are_errors_whatever_other_threads_read() {
    let Some(dev) = common::gpu() else { return };
    let table = Tensor::randn([50, 8], &dev);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (dev, table) = (dev.clone(), table.clone());
            s.spawn(move || {
                for i in 0..150 {
                    let bad = (t + i) % 2 == 0;
                    let ids = Tensor::new([1.0, if bad { 50.0 } else { 7.0 }, 3.0], &dev).unwrap();
                    let got = table.index_select(0, &ids).to_vec();
                    assert_eq!(got.is_err(), bad, "thread {t}, step {i}: {got:?}");
                }
            });
        }
    });
}
