//! Long training runs keep memory flat on each device: after warm-up, every
//! step ends with no tape entries left, the same number of live tensors,
//! and (on the GPU) the same bytes live, the same bytes pooled and no new
//! buffer allocations.
//!
//! CI runs 600 steps per device (warm-up: one epoch of 251 steps, which
//! covers the short last batch). The 10,000-step run of the issue is
//! `cargo test --release --test long_run -- --ignored`.
//!
//! The counters are process-wide, so the devices run one after the other in
//! one test.

mod common;

use wgrad::data::mnist;
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::{Device, Generator, live_nodes, live_tensors};

const WARM_UP: usize = 260;

fn flat_for(dev: &Device, steps: usize) {
    let data = mnist::load("data/mnist").unwrap();
    wgrad::manual_seed(0);
    let model = nn::Sequential::new()
        .add(nn::Flatten)
        .add(nn::Linear::new(784, 128, dev))
        .add(nn::ReLU)
        .add(nn::Dropout::new(0.2))
        .add(nn::Linear::new(128, 10, dev));
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let mut shuffle = Generator::new(1);
    let mut baseline = None;
    let mut step = 0;
    let mut last_loss = f32::NAN;
    while step < steps {
        for (x, y) in data.train.batches(32, Some(&mut shuffle), dev) {
            let loss = model.forward(&x).cross_entropy(&y);
            last_loss = loss.item().unwrap();
            opt.step(&loss.backward());
            drop((x, y, loss));
            let memory = match dev {
                Device::Gpu(g) => Some(g.memory_stats()),
                Device::Cpu => None,
            };
            let now = (live_nodes(), live_tensors(), memory);
            assert_eq!(now.0, 0, "{dev}: tape entries left after step {step}");
            if step == WARM_UP {
                baseline = Some(now);
            } else if let Some(b) = &baseline {
                assert_eq!(&now, b, "{dev}: memory changed at step {step} (tape, tensors, GPU memory)");
            }
            step += 1;
            if step == steps {
                break;
            }
        }
    }
    assert!(last_loss < 0.5, "{dev}: still learning? loss {last_loss}");
}

fn both_devices(steps: usize) {
    flat_for(&Device::Cpu, steps);
    if let Some(gpu) = common::gpu() {
        flat_for(&gpu, steps);
    }
}

#[test]
fn training_memory_is_flat() {
    both_devices(600);
}

#[test]
#[ignore = "10,000 steps per device: about a minute on a GPU, longer on lavapipe"]
fn ten_thousand_steps_keep_memory_flat() {
    both_devices(10_000);
}
