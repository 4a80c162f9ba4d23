//! The image layers as a user meets them: batch normalisation's values and
//! running statistics worked out by hand, state dicts with PyTorch's names
//! that round-trip, residual blocks, and every misuse named in its error.

mod common;

use common::assert_close;
use wgrad::nn::{self, Module};
use wgrad::{Conv2dOptions, Device, Tensor, io, manual_seed};

/// Two channels of four values: channel 0 is 1, 2, 3, 4 (mean 2.5, biased
/// variance 1.25, unbiased 5/3); channel 1 is ten times channel 0.
fn bn_input(dev: &Device) -> Tensor {
    Tensor::new([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]], dev).unwrap()
}

fn batch_norm_by_hand(dev: &Device) {
    let bn = nn::BatchNorm1d::new(2, dev);
    let x = bn_input(dev);
    let eps = 1e-5f32;
    let expect = |mean: [f32; 2], var: [f32; 2]| -> Vec<f32> {
        let mut v = Vec::new();
        for row in [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]] {
            for c in 0..2 {
                v.push((row[c] - mean[c]) / (var[c] + eps).sqrt());
            }
        }
        v
    };
    // Training mode: the batch's own statistics, biased variance.
    let y = bn.forward(&x);
    assert_close(&y.to_vec().unwrap(), &expect([2.5, 25.0], [1.25, 125.0]), 1e-5, 1e-5, "train");
    // Three steps on the same batch: running = 0.9·running + 0.1·batch,
    // with the unbiased variance, starting from mean 0 and variance 1.
    bn.forward(&x);
    bn.forward(&x);
    let decay = 0.9f32.powi(3);
    let rm = [2.5 * (1.0 - decay), 25.0 * (1.0 - decay)];
    let rv = [5.0 / 3.0 + (1.0 - 5.0 / 3.0) * decay, 500.0 / 3.0 + (1.0 - 500.0 / 3.0) * decay];
    assert_close(&bn.running_mean().to_vec().unwrap(), &rm, 1e-5, 1e-5, "running_mean");
    assert_close(&bn.running_var().to_vec().unwrap(), &rv, 1e-4, 1e-5, "running_var");
    assert_eq!(bn.num_batches_tracked().item().unwrap(), 3.0);
    // Evaluation mode: the running statistics, and nothing updates.
    bn.eval();
    let y = bn.forward(&x);
    assert_close(&y.to_vec().unwrap(), &expect(rm, rv), 1e-5, 1e-5, "eval");
    assert_close(&bn.running_mean().to_vec().unwrap(), &rm, 1e-5, 1e-5, "running_mean after eval");
    assert_eq!(bn.num_batches_tracked().item().unwrap(), 3.0);
}
test_device!(batch_norm_by_hand);

fn batch_norm_2d_normalises_each_channel_over_batch_and_positions(dev: &Device) {
    manual_seed(3);
    let bn = nn::BatchNorm2d::new(3, dev);
    let x = (Tensor::randn([4, 3, 5, 6], dev) * 3.0 + 2.0).requires_grad();
    let y = bn.forward(&x);
    // Per channel: mean 0 and biased variance 1 (up to eps).
    let per_channel = y.permute(&[1, 0, 2, 3]).reshape([3, 120]);
    assert_close(&per_channel.mean_dim(1, false).to_vec().unwrap(), &[0.0; 3], 1e-5, 0.0, "means");
    assert_close(&per_channel.var_dim(1, false, 0).to_vec().unwrap(), &[1.0; 3], 1e-3, 0.0, "variances");
    // The gradients reach the input and the affine parameters.
    let grads = y.sqr().sum().backward();
    assert!(grads.get(&x).is_some());
    assert_eq!(bn.parameters().iter().filter(|p| grads.get(p).is_some()).count(), 2);
}
test_device!(batch_norm_2d_normalises_each_channel_over_batch_and_positions);

fn resnet(dev: &Device) -> nn::Sequential {
    let same = Conv2dOptions::default().padding(1);
    let block = nn::Sequential::new()
        .add(nn::Conv2d::with_options(4, 4, 3, same, dev).without_bias())
        .add(nn::BatchNorm2d::new(4, dev))
        .add(nn::ReLU)
        .add(nn::Conv2d::with_options(4, 4, 3, same, dev).without_bias())
        .add(nn::BatchNorm2d::new(4, dev));
    nn::Sequential::new()
        .add(nn::Conv2d::with_options(1, 4, 3, same, dev))
        .add(nn::Residual::new(block))
        .add(nn::ReLU)
        .add(nn::AdaptiveAvgPool2d::new(1))
        .add(nn::Flatten)
        .add(nn::Linear::new(4, 3, dev))
}

fn state_dicts_use_pytorchs_names_and_round_trip(dev: &Device) {
    manual_seed(1);
    let model = resnet(dev);
    let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    // What torch.nn.Sequential(Conv2d, Residual(body=Sequential(...)), ...)
    // calls the same tensors.
    let want = [
        "0.weight",
        "0.bias",
        "1.body.0.weight",
        "1.body.1.weight",
        "1.body.1.bias",
        "1.body.1.running_mean",
        "1.body.1.running_var",
        "1.body.1.num_batches_tracked",
        "1.body.3.weight",
        "1.body.4.weight",
        "1.body.4.bias",
        "1.body.4.running_mean",
        "1.body.4.running_var",
        "1.body.4.num_batches_tracked",
        "5.weight",
        "5.bias",
    ];
    assert_eq!(names, want);
    // Train a few batches so the running statistics move, then save.
    let x = Tensor::randn([6, 1, 7, 5], dev);
    for _ in 0..3 {
        model.forward(&x);
    }
    model.eval();
    let before = model.forward(&x).to_vec().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    io::save(&model, &path, io::Dtype::F32).unwrap();
    manual_seed(2);
    let other = resnet(dev);
    other.eval();
    assert_ne!(other.forward(&x).to_vec().unwrap(), before);
    io::load(&other, &path).unwrap();
    assert_eq!(other.forward(&x).to_vec().unwrap(), before, "the reloaded model must compute the same");
    let tracked = other.state_dict().into_iter().find(|(n, _)| n == "1.body.1.num_batches_tracked").unwrap().1;
    assert_eq!(tracked.item().unwrap(), 3.0);
}
test_device!(state_dicts_use_pytorchs_names_and_round_trip);

#[test]
fn a_saved_convnet_loaded_into_another_shape_names_the_tensor_and_both_shapes() {
    let dev = Device::Cpu;
    let model = nn::Sequential::new().add(nn::Conv2d::new(3, 8, 3, &dev));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.safetensors");
    io::save(&model, &path, io::Dtype::F32).unwrap();
    let wider = nn::Sequential::new().add(nn::Conv2d::new(3, 16, (3, 5), &dev));
    match io::load(&wider, &path) {
        Err(wgrad::Error::Mismatch(msg)) => {
            assert!(msg.contains("0.weight") && msg.contains("[8, 3, 3, 3]") && msg.contains("[16, 3, 3, 5]"), "{msg}")
        }
        other => panic!("expected a Mismatch error, got {other:?}"),
    }
}

fn residual_blocks_add_their_input(dev: &Device) {
    let block = nn::Residual::new(nn::ReLU);
    let x = Tensor::new([[-1.0, 2.0]], dev).unwrap();
    assert_eq!(block.forward(&x).to_vec().unwrap(), [-1.0, 4.0]);
    manual_seed(5);
    let body = nn::Conv2d::with_options(2, 4, 3, Conv2dOptions::default().stride(2).padding(1), dev);
    let shortcut = nn::Conv2d::with_options(2, 4, 1, Conv2dOptions::default().stride(2), dev);
    // The layers' tensors (clones share their storage), to compute the two
    // branches apart from the block.
    let conv = |layer: &nn::Conv2d| (layer.weight.clone(), layer.bias.clone(), layer.options);
    let (branches, skip) = (conv(&body), conv(&shortcut));
    let projected = nn::Residual::with_shortcut(body, shortcut);
    assert_eq!(projected.forward(&Tensor::ones([1, 2, 7, 7], dev)).dims(), &[1, 4, 4, 4]);
    assert_eq!(projected.named_parameters().len(), 4);
    // forward(x) = body(x) + shortcut(x), elementwise.
    let x = Tensor::from_vec(common::uniform(&[2, 2, 7, 7], -1.0, 1.0, 6), [2, 2, 7, 7], dev).unwrap();
    let want = &x.conv2d(&branches.0, branches.1.as_ref(), branches.2) + &x.conv2d(&skip.0, skip.1.as_ref(), skip.2);
    let got = projected.forward(&x);
    assert_eq!(got.dims(), &[2, 4, 4, 4]);
    assert_eq!(got.to_vec().unwrap(), want.to_vec().unwrap(), "projected residual: body(x) + shortcut(x)");
    // Both branches count: neither alone is the output.
    let body_only = x.conv2d(&branches.0, branches.1.as_ref(), branches.2).to_vec().unwrap();
    assert_ne!(got.to_vec().unwrap(), body_only);
}
test_device!(residual_blocks_add_their_input);

/// Runs `f`, which must panic with a message containing every one of `parts`.
fn panics_naming(parts: &[&str], f: impl FnOnce()) {
    let msg = common::panic_message_of(f);
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not mention {p:?}");
    }
}

#[test]
fn bad_shapes_and_options_panic_naming_the_op_and_the_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros([2, 4, 5, 5], &dev);
    let w = Tensor::zeros([6, 4, 3, 3], &dev);
    let o = Conv2dOptions::default();
    panics_naming(&["conv2d", "[2, 4, 5, 5]", "[6, 4, 7, 3]", "larger than the padded"], || {
        x.conv2d(&Tensor::zeros([6, 4, 7, 3], &dev), None, o);
    });
    panics_naming(&["conv2d", "stride 0×1", "positive"], || {
        x.conv2d(&w, None, o.stride((0, 1)));
    });
    panics_naming(&["conv2d", "divisible by 3 groups"], || {
        x.conv2d(&Tensor::zeros([6, 1, 3, 3], &dev), None, o.groups(3));
    });
    panics_naming(&["conv2d", "weight channels"], || {
        x.conv2d(&Tensor::zeros([6, 3, 3, 3], &dev), None, o);
    });
    panics_naming(&["conv2d", "[6, 36]", "weight must be"], || {
        x.conv2d(&Tensor::zeros([6, 36], &dev), None, o);
    });
    panics_naming(&["conv2d", "[2, 20]", "[N, C, H, W]"], || {
        Tensor::zeros([2, 20], &dev).conv2d(&w, None, o);
    });
    panics_naming(&["conv2d", "bias", "[6]"], || {
        x.conv2d(&w, Some(&Tensor::zeros([5], &dev)), o);
    });
    panics_naming(&["same", "stride 1"], || {
        x.conv2d(&w, None, o.padding(wgrad::Padding::Same).stride(2));
    });
    panics_naming(&["max_pool2d", "[2, 4, 5, 5]", "larger than the padded"], || {
        x.max_pool2d(7, 1, 0);
    });
    panics_naming(&["max_pool2d", "half the kernel"], || {
        x.max_pool2d(2, 2, 2);
    });
    panics_naming(&["avg_pool2d", "positive"], || {
        x.avg_pool2d(2, 0, 0, true);
    });
    panics_naming(&["Conv2d(4 -> 6", "[2, 3, 5, 5]"], || {
        nn::Conv2d::new(4, 6, 3, &dev).forward(&Tensor::zeros([2, 3, 5, 5], &dev));
    });
    panics_naming(&["BatchNorm2d(4)", "[2, 4, 5]"], || {
        nn::BatchNorm2d::new(4, &dev).forward(&Tensor::zeros([2, 4, 5], &dev));
    });
    panics_naming(&["batch_norm", "more than one value per channel"], || {
        nn::BatchNorm1d::new(4, &dev).forward(&Tensor::zeros([1, 4], &dev));
    });
    panics_naming(&["Residual", "[1, 4, 4, 4]", "[1, 2, 7, 7]"], || {
        nn::Residual::new(nn::Conv2d::with_options(2, 4, 3, Conv2dOptions::default().stride(2).padding(1), &dev))
            .forward(&Tensor::ones([1, 2, 7, 7], &dev));
    });
}

fn unbatched_images_and_empty_batches_work(dev: &Device) {
    let w = Tensor::ones([2, 3, 3, 3], dev).requires_grad();
    let y = Tensor::ones([3, 5, 5], dev).conv2d(&w, None, Conv2dOptions::default());
    assert_eq!(y.dims(), &[2, 3, 3]);
    assert_eq!(y.to_vec().unwrap()[0], 27.0);
    let empty = Tensor::zeros([0, 3, 5, 5], dev);
    let y = empty.conv2d(&w, None, Conv2dOptions::default());
    assert_eq!(y.dims(), &[0, 2, 3, 3]);
    let g = y.sum().backward();
    assert_eq!(g.get(&w).unwrap().to_vec().unwrap(), vec![0.0; 54]);
    assert_eq!(empty.max_pool2d(2, 2, 0).dims(), &[0, 3, 2, 2]);
}
test_device!(unbatched_images_and_empty_batches_work);

/// A convolution's bias is part of its own node: its gradient is the output
/// gradient summed per channel whichever of the other inputs need one (the
/// weight's and the bias's come from one pass, or the bias's alone), and
/// the weight's gradient is the same bits with a bias or without.
fn a_convolutions_bias_gradient_is_its_output_gradient_summed_per_channel(dev: &Device) {
    let opts = Conv2dOptions::default().stride(2).padding(1);
    let (n, c_out) = (3, 4);
    let x = Tensor::from_vec(common::uniform(&[n, 2, 9, 8], -1.0, 1.0, 21), [n, 2, 9, 8], dev).unwrap();
    let w = Tensor::from_vec(common::uniform(&[c_out, 2, 3, 3], -1.0, 1.0, 22), [c_out, 2, 3, 3], dev).unwrap();
    let b = Tensor::from_vec(vec![0.5, -1.0, 2.0, 0.0], [c_out], dev).unwrap();
    let out = [n, c_out, 5, 4];
    let seed = Tensor::from_vec(common::uniform(&out, -1.0, 1.0, 23), out, dev).unwrap();
    let g = seed.to_vec().unwrap();
    let want: Vec<f32> =
        (0..c_out).map(|c| (0..n).map(|i| g[(i * c_out + c) * 20..][..20].iter().sum::<f32>()).sum()).collect();
    let no_bias = {
        let w = w.clone().requires_grad();
        x.conv2d(&w, None, opts).backward_with(seed.clone()).get(&w).unwrap().to_vec().unwrap()
    };
    for (x_grad, w_grad) in [(false, true), (true, false), (false, false)] {
        let maybe = |t: &Tensor, on: bool| if on { t.detach().requires_grad() } else { t.detach() };
        let (x, w, b) = (maybe(&x, x_grad), maybe(&w, w_grad), b.clone().requires_grad());
        let grads = x.conv2d(&w, Some(&b), opts).backward_with(seed.clone());
        let what = format!("input {x_grad}, weight {w_grad}");
        assert_close(&grads.get(&b).unwrap().to_vec().unwrap(), &want, 1e-5, 1e-5, &what);
        if w_grad {
            assert_eq!(grads.get(&w).unwrap().to_vec().unwrap(), no_bias, "{what}: the weight's gradient");
        }
    }
}
test_device!(a_convolutions_bias_gradient_is_its_output_gradient_summed_per_channel);
