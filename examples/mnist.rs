//! The seed lesson's Keras model, trained on MNIST:
//!
//!     Flatten(28×28) → Dense(128, relu) → Dropout(0.2) → Dense(10, softmax)
//!     Adam(1e-3), sparse categorical cross-entropy, batch 32, 5 epochs,
//!     validation_split 0.1
//!
//! The softmax is folded into the loss (cross-entropy from logits), which is
//! the same function computed without the underflow. After training it
//! saves the model as safetensors (PyTorch `state_dict` names), reloads it
//! into a fresh model and checks that it predicts exactly the same.
//!
//!     cargo run --release --example mnist -- --device gpu --epochs 5
//!
//! The last line printed is `test accuracy: 0.XXXX`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use wgrad::nn::{self, Module};
use wgrad::optim::Adam;
use wgrad::train::{FitConfig, evaluate, fit, predict};
use wgrad::{Device, data::mnist, io};

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
#[command(about = "Train the seed's MNIST model on the CPU or a GPU")]
struct Args {
    #[arg(long, value_enum, default_value = "best")]
    device: Choice,
    #[arg(long, default_value_t = 5, value_parser = positive)]
    epochs: usize,
    #[arg(long, default_value_t = 32, value_parser = positive)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3, value_parser = rate)]
    lr: f32,
    /// Hidden layer widths, e.g. 128 or 128,64 (each followed by ReLU and dropout)
    #[arg(long, default_value = "128", value_delimiter = ',', value_parser = positive)]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 0.2, value_parser = fraction)]
    dropout: f32,
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
}

fn model(hidden: &[usize], dropout: f32, device: &Device) -> nn::Sequential {
    let mut m = nn::Sequential::new().add(nn::Flatten);
    let mut width = 28 * 28;
    for &h in hidden {
        m = m.add(nn::Linear::new(width, h, device)).add(nn::ReLU).add(nn::Dropout::new(dropout));
        width = h;
    }
    m.add(nn::Linear::new(width, 10, device))
}

fn run(args: Args) -> wgrad::Result<()> {
    let device = match args.device {
        Choice::Cpu => Device::Cpu,
        Choice::Gpu => Device::gpu()?,
        Choice::Best => Device::best(),
    };
    println!("device: {}", device.info());
    let data = mnist::load(&args.data)?;
    println!("data: {} training and {} test digits from {}", data.train.len(), data.test.len(), args.data.display());
    wgrad::manual_seed(args.seed);
    let net = model(&args.hidden, args.dropout, &device);
    println!("model: {}", net.describe());

    if let Some(path) = &args.load {
        io::load(&net, path)?;
        let m = evaluate(&net, &data.test, 256)?;
        println!("test loss: {:.4}", m.loss);
        println!("test accuracy: {:.4}", m.accuracy());
        return Ok(());
    }

    let mut opt = Adam::new(net.parameters(), args.lr);
    let config = FitConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        validation_split: args.validation_split,
        shuffle_seed: args.seed,
        ..FitConfig::default()
    };
    let started = Instant::now();
    fit(&net, &mut opt, &data.train, &config)?;
    println!("trained in {:.1}s", started.elapsed().as_secs_f64());

    let test = evaluate(&net, &data.test, 256)?;
    println!("test loss: {:.4}", test.loss);
    io::save(&net, &args.save, io::Dtype::F32)?;
    let reloaded = model(&args.hidden, args.dropout, &device);
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
    println!("test accuracy: {:.4}", test.accuracy());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
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
        ] {
            let args = std::iter::once("mnist").chain(flags.iter().copied());
            let err = Args::try_parse_from(args).err().unwrap_or_else(|| panic!("{flags:?} was accepted"));
            assert_eq!(err.exit_code(), 2, "{flags:?}");
            use clap::error::ErrorKind::{InvalidValue, ValueValidation};
            assert!(matches!(err.kind(), ValueValidation | InvalidValue), "{flags:?}: {err}");
        }
        let ok = Args::try_parse_from(["mnist", "--dropout", "0", "--validation-split", "0", "--hidden", "16,8"]);
        assert!(ok.is_ok());
    }
}
