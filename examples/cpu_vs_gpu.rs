//! CPU vs GPU on the workloads people train with: matrix products, a
//! convolution, a chain of small elementwise ops, softmax cross-entropy, one
//! MLP training step at several batch sizes, and one epoch of the seed's
//! MNIST model and of Keras's simple MNIST convnet.
//!
//!     cargo run --release --example cpu_vs_gpu [-- --json results.json] [--peers]
//!
//! Prints a table (steady-state medians; cold starts, which include
//! compiling GPU pipelines, in a second table), the batch size from which
//! the GPU wins the training step, and draws `cpu_vs_gpu.svg`. Every GPU
//! timing ends with the device idle: the work is finished, not just queued.
//!
//! `--peers` then runs `benches/peers.py` in the same run, which measures
//! the workloads that numpy, JAX, Keras 3 (on JAX) and PyTorch also do, the same way,
//! and prints them beside ours: the machine is too noisy to compare against
//! figures from another run. `--burn` likewise builds and runs
//! `benches/burn_peer`: burn's wgpu backend on the same adapter, and its
//! ndarray backend on the CPU.
//!
//! `WGPU_BACKEND=noop` measures wgpu's noop adapter as the GPU: every
//! kernel's host path (recording, validation, encoding) with no device work,
//! so the GPU column is host cost alone.

use clap::Parser;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::PathBuf;
use std::time::Instant;
use wgrad::data::{Dataset, mnist};
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Optimizer};
use wgrad::train::{FitConfig, fit};
use wgrad::{Device, Result, Tensor, manual_seed};

#[derive(Parser)]
#[command(about = "Compare the CPU and GPU backends and draw the result")]
struct Args {
    /// Fewer sizes and repetitions (a smoke run, not for reporting)
    #[arg(long)]
    quick: bool,
    /// Also write the records as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to draw the chart
    #[arg(long, default_value = "cpu_vs_gpu.svg")]
    svg: PathBuf,
    /// MNIST directory for the training-step and epoch benchmarks
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// The names corpus (examples/names.rs) for the language-model epochs
    #[arg(long, default_value = "data/names")]
    names: PathBuf,
    /// Measure only these workloads (comma-separated names, e.g.
    /// `matmul,mnist_epoch`)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure the peers (numpy, JAX, Keras on JAX; those installed)
    /// with `benches/peers.py`, in this run
    #[arg(long)]
    peers: bool,
    /// The Python that runs `benches/peers.py`
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Also build and measure burn (`benches/burn_peer`, a separate project:
    /// its wgpu backend on the GPU, its ndarray backend on the CPU; the first
    /// build compiles burn, ~12 minutes on 2 cores)
    #[arg(long)]
    burn: bool,
}

/// A peer library's measurement of one of our workloads.
#[derive(Clone, Debug)]
struct Peer {
    library: String,
    workload: String,
    size: String,
    seconds: f64,
    cold_seconds: f64,
    gflops: Option<f64>,
}

impl Peer {
    /// Where it ran: the wgpu peers on the GPU adapter, the rest on the CPU.
    fn device(&self) -> &'static str {
        if self.library.ends_with("wgpu") { "gpu" } else { "cpu" }
    }
}

/// One measured workload on one device.
#[derive(Clone, Debug)]
struct Record {
    workload: &'static str,
    size: String,
    device: &'static str,
    /// Median of the steady-state runs.
    seconds: f64,
    /// The first run, pipeline compilation and first allocations included.
    cold_seconds: f64,
    flops: Option<f64>,
}

impl Record {
    fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f / self.seconds / 1e9)
    }
}

/// Times `run` (which must leave the device idle): one cold run, one
/// warm-up, then the median of `reps`.
fn measure(reps: usize, mut run: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let t = Instant::now();
    run()?;
    let cold = t.elapsed().as_secs_f64();
    run()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((cold, times[times.len() / 2]))
}

fn seed_model(dev: &Device, hidden: usize) -> nn::Sequential {
    nn::Sequential::new()
        .add(nn::Flatten)
        .add(nn::Linear::new(784, hidden, dev))
        .add(nn::ReLU)
        .add(nn::Dropout::new(0.2))
        .add(nn::Linear::new(hidden, 10, dev))
}

/// Keras's "simple MNIST convnet" (as `examples/mnist.rs --model cnn`).
fn convnet(dev: &Device) -> nn::Sequential {
    nn::Sequential::new()
        .add(nn::Unflatten::new(1, [1, 28]))
        .add(nn::Conv2d::new(1, 32, 3, dev))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Conv2d::new(32, 64, 3, dev))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Flatten)
        .add(nn::Dropout::new(0.5))
        .add(nn::Linear::new(64 * 5 * 5, 10, dev))
}

/// One timed repetition of a workload, prepared for a device.
type Step = Box<dyn FnMut() -> Result<()>>;

struct Bench<'a> {
    devices: Vec<(&'static str, Device)>,
    reps: usize,
    records: Vec<Record>,
    mnist: &'a Dataset,
    only: Vec<String>,
}

impl Bench<'_> {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }

    fn add(
        &mut self,
        workload: &'static str,
        size: String,
        flops: Option<f64>,
        run: &dyn Fn(&Device) -> Result<Step>,
    ) -> Result<()> {
        if !self.wants(workload) {
            return Ok(());
        }
        for (name, dev) in self.devices.clone() {
            let mut step = run(&dev)?;
            let (cold, seconds) = measure(self.reps, &mut step)?;
            self.records.push(Record {
                workload,
                size: size.clone(),
                device: name,
                seconds,
                cold_seconds: cold,
                flops,
            });
        }
        Ok(())
    }
}

/// Every workload `--only` can name.
const WORKLOADS: &[&str] = &[
    "matmul",
    "mnist_layer",
    "conv2d",
    "elementwise_chain",
    "softmax_xent",
    "layer_norm",
    "attention",
    "embedding",
    "train_step",
    "train_step_captured",
    "mnist_epoch",
    "mnist_cnn_epoch",
    "names_gpt_epoch",
    "names_lstm_epoch",
];

fn run(args: Args) -> Result<()> {
    if let Some(unknown) = args.only.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        return Err(wgrad::Error::InvalidArgument {
            op: "--only",
            msg: format!("no workload {unknown:?}; the workloads are {}", WORKLOADS.join(", ")),
        });
    }
    let gpu = Device::gpu();
    let mut devices = vec![("cpu", Device::Cpu)];
    match &gpu {
        Ok(g) => devices.push(("gpu", g.clone())),
        Err(e) => eprintln!("no GPU, measuring the CPU only: {e}"),
    }
    let data = mnist::load(&args.data)?;
    let mut bench = Bench {
        devices,
        reps: if args.quick { 2 } else { 7 },
        records: Vec::new(),
        mnist: &data.train,
        only: args.only.clone(),
    };

    let sizes: &[usize] = if args.quick { &[128, 1024] } else { &[128, 256, 512, 1024, 2048] };
    for &n in sizes {
        bench.add("matmul", n.to_string(), Some(2.0 * (n * n * n) as f64), &|dev| {
            manual_seed(0);
            let (a, b) = (Tensor::randn([n, n], dev), Tensor::randn([n, n], dev));
            let dev = dev.clone();
            Ok(Box::new(move || {
                let _c = a.matmul(&b);
                dev.synchronize()
            }))
        })?;
    }

    // The seed's first layer, forward and both backward products.
    bench.add("mnist_layer", "32x784x128 fwd+bwd".into(), Some(3.0 * 2.0 * 32.0 * 784.0 * 128.0), &|dev| {
        manual_seed(0);
        let x = Tensor::randn([32, 784], dev).requires_grad();
        let w = Tensor::randn([128, 784], dev).requires_grad();
        let g = Tensor::randn([32, 128], dev);
        let dev = dev.clone();
        Ok(Box::new(move || {
            let _grads = x.linear(&w, None).backward_with(g.clone());
            dev.synchronize()
        }))
    })?;

    // A ResNet-style convolution, forward and both gradients.
    let conv_flops = 3.0 * 2.0 * (32 * 64 * 28 * 28 * 64 * 9) as f64;
    bench.add("conv2d", "32x64x28x28, 64 3x3 pad 1, fwd+bwd".into(), Some(conv_flops), &|dev| {
        manual_seed(0);
        let x = Tensor::randn([32, 64, 28, 28], dev).requires_grad();
        let w = (Tensor::randn([64, 64, 3, 3], dev) * 0.05).requires_grad();
        let g = Tensor::randn([32, 64, 28, 28], dev);
        let dev = dev.clone();
        let opts = wgrad::Conv2dOptions::default().padding(1);
        Ok(Box::new(move || {
            let _grads = x.conv2d(&w, None, opts).backward_with(g.clone());
            dev.synchronize()
        }))
    })?;

    // 1000 dependent small ops, read once at the end: the per-op overhead.
    bench.add("elementwise_chain", "1000 ops x 1024".into(), None, &|dev| {
        let x = Tensor::ones([1024], dev);
        Ok(Box::new(move || {
            let mut y = x.clone();
            for _ in 0..1000 {
                y = &y * 1.0001;
            }
            y.to_vec().map(drop)
        }))
    })?;

    bench.add("softmax_xent", "1024x1000 fwd+bwd".into(), None, &|dev| {
        manual_seed(0);
        let logits = Tensor::randn([1024, 1000], dev).requires_grad();
        let labels = Tensor::from_vec((0..1024).map(|i| (i % 1000) as f32).collect(), [1024], dev)?;
        let dev = dev.clone();
        Ok(Box::new(move || {
            let _g = logits.cross_entropy(&labels).backward();
            dev.synchronize()
        }))
    })?;

    // A transformer's normalisation and attention, forward and backward.
    bench.add("layer_norm", "8192x512 fwd+bwd".into(), None, &|dev| {
        manual_seed(0);
        let x = Tensor::randn([8192, 512], dev).requires_grad();
        let (w, b) = (Tensor::ones([512], dev).requires_grad(), Tensor::zeros([512], dev).requires_grad());
        let g = Tensor::randn([8192, 512], dev);
        let dev = dev.clone();
        Ok(Box::new(move || {
            let _grads = x.layer_norm(1, Some(&w), Some(&b), 1e-5).backward_with(g.clone());
            dev.synchronize()
        }))
    })?;
    let attn_flops = 3.0 * 2.0 * 2.0 * (32 * 8 * 128 * 128 * 64) as f64;
    bench.add("attention", "32x8x128x64 causal fwd+bwd".into(), Some(attn_flops), &|dev| {
        manual_seed(0);
        let [q, k, v] = [0; 3].map(|_| Tensor::randn([32, 8, 128, 64], dev).requires_grad());
        let g = Tensor::randn([32, 8, 128, 64], dev);
        let dev = dev.clone();
        Ok(Box::new(move || {
            let _grads = wgrad::scaled_dot_product_attention(&q, &k, &v, true).backward_with(g.clone());
            dev.synchronize()
        }))
    })?;
    // An embedding's backward: 4096 ids into a 50k-row table.
    bench.add("embedding", "50000x512 table, 4096 ids fwd+bwd".into(), None, &|dev| {
        manual_seed(0);
        let table = Tensor::randn([50_000, 512], dev).requires_grad();
        let ids = Tensor::from_vec((0..4096).map(|i| ((i * 7919) % 50_000) as f32).collect(), [4096], dev)?;
        let g = Tensor::randn([4096, 512], dev);
        let dev = dev.clone();
        Ok(Box::new(move || {
            let _grads = table.index_select(0, &ids).backward_with(g.clone());
            dev.synchronize()
        }))
    })?;

    let batches: &[usize] = if args.quick { &[32, 256] } else { &[32, 64, 128, 256, 512, 1024] };
    for &batch in batches {
        let flops = 3.0 * 2.0 * batch as f64 * (784.0 * 128.0 + 128.0 * 10.0);
        bench.add("train_step", format!("batch {batch}"), Some(flops), &|dev| {
            manual_seed(0);
            let model = seed_model(dev, 128);
            let mut opt = Adam::new(model.parameters(), 1e-3);
            let idx: Vec<usize> = (0..batch).collect();
            let (x, y) = bench_data(&data.train, dev, &idx);
            let dev = dev.clone();
            Ok(Box::new(move || {
                let loss = model.forward(&x).cross_entropy(&y);
                opt.step(&loss.backward());
                dev.synchronize()
            }))
        })?;
    }

    // The batch-32 step captured once and replayed (`CapturedStep`): on the
    // CPU the same eager step.
    bench.add(
        "train_step_captured",
        "batch 32".into(),
        Some(3.0 * 2.0 * 32.0 * (784.0 * 128.0 + 128.0 * 10.0)),
        &|dev| {
            manual_seed(0);
            let model = seed_model(dev, 128);
            let mut opt = Adam::new(model.parameters(), 1e-3);
            let idx: Vec<usize> = (0..32).collect();
            let (x, y) = bench_data(&data.train, dev, &idx);
            let dev = dev.clone();
            let mut step = wgrad::CapturedStep::new(move |xy: &[Tensor]| {
                let loss = model.forward(&xy[0]).cross_entropy(&xy[1]);
                opt.step(&loss.backward());
                vec![loss]
            });
            Ok(Box::new(move || {
                step.run(&[x.clone(), y.clone()])?;
                dev.synchronize()
            }))
        },
    )?;

    // Whole epochs through `fit`: the seed's MLP, and Keras's simple
    // convnet (on an eighth of the digits with --quick: a smoke run).
    let cnn_data = if args.quick { bench.mnist.split_last(0.875).0 } else { bench.mnist.clone() };
    type Build = fn(&Device) -> nn::Sequential;
    let epochs: [(&str, Build, usize, Dataset); 2] =
        [("mnist_epoch", |d| seed_model(d, 128), 32, bench.mnist.clone()), ("mnist_cnn_epoch", convnet, 128, cnn_data)];
    for (workload, build, batch_size, data) in epochs {
        let devices = if bench.wants(workload) { bench.devices.clone() } else { Vec::new() };
        for (name, dev) in devices {
            manual_seed(0);
            let model = build(&dev);
            let mut opt = Adam::new(model.parameters(), 1e-3);
            let config = FitConfig { epochs: 1, batch_size, verbose: false, ..FitConfig::default() };
            let (cold, seconds) = measure(bench.reps.min(3), || fit(&model, &mut opt, &data, &config).map(drop))?;
            bench.records.push(Record {
                workload,
                size: format!("{} digits, batch {batch_size}", data.len()),
                device: name,
                seconds,
                cold_seconds: cold,
                flops: None,
            });
        }
    }

    // Character-level language models (examples/names.rs) through `fit`:
    // a GPT and an LSTM (an eighth of the names with --quick).
    let lm_names = ["names_gpt_epoch", "names_lstm_epoch"];
    let names_train = if lm_names.iter().any(|w| bench.wants(w)) {
        let names = wgrad::data::names::load(&args.names, 16)?;
        if args.quick { names.train.split_last(0.875).0 } else { names.train }
    } else {
        Dataset::new(Vec::new(), Vec::new(), &[16], 28)
    };
    type BuildLm = fn(&Device) -> Box<dyn nn::Module>;
    let lms: [(&str, BuildLm); 2] = [
        ("names_gpt_epoch", |d| {
            let c = wgrad::models::GptConfig { vocab: 28, context: 16, d_model: 64, heads: 4, layers: 2 };
            Box::new(wgrad::models::Gpt::new(c, d))
        }),
        ("names_lstm_epoch", |d| Box::new(wgrad::models::LstmLm::new(28, 64, 128, 1, d))),
    ];
    for (workload, build) in lms {
        let devices = if bench.wants(workload) { bench.devices.clone() } else { Vec::new() };
        for (name, dev) in devices {
            manual_seed(0);
            let model = build(&dev);
            let mut opt = Adam::new(model.parameters(), 3e-3);
            let config = FitConfig {
                epochs: 1,
                batch_size: 64,
                loss: Some(wgrad::data::names::loss()),
                metrics: Some(Vec::new()),
                verbose: false,
                ..FitConfig::default()
            };
            let (cold, seconds) =
                measure(bench.reps.min(3), || fit(&*model, &mut opt, &names_train, &config).map(drop))?;
            bench.records.push(Record {
                workload,
                size: format!("{} names, batch 64", names_train.len()),
                device: name,
                seconds,
                cold_seconds: cold,
                flops: None,
            });
        }
    }

    report(&bench.records, gpu.as_ref().ok());
    // Our figures are in hand: a peer that cannot run is a note, not a failure.
    let note = |e: wgrad::Error| {
        eprintln!("{e}");
        Vec::new()
    };
    let mut peers = Vec::new();
    if args.peers {
        peers.extend(run_peers(&args, bench.reps).unwrap_or_else(note));
    }
    if args.burn {
        peers.extend(run_burn().unwrap_or_else(note));
    }
    if args.peers || args.burn {
        report_peers(&bench.records, &peers);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json(&bench.records, &peers))
            .map_err(|e| wgrad::Error::Mismatch(format!("{}: {e}", path.display())))?;
        println!("\nwrote {}", path.display());
    }
    chart(&bench.records, &args.svg, gpu.as_ref().ok())?;
    println!("drew {}", args.svg.display());
    Ok(())
}

/// The MNIST training digits at `idx` (wrapping around) as one batch.
fn bench_data(data: &Dataset, dev: &Device, idx: &[usize]) -> (Tensor, Tensor) {
    let idx: Vec<usize> = idx.iter().map(|i| i % data.len()).collect();
    data.gather(&idx, dev)
}

fn human(seconds: f64) -> String {
    match seconds {
        s if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        s if s < 1.0 => format!("{:.2} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}

/// A steady-state time; the elementwise chains per op (1000 ops a run).
fn steady(workload: &str, seconds: f64) -> String {
    if workload.starts_with("elementwise_chain") { format!("{} /op", human(seconds / 1000.0)) } else { human(seconds) }
}

fn pairs(records: &[Record]) -> Vec<(&Record, Option<&Record>)> {
    records
        .iter()
        .filter(|r| r.device == "cpu")
        .map(|c| (c, records.iter().find(|g| g.device == "gpu" && g.workload == c.workload && g.size == c.size)))
        .collect()
}

fn report(records: &[Record], gpu: Option<&Device>) {
    println!("CPU: {}", Device::Cpu.info());
    match gpu {
        Some(g) => println!("GPU: {}", g.info()),
        None => println!("GPU: none"),
    }
    println!("\n| workload | size | CPU | GPU | GPU speed-up | CPU GFLOP/s | GPU GFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    let gf = |r: Option<&Record>| r.and_then(Record::gflops).map_or("–".into(), |g| format!("{g:.1}"));
    for (c, g) in pairs(records) {
        let t = |r: &Record| steady(r.workload, r.seconds);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.workload,
            c.size,
            t(c),
            g.map_or("–".into(), t),
            g.map_or("–".into(), |g| format!("{:.2}×", c.seconds / g.seconds)),
            gf(Some(c)),
            gf(g),
        );
    }
    println!("\nCold start (first run: pipeline compilation, first allocations):\n");
    println!("| workload | size | CPU first run | GPU first run |");
    println!("|---|---|---|---|");
    for (c, g) in pairs(records) {
        println!(
            "| {} | {} | {} | {} |",
            c.workload,
            c.size,
            human(c.cold_seconds),
            g.map_or("–".into(), |g| human(g.cold_seconds))
        );
    }
    let crossover = pairs(records)
        .into_iter()
        .filter(|(c, _)| c.workload == "train_step")
        .find(|(c, g)| g.is_some_and(|g| g.seconds < c.seconds))
        .map(|(c, _)| c.size.clone());
    let measured = records.iter().any(|r| r.workload == "train_step");
    match (gpu, crossover) {
        (None, _) => {}
        _ if !measured => {}
        (Some(_), Some(size)) => println!("\nThe GPU wins the training step from {size} on."),
        (Some(_), None) => println!("\nThe GPU wins the training step at none of the batch sizes measured."),
    }
}

fn json(records: &[Record], peers: &[Peer]) -> String {
    let item = |workload: &str,
                size: &str,
                device: &str,
                library: &str,
                seconds: f64,
                cold: f64,
                gflops: Option<f64>| {
        let gflops = gflops.map_or("null".into(), |g| format!("{g:.3}"));
        format!(
            "  {{\"workload\": \"{workload}\", \"size\": \"{size}\", \"device\": \"{device}\", \"library\": \"{library}\", \"seconds\": {seconds:e}, \"cold_seconds\": {cold:e}, \"gflops\": {gflops}}}"
        )
    };
    let ours =
        records.iter().map(|r| item(r.workload, &r.size, r.device, "wgrad", r.seconds, r.cold_seconds, r.gflops()));
    let theirs =
        peers.iter().map(|p| item(&p.workload, &p.size, p.device(), &p.library, p.seconds, p.cold_seconds, p.gflops));
    let items: Vec<String> = ours.chain(theirs).collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

/// Runs `benches/peers.py` and reads its records (tab-separated lines).
fn run_peers(args: &Args, reps: usize) -> Result<Vec<Peer>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers.py");
    let mut command = std::process::Command::new(&args.python);
    command.arg(&script).arg("--data").arg(&args.data).arg("--reps").arg(reps.to_string()).args(["--format", "tsv"]);
    run_tsv(command, &format!("{} {}", args.python.display(), script.display()))
}

/// Builds and runs `benches/burn_peer` (burn-wgpu, burn-ndarray) and reads
/// its records.
fn run_burn() -> Result<Vec<Peer>> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/burn_peer/Cargo.toml");
    let mut command = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    command.args(["run", "--quiet", "--release", "--manifest-path"]).arg(&manifest);
    run_tsv(command, &format!("cargo run --release --manifest-path {}", manifest.display()))
}

/// Runs a peer that prints tab-separated records: library, workload, size,
/// seconds, cold seconds, GFLOP/s or `-`.
fn run_tsv(mut command: std::process::Command, what: &str) -> Result<Vec<Peer>> {
    println!("\nmeasuring the peers: {what} ...");
    let fail = |e: &dyn std::fmt::Display| wgrad::Error::Mismatch(format!("peers ({what}): {e}"));
    let out =
        command.stderr(std::process::Stdio::inherit()).output().map_err(|e| fail(&format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(fail(&out.status));
    }
    let parse = |v: &str| v.parse::<f64>().map_err(|e| fail(&format!("{v:?}: {e}")));
    let mut peers = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let [library, workload, size, seconds, cold, gflops] = f[..] else {
            return Err(fail(&format!("unexpected line {line:?}")));
        };
        peers.push(Peer {
            library: library.into(),
            workload: workload.into(),
            size: size.into(),
            seconds: parse(seconds)?,
            cold_seconds: parse(cold)?,
            gflops: if gflops == "-" { None } else { Some(parse(gflops)?) },
        });
    }
    Ok(peers)
}

/// Our CPU and GPU beside each peer, for the workloads the peers measured.
fn report_peers(records: &[Record], peers: &[Peer]) {
    if peers.is_empty() {
        println!("\nNo peer could be measured (see above).");
        return;
    }
    // One column per library, in the order they were measured.
    let mut libraries: Vec<&str> = Vec::new();
    for p in peers {
        if !libraries.contains(&p.library.as_str()) {
            libraries.push(&p.library);
        }
    }
    let mut rows: Vec<(&str, &str)> = peers.iter().map(|p| (p.workload.as_str(), p.size.as_str())).collect();
    rows.sort();
    rows.dedup();
    let cell = |seconds: f64, gflops: Option<f64>, workload: &str| {
        let t = steady(workload, seconds);
        gflops.map_or(t.clone(), |g| format!("{t} ({g:.0} GFLOP/s)"))
    };
    println!("\nPeers, measured in this run on the same CPU and adapter (steady-state medians):\n");
    println!("| workload | size | wgrad CPU | wgrad GPU | {} |", libraries.join(" | "));
    println!("|---|---|---|---|{}", "---|".repeat(libraries.len()));
    for (workload, size) in rows {
        let ours = |device: &str| {
            records
                .iter()
                .find(|r| r.device == device && r.workload == workload && r.size == size)
                .map_or("–".into(), |r| cell(r.seconds, r.gflops(), workload))
        };
        let theirs: Vec<String> = libraries
            .iter()
            .map(|l| {
                peers
                    .iter()
                    .find(|p| p.library == *l && p.workload == workload && p.size == size)
                    .map_or("–".into(), |p| cell(p.seconds, p.gflops, workload))
            })
            .collect();
        println!("| {workload} | {size} | {} | {} | {} |", ours("cpu"), ours("gpu"), theirs.join(" | "));
    }
    let cold: Vec<String> = peers
        .iter()
        .filter(|p| p.workload.ends_with("epoch"))
        .map(|p| format!("{} {}", p.library, human(p.cold_seconds)))
        .collect();
    if !cold.is_empty() {
        println!("\nFirst epoch, compilation included: {}.", cold.join(", "));
    }
}

/// A horizontal bar per workload: how many times faster the GPU is than
/// the CPU (log scale; bars left of 1× mean the CPU is faster).
fn chart(records: &[Record], path: &PathBuf, gpu: Option<&Device>) -> Result<()> {
    let rows: Vec<(String, f64)> = pairs(records)
        .into_iter()
        .filter_map(|(c, g)| g.map(|g| (format!("{} {}", c.workload, c.size), c.seconds / g.seconds)))
        .collect();
    let fail = |e: &dyn std::fmt::Display| wgrad::Error::Mismatch(format!("{}: {e}", path.display()));
    let height = 120 + 34 * rows.len().max(1) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let title = match gpu {
        Some(g) => format!("GPU ({}) vs CPU: speed-up", g.info().name),
        None => "no GPU measured".into(),
    };
    let (lo, hi) = rows.iter().fold((0.5f64, 2.0f64), |(lo, hi), &(_, s)| (lo.min(s / 2.0), hi.max(s * 2.0)));
    let n = rows.len();
    // Row i is drawn at the top when i = 0.
    let y_of = |i: usize| (n - 1 - i) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(290)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n.max(1) as f64)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("GPU speed-up over the CPU (×, log scale; left of 1× the CPU is faster)")
        .y_labels(2 * n + 1)
        .y_label_formatter(&|v| {
            let k = v - 0.5;
            if (k - k.round()).abs() < 1e-6 && k >= 0.0 && (k.round() as usize) < n {
                rows[n - 1 - k.round() as usize].0.clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, &(_, s))| {
            let color = if s >= 1.0 { RGBColor(46, 125, 50) } else { RGBColor(198, 40, 40) };
            let (a, b) = if s >= 1.0 { (1.0, s) } else { (s, 1.0) };
            Rectangle::new([(a, y_of(i) + 0.15), (b, y_of(i) + 0.85)], color.mix(0.8).filled())
        }))
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, &(_, s))| {
            let x = if s >= 1.0 { s * 1.05 } else { s / 1.05 };
            let anchor = if s >= 1.0 { HPos::Left } else { HPos::Right };
            let style = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(anchor, VPos::Center));
            let label = if s < 0.1 { format!("{s:.3}×") } else { format!("{s:.2}×") };
            Text::new(label, (x, y_of(i) + 0.5), style)
        }))
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(1.0, 0.0), (1.0, n as f64)], BLACK.stroke_width(2))))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
