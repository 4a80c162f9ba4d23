//! Data-parallel training over MPI (feature `mpi`; `.ci/run` runs these
//! with `cargo test --features mpi --test distributed`).
//!
//! Each test starts this same test binary under `mpirun` with only the
//! ignored `worker` test selected and a mode in `WGRAD_DDP_MODE`; the
//! workers write what they end with into a directory the test then reads.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wgrad::data::Dataset;
use wgrad::distributed::Distributed;
use wgrad::nn::{self, Module, Visitor};
use wgrad::optim::Sgd;
use wgrad::train::{FitConfig, ModelCheckpoint, fit};
use wgrad::{Device, Generator, Tensor};

/// 501 items (the last global batch of 64 is 53: shards of 26 and 27, so
/// the ranks' gradients must be weighted by their rows), 16 features, 4
/// classes from a fixed linear rule.
fn data() -> (Dataset, Dataset) {
    let mut g = Generator::new(5);
    let n = 501 + 67;
    let x: Vec<f32> = (0..n * 16).map(|_| g.normal()).collect();
    let labels: Vec<f32> = x
        .chunks(16)
        .map(|r| {
            let s = [r[0] + r[5] - r[9], r[1] - r[2] + r[12], r[3] + r[7], r[4] - r[11] - r[15]];
            (0..4).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap() as f32
        })
        .collect();
    let all = Dataset::new(x, labels, &[16], 4);
    all.split_last(67.0 / n as f32)
}

/// Counts forward passes and, in the fault modes, makes rank 1 fail at
/// the given one. `unused` is a parameter the loss never reaches: no rank
/// reports a gradient for it, so it must get none (with weight decay, a
/// zero gradient would still move it).
struct Faulty {
    inner: nn::Sequential,
    unused: nn::Linear,
    calls: AtomicUsize,
    fail_at: Option<(usize, &'static str)>,
}

impl Module for Faulty {
    fn forward(&self, x: &Tensor) -> Tensor {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((at, how)) = self.fail_at
            && call == at
        {
            eprintln!("worker: rank 1 {how}s at forward {call}");
            match how {
                "exit" => std::process::exit(3),
                _ => std::thread::sleep(Duration::from_secs(600)),
            }
        }
        self.inner.forward(x)
    }

    fn visit(&self, v: &mut Visitor) {
        self.inner.visit(v);
        v.child("unused", &self.unused);
    }
}

/// Run by the tests under `mpirun`; alone it fails (nothing to run).
#[test]
#[ignore = "a worker the other tests start under mpirun"]
fn worker() {
    let mode = std::env::var("WGRAD_DDP_MODE").expect("started by a test of tests/distributed.rs");
    let out = PathBuf::from(std::env::var("WGRAD_DDP_OUT").expect("WGRAD_DDP_OUT"));
    let dist = Arc::new(Distributed::init().unwrap());
    let rank = dist.rank();
    let device = match std::env::var("WGRAD_DDP_DEVICE").as_deref() {
        Ok("gpu") => Device::gpu().unwrap(),
        _ => Device::Cpu,
    };
    // A different seed per rank: broadcast_parameters must make them equal.
    wgrad::manual_seed(100 + rank as u64);
    // "bn": with batch normalisation, whose batch statistics are each
    // shard's (so only the ranks' agreement is checked, not one process's).
    let bn = mode == "bn";
    let mut inner = nn::Sequential::new().add(nn::Linear::new(16, 32, &device));
    if bn {
        inner = inner.add(nn::BatchNorm1d::new(32, &device));
    }
    let inner =
        inner.add(nn::ReLU).add(nn::Linear::new(32, 32, &device)).add(nn::Tanh).add(nn::Linear::new(32, 4, &device));
    let fail_at = match (mode.as_str(), rank) {
        ("exit", 1) => Some((12, "exit")),
        ("hang", 1) => Some((12, "hang")),
        _ => None,
    };
    let unused = nn::Linear::new(4, 4, &device);
    let model = Faulty { inner, unused, calls: AtomicUsize::new(0), fail_at };
    dist.broadcast_parameters(&model).unwrap();
    let unused_before = model.unused.weight.to_vec().unwrap();
    let (train, validation) = data();
    let mut opt = Sgd::new(model.parameters(), 0.1).momentum(0.9).weight_decay(1e-3);
    let config = FitConfig {
        epochs: if mode == "train" || bn { 2 } else { 4 },
        batch_size: 64,
        shuffle_seed: 3,
        validation_data: Some(validation),
        verbose: false,
        callbacks: vec![Box::new(ModelCheckpoint::new(out.join("checkpoint.safetensors")))],
        distributed: Some(dist.clone()),
        ..FitConfig::default()
    };
    let history = fit(&model, &mut opt, &train, &config).unwrap();
    assert_eq!(model.unused.weight.to_vec().unwrap(), unused_before, "an unused parameter was updated");
    let mut bytes = Vec::new();
    for (_, t) in model.state_dict() {
        for v in t.to_vec().unwrap() {
            bytes.extend(v.to_le_bytes());
        }
    }
    std::fs::write(out.join(format!("rank{rank}.params")), bytes).unwrap();
    let lines: Vec<String> = history
        .iter()
        .map(|e| format!("{:?} {:?} {:?}", e.train.loss, e.train.accuracy(), e.validation.as_ref().unwrap().loss))
        .collect();
    std::fs::write(out.join(format!("rank{rank}.history")), lines.join("\n")).unwrap();
}

/// A fresh directory for one run's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgrad-ddp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mpirun -np {np}` of the worker in `mode`, killed after `limit`; its exit
/// success, its combined output and how long it ran.
fn mpirun(
    np: usize,
    mode: &str,
    device: &str,
    out: &Path,
    extra: &[(&str, &str)],
    limit: Duration,
) -> (bool, String, Duration) {
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .arg(&exe)
        .args(["--ignored", "--exact", "worker", "--nocapture", "--test-threads=1"])
        .env("WGRAD_DDP_MODE", mode)
        .env("WGRAD_DDP_DEVICE", device)
        .env("WGRAD_DDP_OUT", out)
        // Several buckets for this small model (its 32×32 weight alone is 4 KiB).
        .env("WGRAD_DIST_BUCKET_KB", "2")
        .env("WGRAD_NUM_THREADS", "1")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI's openmpi-bin) must be installed for these tests");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "mpirun -np {np} ({mode}) still ran after {limit:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text, took)
}

fn floats(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Two ranks end with bit-identical parameters and identical reported
/// metrics, and match one process training on the whole batches to
/// rounding (the sum over ranks associates differently).
fn ranks_agree_and_match_one_process(device: &str) {
    let two = scratch(&format!("two-{device}"));
    let (ok, text, _) = mpirun(2, "train", device, &two, &[], Duration::from_secs(300));
    assert!(ok, "mpirun -np 2 failed:\n{text}");
    let (p0, p1) = (std::fs::read(two.join("rank0.params")).unwrap(), std::fs::read(two.join("rank1.params")).unwrap());
    assert!(!p0.is_empty() && p0 == p1, "the ranks' parameters differ after training");
    let h0 = std::fs::read_to_string(two.join("rank0.history")).unwrap();
    assert_eq!(h0, std::fs::read_to_string(two.join("rank1.history")).unwrap(), "the ranks report different metrics");
    // Only rank 0 saved a checkpoint.
    assert!(two.join("checkpoint.safetensors").exists());

    let one = scratch(&format!("one-{device}"));
    let (ok, text, _) = mpirun(1, "train", device, &one, &[], Duration::from_secs(300));
    assert!(ok, "mpirun -np 1 failed:\n{text}");
    let (a, b) = (floats(&one.join("rank0.params")), floats(&two.join("rank0.params")));
    common::assert_close(&b, &a, 2e-5, 2e-4, "2-process vs 1-process parameters");
    // Training changed them (the comparison is not of two initial states).
    let first: Vec<f32> = h0.lines().next().unwrap().split(' ').map(|v| v.parse().unwrap()).collect();
    let last: Vec<f32> = h0.lines().last().unwrap().split(' ').map(|v| v.parse().unwrap()).collect();
    assert!(last[0] < first[0], "the loss did not fall: {h0}");
    let h1 = std::fs::read_to_string(one.join("rank0.history")).unwrap();
    for (l2, l1) in h0.lines().zip(h1.lines()) {
        let parse = |l: &str| l.split(' ').map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>();
        common::assert_close(&parse(l2), &parse(l1), 1e-5, 1e-4, "2-process vs 1-process metrics");
    }
    let _ = std::fs::remove_dir_all(two);
    let _ = std::fs::remove_dir_all(one);
}

#[test]
fn ranks_agree_and_match_one_process_cpu() {
    ranks_agree_and_match_one_process("cpu");
}

/// With BatchNorm each rank's running statistics follow its shards; fit
/// gives every rank rank 0's at the end of each epoch, so the ranks still
/// end identical (buffers included) and report the same validation.
#[test]
fn batch_norm_ranks_agree() {
    let dir = scratch("bn");
    let (ok, text, _) = mpirun(2, "bn", "cpu", &dir, &[], Duration::from_secs(300));
    assert!(ok, "mpirun -np 2 failed:\n{text}");
    let (p0, p1) = (std::fs::read(dir.join("rank0.params")).unwrap(), std::fs::read(dir.join("rank1.params")).unwrap());
    assert!(!p0.is_empty() && p0 == p1, "the ranks' parameters or running statistics differ");
    assert_eq!(
        std::fs::read_to_string(dir.join("rank0.history")).unwrap(),
        std::fs::read_to_string(dir.join("rank1.history")).unwrap()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ranks_agree_and_match_one_process_gpu() {
    if common::gpu().is_some() {
        ranks_agree_and_match_one_process("gpu");
    }
}

/// The checkpoint rank 0 saved before the failure still loads.
fn checkpoint_intact(dir: &Path) {
    let path = dir.join("checkpoint.safetensors");
    assert!(path.exists(), "rank 0 saved no checkpoint before the failure");
    let tensors = wgrad::io::load_tensors(&path, &Device::Cpu).expect("the checkpoint is readable");
    assert!(
        tensors.iter().any(|(n, _)| n == "model.0.weight"),
        "{:?}",
        tensors.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "checkpoint.safetensors")
        .collect();
    assert!(leftovers.is_empty(), "files left beside the checkpoint: {leftovers:?}");
}

/// Rank 1 exits in its second epoch: the job ends (mpirun stops every
/// rank and names the one that left), no rank hangs, and rank 0's last
/// checkpoint is whole.
#[test]
fn a_rank_that_exits_ends_the_job() {
    let dir = scratch("exit");
    let (ok, text, took) = mpirun(2, "exit", "cpu", &dir, &[], Duration::from_secs(120));
    assert!(!ok, "the job succeeded although a rank exited:\n{text}");
    assert!(text.contains("rank 1 exits at forward 12"), "{text}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    checkpoint_intact(&dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Rank 1 hangs in its second epoch: rank 0's all-reduce gives up after
/// WGRAD_DIST_TIMEOUT with a message naming itself and the collective,
/// and aborts the job instead of hanging.
#[test]
fn a_rank_that_hangs_times_out() {
    let dir = scratch("hang");
    let (ok, text, took) = mpirun(2, "hang", "cpu", &dir, &[("WGRAD_DIST_TIMEOUT", "3")], Duration::from_secs(120));
    assert!(!ok, "the job succeeded although a rank hung:\n{text}");
    assert!(text.contains("rank 0 waited") && text.contains("aborting the job"), "{text}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    checkpoint_intact(&dir);
    let _ = std::fs::remove_dir_all(dir);
}
