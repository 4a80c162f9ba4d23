//! In-place changes cannot corrupt gradients silently: every storage keeps
//! a version counter that in-place writes (`assign`, optimizer steps,
//! loading weights) bump, and a backward pass that needs a value modified
//! since its forward pass panics naming the op and the tensor — PyTorch's
//! "a variable needed for gradient computation has been modified by an
//! inplace operation". Modifications a backward does not read are fine.

mod common;

use common::panic_message_of;
use wgrad::optim::{Optimizer, Sgd};
use wgrad::{Device, Tensor};

fn assigning_a_saved_input_fails_the_backward(dev: &Device) {
    let w = Tensor::from_vec(vec![1.0, 2.0, 3.0], [3], dev).unwrap().requires_grad();
    let loss = (&w * &w).sum();
    w.assign(&Tensor::zeros([3], dev));
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.starts_with("backward of `mul`"), "{msg}");
    assert!(msg.contains("shape [3], a variable") && msg.contains("modified in place"), "{msg}");
    assert!(msg.contains("version 1") && msg.contains("version 0"), "{msg}");
}
test_device!(assigning_a_saved_input_fails_the_backward);

fn an_optimizer_step_between_forward_and_backward_fails(dev: &Device) {
    let w = Tensor::ones([2, 2], dev).requires_grad();
    let x = Tensor::ones([3, 2], dev);
    let mut opt = Sgd::new(vec![w.clone()], 0.1);
    // Two losses from one forward; stepping on the first changes w, which
    // the second's backward (powf reads its input) needs.
    let first = x.matmul(&w).relu().sum();
    let second = w.powf(2.0).sum();
    opt.step(&first.backward());
    let msg = panic_message_of(|| drop(second.backward()));
    assert!(msg.starts_with("backward of `powf`: input 0"), "{msg}");
}
test_device!(an_optimizer_step_between_forward_and_backward_fails);

fn a_modified_output_fails_the_backward_that_reads_it(dev: &Device) {
    let x = Tensor::from_vec(vec![0.5, -1.0], [2], dev).unwrap().requires_grad();
    let s = x.sigmoid();
    let loss = s.sum();
    s.assign(&Tensor::zeros([2], dev));
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.starts_with("backward of `sigmoid`: its output"), "{msg}");
}
test_device!(a_modified_output_fails_the_backward_that_reads_it);

fn a_change_through_a_view_is_seen(dev: &Device) {
    let w = Tensor::ones([2, 3], dev).requires_grad();
    let loss = w.log().sum();
    // A reshaped, detached handle shares the storage and its version.
    w.detach().reshape([6]).assign(&Tensor::zeros([6], dev));
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.starts_with("backward of `log`: input 0"), "{msg}");
}
test_device!(a_change_through_a_view_is_seen);

fn changes_the_backward_does_not_read_are_allowed(dev: &Device) {
    // As in PyTorch: the gradient of x·w with respect to w reads x only,
    // and exp saves its output, not its input.
    let w = Tensor::ones([2, 1], dev).requires_grad();
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2], dev).unwrap();
    let loss = x.matmul(&w).sum() + w.exp().sum();
    w.assign(&Tensor::full([2, 1], 5.0, dev));
    let g = loss.backward().remove(&w).unwrap().to_vec().unwrap();
    let e = 1f32.exp();
    common::assert_close(&g, &[4.0 + e, 6.0 + e], 1e-5, 1e-5, "d/dw");
    // And the usual loop — forward, backward, step, repeat — never trips it.
    let mut opt = Sgd::new(vec![w.clone()], 0.01);
    for _ in 0..3 {
        let loss = x.matmul(&w).sqr().sum();
        opt.step(&loss.backward());
    }
}
test_device!(changes_the_backward_does_not_read_are_allowed);

/// What a backward reads besides the differentiated inputs — a `where`'s
/// condition, a gather's index, cross-entropy's labels — is checked too:
/// modified in place after the forward pass, the backward refuses rather
/// than computing with the new values.
fn a_modified_condition_index_or_label_fails_the_backward(dev: &Device) {
    let x = Tensor::from_vec(vec![1.0, -2.0, 3.0], [3], dev).unwrap().requires_grad();
    let mask = Tensor::from_vec(vec![1.0, 0.0, 1.0], [3], dev).unwrap();
    let loss = mask.where_cond(&x, &x.neg()).sum();
    mask.assign(&Tensor::zeros([3], dev));
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.starts_with("backward of `where_cond`: input 2"), "{msg}");

    let index = Tensor::from_vec(vec![2.0, 0.0], [2], dev).unwrap();
    let loss = x.index_select(0, &index).sum();
    index.assign(&Tensor::zeros([2], dev));
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.starts_with("backward of `index_select`: input 1"), "{msg}");

    let logits = Tensor::from_vec(vec![0.5, -1.0, 2.0, 0.0], [2, 2], dev).unwrap().requires_grad();
    let labels = Tensor::from_vec(vec![1.0, 0.0], [2], dev).unwrap();
    let loss = logits.cross_entropy(&labels);
    labels.assign(&Tensor::ones([2], dev));
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.starts_with("backward of `cross_entropy`: input 1"), "{msg}");
}
test_device!(a_modified_condition_index_or_label_fails_the_backward);

/// `assign_narrow` writes a region of a tensor in place (PyTorch's
/// `x.narrow(..).copy_(..)`), bumping its version like `assign`; `narrow`
/// itself is a copy, so assigning to it leaves the tensor as it is.
fn assign_narrow_writes_a_region_in_place(dev: &Device) {
    let w = Tensor::from_vec((0..12).map(|v| v as f32).collect(), [3, 4], dev).unwrap().requires_grad();
    let loss = (&w * &w).sum();
    w.narrow(1, 1, 2).assign(&Tensor::zeros([3, 2], dev));
    assert_eq!(w.to_vec().unwrap()[..4], [0.0, 1.0, 2.0, 3.0], "narrow is a copy");
    w.assign_narrow(1, 1, &Tensor::from_vec(vec![-1.0; 6], [3, 2], dev).unwrap());
    let want: Vec<f32> = (0..12).map(|v| if (1..3).contains(&(v % 4)) { -1.0 } else { v as f32 }).collect();
    assert_eq!(w.to_vec().unwrap(), want);
    w.assign_narrow(0, 2, &Tensor::ones([1, 4], dev));
    assert_eq!(w.to_vec().unwrap()[8..], [1.0; 4]);
    let msg = panic_message_of(|| drop(loss.backward()));
    assert!(msg.contains("modified in place"), "{msg}");
}
test_device!(assign_narrow_writes_a_region_in_place);
