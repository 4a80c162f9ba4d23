//! Errors only the data reveals — an index or a class label out of range —
//! follow one contract on every device: the op's result, and everything
//! computed from it, is poisoned, and reading any of it returns
//! `Error::IndexOutOfRange` naming the op, the index and the bound. Results
//! that do not depend on the bad data read back fine. (On the GPU a kernel
//! records the bad index in an error buffer that the read back checks.)

mod common;

use wgrad::optim::{Optimizer, Sgd};
use wgrad::{Device, Error, Tensor};

fn out_of_range(e: Error, op: &str, index: f32, bound: usize) {
    match &e {
        Error::IndexOutOfRange { op: o, index: i, bound: b } => {
            assert_eq!((*o, *b), (op, bound), "{e}");
            assert!(*i == index || (i.is_nan() && index.is_nan()), "{e}");
        }
        other => panic!("expected IndexOutOfRange from {op}, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.starts_with(op) && msg.contains(&format!("size {bound}")), "{msg}");
}

fn vec(values: &[f32], dev: &Device) -> Tensor {
    Tensor::from_vec(values.to_vec(), [values.len()], dev).unwrap()
}

fn index_select_and_gather_poison_their_results(dev: &Device) {
    let x = Tensor::from_vec((0..12).map(|v| v as f32).collect(), [3, 4], dev).unwrap();
    for (bad, shown) in [(5.0, 5.0), (-1.0, -1.0), (1.5, 1.5), (f32::NAN, f32::NAN), (f32::INFINITY, f32::INFINITY)] {
        let idx = vec(&[0.0, bad, 2.0], dev);
        let y = x.index_select(1, &idx);
        out_of_range(y.to_vec().unwrap_err(), "index_select", shown, 4);
        // What is computed from it is poisoned too, however far along.
        let z = (&y * 2.0).exp().sum();
        out_of_range(z.item().unwrap_err(), "index_select", shown, 4);
    }
    let index = Tensor::from_vec(vec![0.0, 3.0, 1.0, 9.0, 2.0, 0.0], [3, 2], dev).unwrap();
    out_of_range(x.gather(1, &index).to_vec().unwrap_err(), "gather", 9.0, 4);
    // Good indices next to the bad call are unaffected.
    let good = x.index_select(0, &vec(&[2.0, 0.0], dev));
    assert_eq!(good.to_vec().unwrap(), [8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
    assert_eq!(x.sum().item().unwrap(), 66.0);
}
test_device!(index_select_and_gather_poison_their_results);

fn cross_entropy_labels_out_of_range_poison_loss_and_gradient(dev: &Device) {
    let logits = Tensor::zeros([2, 3], dev).requires_grad();
    for bad in [3.0, -1.0, 0.5, f32::NAN] {
        let labels = vec(&[1.0, bad], dev);
        let loss = logits.cross_entropy(&labels);
        out_of_range(loss.item().unwrap_err(), "cross_entropy", bad, 3);
        let grads = loss.backward();
        out_of_range(grads.get(&logits).unwrap().to_vec().unwrap_err(), "cross_entropy", bad, 3);
    }
    let fine = logits.cross_entropy(&vec(&[1.0, 2.0], dev));
    assert!((fine.item().unwrap() - 3f32.ln()).abs() < 1e-6);
}
test_device!(cross_entropy_labels_out_of_range_poison_loss_and_gradient);

fn a_bad_label_poisons_the_parameters_it_would_update(dev: &Device) {
    let w = Tensor::ones([4, 3], dev).requires_grad();
    let other = Tensor::ones([3], dev).requires_grad();
    let x = Tensor::ones([2, 4], dev);
    let loss = x.matmul(&w).cross_entropy(&vec(&[0.0, 7.0], dev)) + other.sum();
    let mut opt = Sgd::new(vec![w.clone(), other.clone()], 0.1);
    opt.step(&loss.backward());
    out_of_range(w.to_vec().unwrap_err(), "cross_entropy", 7.0, 3);
    // A parameter whose gradient never saw the bad label is updated.
    assert_eq!(other.to_vec().unwrap(), [0.9; 3]);
}
test_device!(a_bad_label_poisons_the_parameters_it_would_update);

fn the_backward_of_a_bad_gather_is_poisoned(dev: &Device) {
    let x = Tensor::ones([3, 2], dev).requires_grad();
    let y = x.index_select(0, &vec(&[0.0, 3.0], dev));
    let grads = y.sum().backward();
    out_of_range(grads.get(&x).unwrap().to_vec().unwrap_err(), "index_select", 3.0, 3);
}
test_device!(the_backward_of_a_bad_gather_is_poisoned);

#[test]
fn both_devices_report_the_same_error() {
    let Some(gpu) = common::gpu() else { return };
    let run = |dev: &Device| {
        let x = Tensor::ones([5, 2], dev);
        x.index_select(0, &vec(&[4.0, 5.0, 1.0], dev)).sum().item().unwrap_err().to_string()
    };
    assert_eq!(run(&Device::Cpu), run(&gpu));
}

#[test]
fn many_checked_ops_without_a_read_back_recycle_the_gpus_error_slots() {
    // More checks than the error buffer has slots (1024), with the bad one
    // early: it must still be reported, and the later good ones read fine.
    let Some(dev) = common::gpu() else { return };
    let x = Tensor::ones([4, 2], &dev);
    let bad = x.index_select(0, &vec(&[9.0], &dev));
    let good: Vec<Tensor> = (0..1500).map(|i| x.index_select(0, &vec(&[(i % 4) as f32], &dev))).collect();
    out_of_range(bad.to_vec().unwrap_err(), "index_select", 9.0, 4);
    for g in good.iter().step_by(97) {
        assert_eq!(g.to_vec().unwrap(), [1.0, 1.0]);
    }
}

fn the_first_cause_wins_when_errors_meet(dev: &Device) {
    // A bad index, then an op whose output the device cannot allocate: the
    // index error came first, on both devices, although the GPU only learns
    // of it at the read back.
    let x = Tensor::ones([3, 1], dev);
    let picked = x.index_select(0, &vec(&[0.0, 7.0], dev));
    let huge = picked.broadcast_to([2, 1 << 40]);
    out_of_range(huge.sum().item().unwrap_err(), "index_select", 7.0, 3);
    // Two poisoned inputs: the earlier fault wins, whichever side it is on.
    let too_big = Tensor::zeros([1 << 40], dev).sum();
    let later = x.index_select(0, &vec(&[5.0], dev)).sum();
    out_of_range((&too_big + &picked.sum()).item().unwrap_err(), "index_select", 7.0, 3);
    out_of_range((&picked.sum() + &too_big).item().unwrap_err(), "index_select", 7.0, 3);
    for r in [&too_big + &later, &later + &too_big] {
        let err = r.item().unwrap_err();
        assert!(matches!(err, Error::OutOfMemory(_) | Error::TooLarge { .. }), "{err:?}");
    }
}
test_device!(the_first_cause_wins_when_errors_meet);
