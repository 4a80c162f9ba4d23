//! The seed lesson's Keras model, trained on MNIST (`--model mlp`, the
//! default):
//!
//!     Flatten(28×28) → Dense(128, relu) → Dropout(0.2) → Dense(10, softmax)
//!     Adam(1e-3), sparse categorical cross-entropy, batch 32, 5 epochs,
//!     validation_split 0.1
//!
//! `--model cnn` trains Keras's "simple MNIST convnet" instead (batch 128):
//!
//!     Conv(32, 3×3, relu) → MaxPool(2) → Conv(64, 3×3, relu) → MaxPool(2)
//!     → Flatten → Dropout(0.5) → Dense(10, softmax)
//!
//! and `--model resnet` a small residual network with batch normalisation:
//! a 3×3 stem, three residual blocks (one halving the resolution through a
//! strided convolution with a 1×1 projection shortcut), global average
//! pooling and a linear classifier.
//!
//! The softmax is folded into the loss (cross-entropy from logits), which is
//! the same function computed without the underflow. After training it
//! saves the model as safetensors (PyTorch `state_dict` names), reloads it
//! into a fresh model and checks that it predicts exactly the same.
//!
//!     cargo run --release --example mnist -- --device gpu --epochs 5
//!     cargo run --release --example mnist -- --model cnn
//!
//! The last line printed is `test accuracy: 0.XXXX`.
//!
//! Data-parallel over MPI (see `docs/distributed.md`): the global batch is
//! split over the ranks, gradients are averaged every step, rank 0 prints
//! and saves:
//!
//!     cargo build --release --features mpi --example mnist
//!     mpirun -np 2 target/release/examples/mnist --distributed [--verbose]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use wgrad::nn::{self, Module};
use wgrad::optim::Adam;
use wgrad::train::{FitConfig, evaluate, fit, predict};
use wgrad::{Conv2dOptions, Device, data::mnist, io};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Arch {
    /// The seed's multi-layer perceptron
    Mlp,
    /// Keras's simple MNIST convnet
    Cnn,
    /// A small ResNet with batch normalisation
    Resnet,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Choice {
    Cpu,
    Gpu,
    /// A GPU if there is one
    Best,
}

// Every flag is checked before any work: a bad value is a one-line error
// and exit code 2, clap's convention.

/// A whole number of at least 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number above 0.
fn rate(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("must be a finite number above 0, not {v}")) }
}

/// A number in [0, 1).
fn fraction(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if (0.0..1.0).contains(&v) { Ok(v) } else { Err(format!("must be in [0, 1), not {v}")) }
}

#[derive(Parser)]
#[command(about = "Train the seed's MNIST model, or a convnet, on the CPU or a GPU")]
struct Args {
    #[arg(long, value_enum, default_value = "mlp")]
    model: Arch,
    #[arg(long, value_enum, default_value = "best")]
    device: Choice,
    #[arg(long, default_value_t = 5, value_parser = positive)]
    epochs: usize,
    /// Default: 32 for the MLP, 128 for the convnets
    #[arg(long, value_parser = positive)]
    batch_size: Option<usize>,
    #[arg(long, default_value_t = 1e-3, value_parser = rate)]
    lr: f32,
    /// The MLP's hidden layer widths, e.g. 128 or 128,64 (each followed by ReLU and dropout)
    /// (default 128; only for `--model mlp`)
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    hidden: Option<Vec<usize>>,
    /// Default: 0.2 for the MLP, 0.5 for the convnet (the ResNet has none)
    #[arg(long, value_parser = fraction)]
    dropout: Option<f32>,
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    validation_split: f32,
    /// A directory with the four standard MNIST files (raw or .gz)
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// Where to save the trained model
    #[arg(long, default_value = "mnist.safetensors")]
    save: PathBuf,
    /// Evaluate this saved model instead of training
    #[arg(long)]
    load: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// On a GPU: record each epoch's training step once and replay it
    /// (`FitConfig::capture`): the same values, less host time per step
    #[arg(long)]
    capture: bool,
    /// Data-parallel training over MPI (build with `--features mpi`, start
    /// with `mpirun -np N`): each rank trains on its share of every batch;
    /// rank 0 prints and saves
    #[arg(long)]
    distributed: bool,
    /// With --distributed: print the gradient all-reduce's time per step
    /// and how much of it the backward pass hides
    #[arg(long, requires = "distributed")]
    verbose: bool,
}

fn mlp(hidden: &[usize], dropout: f32, device: &Device) -> nn::Sequential {
    let mut m = nn::Sequential::new().add(nn::Flatten);
    let mut width = 28 * 28;
    for &h in hidden {
        m = m.add(nn::Linear::new(width, h, device)).add(nn::ReLU).add(nn::Dropout::new(dropout));
        width = h;
    }
    m.add(nn::Linear::new(width, 10, device))
}

/// Keras's "simple MNIST convnet" (34,826 parameters).
fn convnet(dropout: f32, device: &Device) -> nn::Sequential {
    nn::Sequential::new()
        .add(nn::Unflatten::new(1, [1, 28]))
        .add(nn::Conv2d::new(1, 32, 3, device))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Conv2d::new(32, 64, 3, device))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Flatten)
        .add(nn::Dropout::new(dropout))
        .add(nn::Linear::new(64 * 5 * 5, 10, device))
}

/// conv 3×3 → BN → ReLU → conv 3×3 → BN, the first conv with `stride`.
fn block(c_in: usize, c_out: usize, stride: usize, device: &Device) -> nn::Sequential {
    let conv = |i, o, s| {
        nn::Conv2d::with_options(i, o, 3, Conv2dOptions::default().stride(s).padding(1), device).without_bias()
    };
    nn::Sequential::new()
        .add(conv(c_in, c_out, stride))
        .add(nn::BatchNorm2d::new(c_out, device))
        .add(nn::ReLU)
        .add(conv(c_out, c_out, 1))
        .add(nn::BatchNorm2d::new(c_out, device))
}

/// A small ResNet: stem, three residual blocks, global average pooling.
fn resnet(device: &Device) -> nn::Sequential {
    let projection = nn::Sequential::new()
        .add(nn::Conv2d::with_options(16, 32, 1, Conv2dOptions::default().stride(2), device).without_bias())
        .add(nn::BatchNorm2d::new(32, device));
    nn::Sequential::new()
        .add(nn::Unflatten::new(1, [1, 28]))
        .add(nn::Conv2d::with_options(1, 16, 3, Conv2dOptions::default().padding(1), device).without_bias())
        .add(nn::BatchNorm2d::new(16, device))
        .add(nn::ReLU)
        .add(nn::MaxPool2d::new(2))
        .add(nn::Residual::new(block(16, 16, 1, device)))
        .add(nn::ReLU)
        .add(nn::Residual::with_shortcut(block(16, 32, 2, device), projection))
        .add(nn::ReLU)
        .add(nn::Residual::new(block(32, 32, 1, device)))
        .add(nn::ReLU)
        .add(nn::AdaptiveAvgPool2d::new(1))
        .add(nn::Flatten)
        .add(nn::Linear::new(32, 10, device))
}

fn model(args: &Args, device: &Device) -> nn::Sequential {
    match args.model {
        Arch::Mlp => mlp(args.hidden.as_deref().unwrap_or(&[128]), args.dropout.unwrap_or(0.2), device),
        Arch::Cnn => convnet(args.dropout.unwrap_or(0.5), device),
        Arch::Resnet => resnet(device),
    }
}

/// `println!` on rank 0 only (every process alone).
macro_rules! say {
    ($($t:tt)*) => { if wgrad::train::is_primary() { println!($($t)*) } };
}

/// The MPI job when `--distributed` (feature `mpi`).
#[cfg(feature = "mpi")]
type Job = Option<std::sync::Arc<wgrad::distributed::Distributed>>;
#[cfg(not(feature = "mpi"))]
type Job = Option<()>;

fn join_job(args: &Args) -> wgrad::Result<Job> {
    if !args.distributed {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let d = wgrad::distributed::Distributed::init()?;
        say!("distributed: {} ranks", d.world_size());
        Ok(Some(std::sync::Arc::new(d)))
    }
    #[cfg(not(feature = "mpi"))]
    Err(wgrad::Error::Distributed(
        "--distributed needs the mpi feature: cargo build --release --features mpi --example mnist".into(),
    ))
}

fn run(args: Args) -> wgrad::Result<()> {
    #[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
    let job = join_job(&args)?;
    let device = match args.device {
        Choice::Cpu => Device::Cpu,
        Choice::Gpu => Device::gpu()?,
        Choice::Best => Device::best(),
    };
    say!("device: {}", device.info());
    let data = mnist::load(&args.data).inspect_err(|_| {
        eprintln!(
            "(the four MNIST files, raw or .gz, are read from {}, relative to the current directory: run from \
             the repository root, or pass --data DIR)",
            args.data.display()
        )
    })?;
    say!("data: {} training and {} test digits from {}", data.train.len(), data.test.len(), args.data.display());
    wgrad::manual_seed(args.seed);
    let net = model(&args, &device);
    say!("model: {} ({} parameters)", net.describe(), net.num_parameters());

    if let Some(path) = &args.load {
        io::load(&net, path)?;
        let m = evaluate(&net, &data.test, 256)?;
        say!("test loss: {:.4}", m.loss);
        say!("test accuracy: {:.4}", m.accuracy());
        return Ok(());
    }

    #[cfg(feature = "mpi")]
    if let Some(d) = &job {
        // Same seed, so the same weights already; the broadcast makes it so
        // whatever the ranks' generators did.
        d.broadcast_parameters(&net)?;
        // Independent dropout masks on each rank (rank 0 keeps its stream).
        if d.rank() > 0 {
            wgrad::manual_seed(args.seed.wrapping_add(d.rank() as u64));
        }
    }
    let mut opt = Adam::new(net.parameters(), args.lr);
    let config = FitConfig {
        epochs: args.epochs,
        batch_size: args.batch_size.unwrap_or(if args.model == Arch::Mlp { 32 } else { 128 }),
        validation_split: args.validation_split,
        shuffle_seed: args.seed,
        capture: args.capture,
        #[cfg(feature = "mpi")]
        distributed: job.clone(),
        #[cfg(feature = "mpi")]
        distributed_stats: args.verbose,
        ..FitConfig::default()
    };
    let started = Instant::now();
    fit(&net, &mut opt, &data.train, &config)?;
    say!("trained in {:.1}s", started.elapsed().as_secs_f64());

    let test = evaluate(&net, &data.test, 256)?;
    say!("test loss: {:.4}", test.loss);
    if wgrad::train::is_primary() {
        io::save(&net, &args.save, io::Dtype::F32)?;
        let reloaded = model(&args, &device);
        io::load(&reloaded, &args.save)?;
        let same = predict(&net, &data.test, 256)? == predict(&reloaded, &data.test, 256)?;
        let again = evaluate(&reloaded, &data.test, 256)?;
        if !same || again.accuracy() != test.accuracy() {
            return Err(wgrad::Error::Mismatch(format!(
                "{}: the reloaded model scores {:.4}, the trained one {:.4}",
                args.save.display(),
                again.accuracy(),
                test.accuracy()
            )));
        }
        println!("saved {} and reloaded it: same predictions", args.save.display());
    }
    say!("test accuracy: {:.4}", test.accuracy());
    Ok(())
}

impl Args {
    /// Flags that would be silently ignored by the model chosen are usage
    /// errors too (exit code 2).
    fn check(&self) -> Result<(), clap::Error> {
        use clap::CommandFactory;
        let conflict = |msg: &str| Err(Args::command().error(clap::error::ErrorKind::ArgumentConflict, msg));
        if self.hidden.is_some() && self.model != Arch::Mlp {
            return conflict("--hidden sets the MLP's layers; the convnet and the ResNet have their own");
        }
        if self.dropout.is_some() && self.model == Arch::Resnet {
            return conflict("--dropout: the ResNet has no dropout layer");
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        e.exit();
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_are_usage_errors_before_any_work() {
        // Each panicked, or trained to accuracy 0.10 and exited 0, before.
        for flags in [
            &["--batch-size", "0"][..],
            &["--dropout", "1.5"],
            &["--validation-split", "1"],
            &["--lr", "nan"],
            &["--lr=-0.1"],
            &["--lr", "inf"],
            &["--epochs", "0"],
            &["--hidden", "128,0"],
            &["--device", "tpu"],
            &["--model", "vgg"],
        ] {
            let args = std::iter::once("mnist").chain(flags.iter().copied());
            let err = Args::try_parse_from(args).err().unwrap_or_else(|| panic!("{flags:?} was accepted"));
            assert_eq!(err.exit_code(), 2, "{flags:?}");
            use clap::error::ErrorKind::{InvalidValue, ValueValidation};
            assert!(matches!(err.kind(), ValueValidation | InvalidValue), "{flags:?}: {err}");
        }
        let ok = Args::try_parse_from(["mnist", "--dropout", "0", "--validation-split", "0", "--hidden", "16,8"]);
        assert!(ok.is_ok_and(|a| a.check().is_ok()));
        // Flags the chosen model would ignore.
        for flags in [&["--model", "cnn", "--hidden", "64"][..], &["--model", "resnet", "--dropout", "0.3"]] {
            let args = Args::try_parse_from(std::iter::once("mnist").chain(flags.iter().copied())).unwrap();
            let err = args.check().err().unwrap_or_else(|| panic!("{flags:?} was accepted"));
            assert_eq!(err.exit_code(), 2, "{flags:?}");
        }
        assert!(Args::try_parse_from(["mnist", "--verbose"]).is_err(), "--verbose without --distributed");
        assert!(Args::try_parse_from(["mnist", "--model", "cnn", "--dropout", "0.3"]).is_ok_and(|a| a.check().is_ok()));
        assert!(Args::try_parse_from(["mnist", "--model", "resnet"]).is_ok());
    }
}
