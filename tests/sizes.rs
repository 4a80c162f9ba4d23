//! Sizes never wrap and never abort: shapes whose element or byte count
//! overflows are refused (an `Err` from the fallible constructors, a panic
//! naming the op from the infallible ones); tensors too big for the device
//! are poisoned with `OutOfMemory`/`TooLarge`; zero-sized tensors go through
//! every copy; and the GPU handles views of any rank.

mod common;

use common::panic_message_of;
use wgrad::nn::{self, Module};
use wgrad::{Device, Error, Tensor};

/// 3 · X wraps to exactly 1 in 64-bit arithmetic.
const WRAPS_TO_ONE: usize = 0xAAAA_AAAA_AAAA_AAAB;

fn overflowing_shapes_are_refused(dev: &Device) {
    // The shape behind the reported segfault: accepted before, as 3·X
    // wrapped to the one value given.
    let err = Tensor::from_vec(vec![1.0], [3, WRAPS_TO_ONE], dev).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "from_vec", .. }), "{err:?}");
    assert!(err.to_string().contains("more elements than memory can hold"), "{err}");
    assert!(Tensor::from_slice(&[1.0], [1 << 32, 1 << 32], dev).is_err());
    assert!(matches!(Tensor::try_full([usize::MAX, 2], 0.0, dev), Err(Error::Shape { .. })));
    for (op, f) in [
        ("zeros", Box::new(|| drop(Tensor::zeros([3, WRAPS_TO_ONE], dev))) as Box<dyn Fn()>),
        ("ones", Box::new(|| drop(Tensor::ones([1 << 40, 1 << 40], dev)))),
        ("randn", Box::new(|| drop(Tensor::randn([1 << 40, 1 << 40], dev)))),
        ("arange", Box::new(|| drop(Tensor::arange(0.0, f32::INFINITY, dev)))),
    ] {
        let msg = panic_message_of(f);
        assert!(msg.starts_with(&format!("{op}: ")) && msg.contains("more elements than memory"), "{msg}");
    }
    // Empty shapes are fine whatever their other dimensions.
    let e = Tensor::zeros([usize::MAX, 0], dev);
    assert_eq!(e.elem_count(), 0);
    assert_eq!(e.to_vec().unwrap(), Vec::<f32>::new());
}
test_device!(overflowing_shapes_are_refused);

fn ops_whose_result_would_overflow_panic_naming_the_op(dev: &Device) {
    // Two empty operands whose product would be 2^80 elements.
    let a = Tensor::zeros([1 << 40, 0], dev);
    let b = Tensor::zeros([0, 1 << 40], dev);
    let msg = panic_message_of(|| drop(a.matmul(&b)));
    assert!(msg.starts_with("matmul: shape [1099511627776, 1099511627776]"), "{msg}");
    // Two tensors too large for the device (so poisoned, not aborted)
    // whose broadcast would not fit in a usize.
    let (col, row) = (Tensor::zeros([1 << 40, 1], dev), Tensor::zeros([1, 1 << 40], dev));
    let msg = panic_message_of(|| drop(&col + &row));
    assert!(msg.starts_with("add: shape [1099511627776, 1099511627776]"), "{msg}");
    let msg = panic_message_of(|| drop(Tensor::ones([2], dev).broadcast_to([1 << 40, 1 << 40, 2])));
    assert!(msg.starts_with("broadcast_to: "), "{msg}");
    let msg = panic_message_of(|| drop(Tensor::ones([6], dev).reshape([3, WRAPS_TO_ONE])));
    assert!(msg.starts_with("reshape: ") && msg.contains("more than memory can hold"), "{msg}");
}
test_device!(ops_whose_result_would_overflow_panic_naming_the_op);

fn tensors_too_big_for_the_device_are_poisoned_not_aborted(dev: &Device) {
    // 4 TiB: valid as a shape, refused by the allocator (CPU) or the binding
    // limit (GPU). Before, `zeros([1 << 40])` aborted the process on the CPU.
    let huge = [1usize << 40];
    let too_big = |e: &Error| matches!(e, Error::OutOfMemory(_) | Error::TooLarge { .. });
    for t in [Tensor::zeros(huge, dev), Tensor::randn(huge, dev), Tensor::full(huge, 2.0, dev)] {
        let err = t.sum().item().unwrap_err();
        assert!(too_big(&err), "{err:?}");
    }
    let err = Tensor::try_full(huge, 0.0, dev).unwrap_err();
    assert!(too_big(&err), "{err:?}");
    // An op whose output the device refuses: [2^20, 1] x [1, 2^20].
    let a = Tensor::ones([1 << 20, 1], dev);
    let b = Tensor::ones([1, 1 << 20], dev);
    assert!(too_big(&a.matmul(&b).to_vec().unwrap_err()));
    // The device is fine afterwards.
    assert_eq!(Tensor::ones([3], dev).sum().item().unwrap(), 3.0);
}
test_device!(tensors_too_big_for_the_device_are_poisoned_not_aborted);

fn zero_sized_tensors_go_through_every_copy(dev: &Device) {
    let a = Tensor::from_vec((0..6).map(|v| v as f32).collect(), [2, 3], dev).unwrap();
    let empty = Tensor::zeros([2, 0], dev);
    // cat with an empty piece (panicked: "chunk size must be non-zero").
    let c = Tensor::cat(&[&a, &empty, &a], 1);
    assert_eq!(c.dims(), &[2, 6]);
    assert_eq!(c.to_vec().unwrap(), [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 3.0, 4.0, 5.0]);
    assert_eq!(Tensor::cat(&[&empty, &empty], 0).dims(), &[4, 0]);
    // Assigning an empty tensor.
    let e2 = Tensor::zeros([0, 5], dev);
    e2.assign(&Tensor::ones([0, 5], dev));
    assert_eq!(e2.to_vec().unwrap(), Vec::<f32>::new());
    // Narrowing to nothing, permuting and broadcasting empties, and their
    // gradients.
    let v = a.clone().requires_grad();
    let n = v.narrow(1, 1, 0);
    assert_eq!(n.dims(), &[2, 0]);
    let g = (n.permute(&[1, 0]).sum() + v.sum()).backward();
    assert_eq!(g.get(&v).unwrap().to_vec().unwrap(), [1.0; 6]);
    assert_eq!(Tensor::zeros([0, 1], dev).broadcast_to([0, 4]).dims(), &[0, 4]);
    assert_eq!(Tensor::zeros([3, 0], dev).matmul(&Tensor::zeros([0, 2], dev)).to_vec().unwrap(), [0.0; 6]);
    // A batched product over k = 0 and its backward (divided by k before).
    let (a, b) = (Tensor::zeros([2, 1, 0], dev).requires_grad(), Tensor::zeros([0], dev).requires_grad());
    let y = a.matmul(&b);
    assert_eq!(y.to_vec().unwrap(), [0.0; 2]);
    let g = y.sum().backward();
    assert_eq!((g.get(&a).unwrap().dims(), g.get(&b).unwrap().dims()), (&[2, 1, 0][..], &[0][..]));
    assert_eq!(Tensor::zeros([4, 0], dev).sum_dim(1, false).to_vec().unwrap(), [0.0; 4]);
    assert_eq!(Tensor::zeros([0, 4], dev).softmax(1).elem_count(), 0);
    // The mean loss of an empty batch is NaN (0 / 0, as PyTorch); its
    // gradient is empty.
    let logits = Tensor::zeros([0, 10], dev).requires_grad();
    let loss = logits.cross_entropy(&Tensor::zeros([0], dev));
    assert!(loss.to_vec().unwrap()[0].is_nan());
    assert_eq!(loss.backward().get(&logits).unwrap().dims(), &[0, 10]);
}
test_device!(zero_sized_tensors_go_through_every_copy);

fn a_model_with_a_zero_width_layer_saves_and_loads(dev: &Device) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("narrow.safetensors");
    let model = nn::Sequential::new().add(nn::Linear::new(3, 0, dev)).add(nn::Linear::new(0, 2, dev));
    wgrad::io::save(&model, &path, wgrad::io::Dtype::F32).unwrap();
    wgrad::io::load(&model, &path).unwrap();
    let y = model.forward(&Tensor::ones([4, 3], dev));
    assert_eq!(y.dims(), &[4, 2]);
    assert_eq!(y.to_vec().unwrap(), [0.0; 8]);
}
test_device!(a_model_with_a_zero_width_layer_saves_and_loads);

/// A tensor of `dims` holding 0, 1, 2, ...
fn counting(dims: &[usize], dev: &Device) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|v| v as f32).collect(), dims, dev).unwrap()
}

#[test]
fn the_gpu_takes_views_of_any_rank() {
    let Some(gpu) = common::gpu() else { return };
    let run = |dev: &Device| {
        // A rank-9 permute whose axes cannot coalesce (panicked on the GPU:
        // "at most 8 non-contiguous axes").
        let dims = [2, 3, 2, 3, 2, 3, 2, 2, 3];
        let x = counting(&dims, dev).requires_grad();
        let order = [8, 6, 4, 2, 0, 1, 3, 5, 7];
        let p = x.permute(&order);
        // Rank-10 operands broadcast against each other (panicked:
        // "two leaves over one shape always combine").
        let a = counting(&[2, 1, 3, 1, 2, 1, 3, 1, 2, 1], dev);
        let b = counting(&[1, 2, 1, 3, 1, 2, 1, 2, 1, 3], dev);
        let s = (&a * 0.01 + &b * 0.02).exp().sum();
        let weights = counting(p.dims(), dev);
        let g = (&p * &weights).sum().backward().remove(&x).unwrap();
        (p.to_vec().unwrap(), (&a - &b).to_vec().unwrap(), s.item().unwrap(), g.to_vec().unwrap())
    };
    let cpu = run(&Device::Cpu);
    let got = run(&gpu);
    assert_eq!(got.0, cpu.0, "rank-9 permute");
    assert_eq!(got.1, cpu.1, "rank-10 broadcast");
    assert!((got.2 - cpu.2).abs() <= 1e-4 * cpu.2.abs(), "{} vs {}", got.2, cpu.2);
    assert_eq!(got.3, cpu.3, "the permute's gradient");
}

#[test]
fn empty_cache_with_work_recorded_and_not_run_keeps_the_device_working() {
    if common::gpu().is_none() {
        return;
    }
    // A device of its own: the other tests of this binary run in parallel
    // on the shared one, and a buffer they give back to its pool between
    // `empty_cache` and the check below would fail it (seen once on GL).
    let gpu = &wgrad::GpuDevice::with_options(wgrad::GpuOptions::from_env()).unwrap();
    let dev = Device::Gpu(gpu.clone());
    let a = counting(&[64, 64], &dev);
    let b = Tensor::ones([64, 64], &dev);
    // Recorded, not submitted: the products read a and b, which go back to
    // the pool when dropped here, and the pool is then emptied.
    let y = a.matmul(&b);
    let z = (&y * 2.0).sum_dim(1, false);
    drop((a, b));
    gpu.empty_cache();
    assert_eq!(gpu.memory_stats().pooled_bytes, 0);
    let want: Vec<f32> = (0..64).map(|r| 2.0 * 64.0 * (0..64).map(|c| (r * 64 + c) as f32).sum::<f32>()).collect();
    assert_eq!(z.to_vec().unwrap(), want);
    // And it keeps working, the pool refilling as before.
    let rows: Vec<f32> = (&y + 1.0).sum_dim(1, false).to_vec().unwrap();
    assert_eq!(rows, want.iter().map(|w| w / 2.0 + 64.0).collect::<Vec<_>>());
}
