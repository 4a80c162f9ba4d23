//! Every public op family panics on misuse with the op's name and the
//! shapes involved, the way indexing out of bounds does. (Errors only the
//! data reveals, such as an index out of range, are not panics: see
//! `tests/data_errors.rs`.)

mod common;

use common::panic_message_of;
use wgrad::nn::{self, Module};
use wgrad::{Device, Tensor};

fn t(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, &Device::Cpu)
}

/// Asserts the message names the op and contains every fragment.
fn check(f: impl FnOnce(), op: &str, fragments: &[&str]) {
    let msg = panic_message_of(f);
    assert!(msg.starts_with(&format!("{op}:")), "message does not start with {op:?}: {msg}");
    for frag in fragments {
        assert!(msg.contains(frag), "{op}: {frag:?} missing from: {msg}");
    }
}

#[test]
fn elementwise() {
    check(|| drop(&t(&[2, 3]) + &t(&[4])), "add", &["[2, 3]", "[4]", "broadcast"]);
    check(|| drop(&t(&[2, 3]) * &t(&[3, 2])), "mul", &["[2, 3]", "[3, 2]"]);
    check(|| drop(t(&[5]).maximum(&t(&[2]))), "maximum", &["[5]", "[2]"]);
    check(|| drop(t(&[2]).clamp(1.0, 0.0)), "clamp", &["1", "0"]);
}

#[test]
fn matmul_and_linear() {
    check(|| drop(t(&[2, 3]).matmul(&t(&[4, 5]))), "matmul", &["[2, 3]", "[4, 5]", "inner dimensions 3 and 4"]);
    check(|| drop(t(&[2, 2, 3]).matmul(&t(&[3, 3, 1]))), "matmul", &["[2, 2, 3]", "[3, 3, 1]", "batch"]);
    check(|| drop(t(&[]).matmul(&t(&[3]))), "matmul", &["[]", "[3]"]);
    let layer = nn::Linear::new(4, 2, &Device::Cpu);
    check(|| drop(layer.forward(&t(&[8, 5]))), "Linear(4 -> 2)", &["[8, 5]", "5 features", "takes 4"]);
}

#[test]
fn reductions_and_softmax() {
    check(|| drop(t(&[2, 3]).sum_dim(2, false)), "sum_dim", &["axis 2", "[2, 3]"]);
    check(|| drop(t(&[2, 3]).mean_dim(-3, true)), "mean_dim", &["axis -3", "[2, 3]"]);
    check(|| drop(t(&[2, 0]).max_dim(1, false)), "max_dim", &["[2, 0]", "empty"]);
    check(|| drop(t(&[4]).argmax(1, false)), "argmax", &["axis 1", "[4]"]);
    check(|| drop(t(&[2, 3]).softmax(5)), "softmax", &["axis 5", "[2, 3]"]);
    check(|| drop(t(&[2, 3]).log_softmax(-4)), "log_softmax", &["axis -4", "[2, 3]"]);
    check(|| drop(t(&[2, 3]).item()), "item", &["[2, 3]", "6 elements"]);
}

#[test]
fn shape_ops() {
    check(|| drop(t(&[2, 3]).reshape([4])), "reshape", &["[2, 3]", "[4]"]);
    check(|| drop(t(&[2, 3]).broadcast_to([3, 3])), "broadcast_to", &["[2, 3]", "[3, 3]"]);
    check(|| drop(t(&[2, 3]).narrow(1, 2, 2)), "narrow", &["2..4", "[2, 3]"]);
    check(|| drop(t(&[2, 3]).permute(&[0, 0])), "permute", &["[0, 0]", "[2, 3]"]);
    check(|| drop(t(&[2, 3]).squeeze(0)), "squeeze", &["[2, 3]"]);
    check(|| drop(t(&[2, 3]).transpose(0, 2)), "transpose", &["axis 2", "[2, 3]"]);
    check(|| drop(Tensor::cat(&[&t(&[2, 3]), &t(&[2, 4])], 0)), "cat", &["[2, 4]", "[2, 3]"]);
    check(|| drop(t(&[2, 3]).index_select(0, &t(&[2, 1]))), "index_select", &["[2, 1]"]);
    check(|| drop(t(&[2, 3]).gather(1, &t(&[3, 3]))), "gather", &["[3, 3]", "[2, 3]"]);
    check(|| t(&[2]).assign(&t(&[3])), "assign", &["[3]", "[2]"]);
}

#[test]
fn losses() {
    check(|| drop(t(&[2, 3]).mse_loss(&t(&[3, 2]))), "mse_loss", &["[2, 3]", "[3, 2]"]);
    check(|| drop(t(&[4]).binary_cross_entropy(&t(&[2]))), "binary_cross_entropy", &["[4]", "[2]"]);
    check(|| drop(t(&[4, 10]).cross_entropy(&t(&[3]))), "cross_entropy", &["[4, 10]", "[3]"]);
}

#[test]
fn devices_must_match() {
    let Some(gpu) = common::gpu() else { return };
    let g = Tensor::zeros([2], &gpu);
    check(|| drop(&t(&[2]) + &g), "add", &["different devices", "cpu", "gpu"]);
    check(|| drop(t(&[2, 2]).matmul(&Tensor::zeros([2, 2], &gpu))), "matmul", &["different devices"]);
}
