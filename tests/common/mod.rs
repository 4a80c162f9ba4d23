//! Helpers shared by the integration tests.
#![allow(dead_code)]

use wgrad::nn;
use wgrad::{Device, Generator, Tensor};

/// The seed lesson's MNIST model: Flatten → Linear 784→128 → ReLU →
/// Dropout 0.2 → Linear 128→10.
pub fn seed_mlp(dev: &Device) -> nn::Sequential {
    nn::Sequential::new()
        .add(nn::Flatten)
        .add(nn::Linear::new(784, 128, dev))
        .add(nn::ReLU)
        .add(nn::Dropout::new(0.2))
        .add(nn::Linear::new(128, 10, dev))
}

/// The values of `tensors`, read back.
pub fn values(tensors: &[Tensor]) -> Vec<Vec<f32>> {
    tensors.iter().map(|t| t.to_vec().unwrap()).collect()
}

/// Uniform random values in `[lo, hi)` from a fixed seed.
pub fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut g = Generator::new(seed);
    (0..shape.iter().product::<usize>()).map(|_| lo + (hi - lo) * g.uniform()).collect()
}

/// A CPU tensor of uniform values in `[lo, hi)`.
pub fn rand(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    Tensor::from_vec(uniform(shape, lo, hi, seed), shape, &Device::Cpu).unwrap()
}

/// Random values whose magnitude is in `[margin, 1 + margin)` with random
/// sign: well away from the kink at 0 of relu, abs and friends.
pub fn away_from_zero(shape: &[usize], margin: f32, seed: u64) -> Tensor {
    let v: Vec<f32> =
        uniform(shape, -1.0, 1.0, seed).into_iter().map(|x| if x < 0.0 { x - margin } else { x + margin }).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Integer class labels in `0..classes`, as f32.
pub fn labels(n: usize, classes: usize, seed: u64, device: &Device) -> Tensor {
    let mut g = Generator::new(seed);
    let v: Vec<f32> = (0..n).map(|_| g.below(classes) as f32).collect();
    Tensor::from_vec(v, [n], device).unwrap()
}

/// Asserts two slices agree elementwise: within `atol + rtol·|expected|`
/// where the expected value is finite, the same infinity where it is
/// infinite (the bound is infinite there and would pass anything), and NaN
/// exactly where it is NaN.
pub fn assert_close(actual: &[f32], expected: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let ok = if e.is_nan() {
            a.is_nan()
        } else if e.is_infinite() {
            a == e
        } else {
            (a - e).abs() <= atol + rtol * e.abs()
        };
        assert!(ok, "{what}: element {i}: got {a}, expected {e} (atol {atol}, rtol {rtol})");
    }
}

/// The message of a panic's payload: the `String` or `&str` that `panic!`
/// carries, or a placeholder (which no test's expected message matches)
/// for any other payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "<a panic payload that is not a string>".to_string(),
        },
    }
}

/// The panic message of `f`, which must panic.
pub fn panic_message_of(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    panic_message(payload)
}

/// The GPU to test on, or `None` (with the reason printed) when there is no
/// adapter. With `WGRAD_REQUIRE_GPU=1`, as CI sets it, a missing adapter
/// fails the test instead of skipping it.
pub fn gpu() -> Option<Device> {
    match Device::gpu() {
        Ok(d) => Some(d),
        Err(e) if std::env::var("WGRAD_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("WGRAD_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// Turns `fn name(dev: &Device)` into one test per device: `name::cpu` and
/// `name::gpu` (the latter skipped, with a message, when there is no GPU).
#[macro_export]
macro_rules! test_device {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&wgrad::Device::Cpu);
            }
            #[test]
            fn gpu() {
                if let Some(dev) = $crate::common::gpu() {
                    super::$name(&dev);
                }
            }
        }
    };
}
