//! Saving and loading models: round trips in every dtype, PyTorch's
//! state_dict layout, strict shape checks, malformed files, and saves that
//! fail without harming the file already there.

mod common;

use wgrad::nn::{self, Module};
use wgrad::{Device, Error, Tensor, io};

fn tiny(dev: &Device) -> nn::Sequential {
    nn::Sequential::new()
        .add(nn::Flatten)
        .add(nn::Linear::new(4, 3, dev))
        .add(nn::ReLU)
        .add(nn::Dropout::new(0.2))
        .add(nn::Linear::new(3, 2, dev))
}

fn outputs(model: &mut nn::Sequential) -> Vec<f32> {
    model.set_training(false);
    let x = Tensor::from_vec(common::uniform(&[5, 4], -1.0, 1.0, 3), [5, 4], &Device::Cpu).unwrap();
    model.forward(&x.to_device(&model.parameters()[0].device().clone()).unwrap()).to_vec().unwrap()
}

#[test]
fn round_trip_in_each_dtype() {
    let dir = tempfile::tempdir().unwrap();
    wgrad::manual_seed(1);
    let mut saved = tiny(&Device::Cpu);
    let want = outputs(&mut saved);
    for (dtype, tol) in [(io::Dtype::F32, 0.0), (io::Dtype::F16, 2e-3), (io::Dtype::BF16, 2e-2)] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        io::save(&saved, &path, dtype).unwrap();
        wgrad::manual_seed(2);
        let mut loaded = tiny(&Device::Cpu);
        io::load(&loaded, &path).unwrap();
        common::assert_close(&outputs(&mut loaded), &want, tol, tol, &format!("{dtype:?}"));
    }
}

#[test]
fn loads_a_pytorch_state_dict() {
    // tests/fixtures/make_torch_fixture.py wrote this file and the expected output.
    let model = tiny(&Device::Cpu);
    io::load(&model, "tests/fixtures/torch_sequential.safetensors").unwrap();
    model.set_training(false);
    let x = Tensor::from_vec(vec![1.0, -2.0, 0.5, 3.0], [1, 4], &Device::Cpu).unwrap();
    common::assert_close(&model.forward(&x).to_vec().unwrap(), &[-0.14, 0.78], 1e-6, 0.0, "torch fixture");
}

#[test]
fn saved_files_use_state_dict_names_and_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    io::save(&tiny(&Device::Cpu), &path, io::Dtype::F32).unwrap();
    let names: Vec<(String, Vec<usize>)> = io::read(&path).unwrap().into_iter().map(|(n, t)| (n, t.shape)).collect();
    let want = [("1.bias", vec![3]), ("1.weight", vec![3, 4]), ("4.bias", vec![2]), ("4.weight", vec![2, 3])];
    assert_eq!(names, want.map(|(n, s)| (n.to_string(), s)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}

#[test]
fn loading_into_the_wrong_model_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    io::save(&tiny(&Device::Cpu), &path, io::Dtype::F32).unwrap();
    let wider = nn::Sequential::new().add(nn::Flatten).add(nn::Linear::new(4, 5, &Device::Cpu));
    let before = wider.parameters()[0].to_vec().unwrap();
    let err = io::load(&wider, &path).unwrap_err();
    assert!(matches!(err, Error::Mismatch(_)));
    let msg = err.to_string();
    assert!(msg.contains("\"1.weight\"") && msg.contains("[3, 4]") && msg.contains("[5, 4]"), "{msg}");
    assert_eq!(wider.parameters()[0].to_vec().unwrap(), before, "a failed load changes nothing");
    let missing = nn::Sequential::new().add(nn::Linear::new(4, 3, &Device::Cpu));
    assert!(io::load(&missing, &path).unwrap_err().to_string().contains("no tensor named \"0.weight\""));
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    io::save(&tiny(&Device::Cpu), &good, io::Dtype::F32).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", bytes[..bytes.len() - 3].to_vec()),
        ("header length too large", [&u64::MAX.to_le_bytes()[..], &bytes[8..]].concat()),
        ("garbage header", [&bytes[..8], &vec![b'x'; bytes.len() - 8][..]].concat()),
        ("trailing bytes", [&bytes[..], &[0u8; 4][..]].concat()),
    ];
    for (what, data) in cases {
        let path = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&path, &data).unwrap();
        let err = io::load(&tiny(&Device::Cpu), &path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{what}: {err}");
        assert!(err.to_string().contains(&format!("{what}.safetensors")), "{what}: {err}");
    }
    let err = io::load(&tiny(&Device::Cpu), dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("absent.safetensors"), "{err}");
}

#[test]
fn a_failed_save_leaves_the_old_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = tiny(&Device::Cpu);
    io::save(&model, &path, io::Dtype::F32).unwrap();
    let before = std::fs::read(&path).unwrap();
    // Saving where the temporary file cannot be created fails before the
    // old file is touched.
    let err = io::save(&model, dir.path().join("no/such/dir/model.safetensors"), io::Dtype::F32).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // No temporary file is left behind either.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.safetensors"]);
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_save_and_keeps_the_old_model() {
    // A real full disk: a 64 KiB tmpfs. Mounting needs privileges; without
    // them the test says so and checks nothing (the failing-writer unit test
    // in src/io covers the same path).
    let dir = tempfile::tempdir().unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(dir.path()).output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => return eprintln!("skipping: cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => return eprintln!("skipping: cannot run mount: {e}"),
    }
    let _unmount = Mounted(dir.path().to_path_buf());
    let path = dir.path().join("model.safetensors");
    let small = tiny(&Device::Cpu);
    io::save(&small, &path, io::Dtype::F32).unwrap();
    let before = std::fs::read(&path).unwrap();
    // 100k weights (400 KB) do not fit in 64 KiB.
    let big = nn::Sequential::new().add(nn::Flatten).add(nn::Linear::new(784, 128, &Device::Cpu));
    let err = io::save(&big, &path, io::Dtype::F32).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the old file is untouched");
    io::load(&tiny(&Device::Cpu), &path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.safetensors"], "the temporary file is gone");
}

/// A PyTorch convnet's state_dict, BatchNorm buffers and its int64
/// `num_batches_tracked` included, loads into the same wgrad model, which
/// then computes what PyTorch computed (tests/fixtures/make_torch_convnet.py).
fn loads_a_pytorch_convnet_with_batch_norm(dev: &Device) {
    let model = nn::Sequential::new()
        .add(nn::Conv2d::with_options(1, 4, 3, wgrad::Conv2dOptions::default().padding(1), dev))
        .add(nn::BatchNorm2d::new(4, dev))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Flatten)
        .add(nn::Linear::new(16, 3, dev));
    io::load(&model, "tests/fixtures/torch_convnet.safetensors").unwrap();
    let tracked = model.named_buffers().into_iter().find(|(n, _)| n == "1.num_batches_tracked").unwrap().1;
    assert_eq!(tracked.item().unwrap(), 3.0);
    model.eval();
    let io_file: std::collections::HashMap<String, io::HostTensor> =
        io::read("tests/fixtures/torch_convnet_io.safetensors").unwrap().into_iter().collect();
    let x = Tensor::from_vec(io_file["input"].values.clone(), io_file["input"].shape.clone(), dev).unwrap();
    let y = model.forward(&x).to_vec().unwrap();
    common::assert_close(&y, &io_file["output"].values, 1e-5, 1e-5, "PyTorch convnet output");
}
test_device!(loads_a_pytorch_convnet_with_batch_norm);

/// BatchNorm's step counter is an integer: written as int64 whatever the
/// float dtype (as PyTorch holds it), so a count past f16's range (65,504)
/// or bf16's precision (1001 would be 1000) survives the round trip.
#[test]
fn batch_norm_counters_are_saved_as_int64_in_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let make = || nn::Sequential::new().add(nn::Linear::new(2, 3, &dev)).add(nn::BatchNorm1d::new(3, &dev));
    let counter =
        |m: &nn::Sequential| m.named_buffers().into_iter().find(|(n, _)| n == "1.num_batches_tracked").unwrap().1;
    let saved = make();
    counter(&saved).assign(&Tensor::scalar(70_001.0, &dev));
    for dtype in [io::Dtype::F32, io::Dtype::F16, io::Dtype::BF16] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        io::save(&saved, &path, dtype).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        assert!(header.contains(r#""1.num_batches_tracked":{"dtype":"I64""#), "{dtype:?}: {header}");
        let loaded = make();
        io::load(&loaded, &path).unwrap();
        assert_eq!(counter(&loaded).item().unwrap(), 70_001.0, "{dtype:?}");
    }
}

/// A module that names two of its tensors alike cannot be loaded into: an
/// error naming the name, not a panic (`save` refuses it likewise).
#[test]
fn a_state_with_duplicate_names_is_an_error_on_load() {
    struct Twice(Tensor, Tensor);
    impl Module for Twice {
        fn forward(&self, x: &Tensor) -> Tensor {
            x.clone()
        }
        fn visit(&self, v: &mut nn::Visitor) {
            v.param("w", &self.0);
            v.param("w", &self.1);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let dev = Device::Cpu;
    // The file holds the name once and a stray tensor: as many tensors as
    // the module's state.
    io::save_tensors(
        &[("w".into(), Tensor::ones([2], &dev)), ("x".into(), Tensor::ones([2], &dev))],
        &path,
        io::Dtype::F32,
    )
    .unwrap();
    let m = Twice(Tensor::zeros([2], &dev), Tensor::zeros([2], &dev));
    let err = io::load(&m, &path).unwrap_err().to_string();
    assert!(err.contains("two tensors \"w\""), "{err}");
    assert!(io::save(&m, &path, io::Dtype::F32).is_err());
}

/// Saving through a symbolic link writes its target and keeps the link,
/// as `torch.save` does.
#[cfg(unix)]
#[test]
fn saving_through_a_symlink_replaces_its_target_and_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("epoch1.safetensors");
    let link = dir.path().join("latest.safetensors");
    wgrad::manual_seed(1);
    let first = tiny(&Device::Cpu);
    io::save(&first, &target, io::Dtype::F32).unwrap();
    std::os::unix::fs::symlink("epoch1.safetensors", &link).unwrap();
    wgrad::manual_seed(2);
    let mut second = tiny(&Device::Cpu);
    io::save(&second, &link, io::Dtype::F32).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    let mut loaded = tiny(&Device::Cpu);
    io::load(&loaded, &target).unwrap();
    assert_eq!(outputs(&mut loaded), outputs(&mut second));
}
