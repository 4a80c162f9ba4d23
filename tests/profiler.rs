//! The kernel profiler: every dispatch recorded with its op, kernel,
//! workgroups and host time, GPU times from timestamp queries where the
//! adapter has them (lavapipe does), a table, and a Chrome trace that
//! parses.

mod common;

use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::{Device, GpuDevice, GpuOptions, Tensor};

fn mlp_step(dev: &Device, steps: usize) {
    wgrad::manual_seed(3);
    let model = nn::Sequential::new().add(nn::Linear::new(64, 32, dev)).add(nn::ReLU).add(nn::Linear::new(32, 10, dev));
    let mut opt = Adam::new(model.parameters(), 1e-3);
    let x = Tensor::randn([16, 64], dev);
    let y = Tensor::from_vec((0..16).map(|i| (i % 10) as f32).collect(), [16], dev).unwrap();
    for _ in 0..steps {
        let loss = model.forward(&x).cross_entropy(&y);
        opt.step(&loss.backward());
        loss.item().unwrap();
    }
}

#[test]
fn every_dispatch_is_recorded_with_its_op_kernel_and_times() {
    let Some(dev) = common::gpu() else { return };
    let Device::Gpu(gpu) = &dev else { unreachable!() };
    mlp_step(&dev, 1); // builds the pipelines: not what a profile should time
    gpu.synchronize().unwrap();
    let before = gpu.kernels_dispatched();
    gpu.start_profiling();
    mlp_step(&dev, 3);
    let profile = gpu.stop_profiling().unwrap();
    let dispatched = gpu.kernels_dispatched() - before;
    assert_eq!(profile.events.len() as u64, dispatched, "one event per dispatch");
    assert!(dispatched >= 3 * 10, "{dispatched}");

    let ops: std::collections::BTreeSet<&str> = profile.events.iter().map(|e| e.op.as_str()).collect();
    // (The biases' gradients are a reduction of their own only without
    // matmul epilogues, which fold them into the weight gradient's kernel.)
    for op in ["matmul", "cross_entropy", "optim"] {
        assert!(ops.iter().any(|o| o.contains(op)), "no {op} in {ops:?}");
    }
    for e in &profile.events {
        assert!(e.workgroups.iter().all(|&g| g > 0), "{e:?}");
        assert!(!e.elements.is_empty() && e.elements.iter().all(|&n| n > 0), "{e:?}");
        // Generated kernels are named by what generated them.
        let generated = ["fused", "optim_multi", "matmul_epilogue"].contains(&e.kernel.as_str());
        assert!(generated || e.kernel.contains("::"), "{e:?}");
    }
    // Host times are ordered as recorded.
    assert!(profile.events.windows(2).all(|w| w[0].host_start <= w[1].host_start));

    // lavapipe (and most GPUs) have timestamp queries: every dispatch is timed.
    if profile.gpu_timing {
        assert!(profile.events.iter().all(|e| e.gpu.is_some() && e.gpu_start.is_some()));
        let total: std::time::Duration = profile.events.iter().filter_map(|e| e.gpu).sum();
        assert!(total > std::time::Duration::ZERO);
        // Kernels run in order on one queue.
        let starts: Vec<_> = profile.events.iter().map(|e| e.gpu_start.unwrap()).collect();
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    }

    let table = profile.table(5);
    assert!(table.contains("calls") && table.contains("GPU total"), "{table}");
    assert!(table.lines().count() <= 5 + 4, "{table}");
    let rows = profile.key_averages();
    assert_eq!(rows.iter().map(|r| r.calls).sum::<usize>(), profile.events.len());

    let trace: serde_json::Value = serde_json::from_str(&profile.chrome_trace()).expect("the trace is JSON");
    let events = trace["traceEvents"].as_array().unwrap();
    let complete = events.iter().filter(|e| e["ph"] == "X").count();
    let timed = profile.events.iter().filter(|e| e.gpu.is_some()).count();
    assert_eq!(complete, profile.events.len() + timed);
    assert!(events.iter().any(|e| e["args"]["kernel"].as_str().is_some_and(|k| k.starts_with("matmul"))));

    // Stopped: nothing more is recorded, and a second stop is empty.
    mlp_step(&dev, 1);
    assert!(gpu.stop_profiling().unwrap().events.is_empty());
}

#[test]
fn the_noop_adapter_profiles_host_time_without_gpu_times() {
    let gpu = GpuDevice::with_options(GpuOptions { backends: Some("noop".into()), ..GpuOptions::default() }).unwrap();
    let dev = Device::Gpu(gpu.clone());
    gpu.start_profiling();
    mlp_step(&dev, 2);
    let profile = gpu.stop_profiling().unwrap();
    assert!(!profile.events.is_empty() && !profile.gpu_timing);
    assert!(profile.events.iter().all(|e| e.host > std::time::Duration::ZERO && e.gpu.is_none()));
    assert!(profile.table(20).contains("not measured"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    profile.write_chrome_trace(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).expect("the written trace is JSON");
}

/// Run only as the child of the next test, with `WGRAD_PROFILE` set.
#[test]
#[ignore = "the child process of wgrad_profile_writes_the_trace_and_table_at_exit"]
fn child_profiled_by_the_environment() {
    let gpu = GpuDevice::with_options(GpuOptions { backends: Some("noop".into()), ..GpuOptions::default() }).unwrap();
    // Kept alive to the end, as the default device (a static) would be.
    std::mem::forget(gpu.clone());
    mlp_step(&Device::Gpu(gpu), 2);
}

#[test]
fn wgrad_profile_writes_the_trace_and_table_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_profiled_by_the_environment", "--ignored", "--test-threads=1"])
        .env("WGRAD_PROFILE", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("wgrad profile:") && stderr.contains("matmul"), "{stderr}");
    assert!(stderr.contains("wrote the kernel trace"), "{stderr}");
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(trace["traceEvents"].as_array().unwrap().len() > 10);
}
