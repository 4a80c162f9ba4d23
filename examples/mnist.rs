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

#[derive(Parser)]
#[command(about = "Train the seed's MNIST model on the CPU or a GPU")]
struct Args {
    /// cpu, gpu, or best (a GPU if there is one)
    #[arg(long, default_value = "best")]
    device: String,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Hidden layer widths, e.g. 128 or 128,64 (each followed by ReLU and dropout)
    #[arg(long, default_value = "128", value_delimiter = ',')]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 0.2)]
    dropout: f32,
    #[arg(long, default_value_t = 0.1)]
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
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "gpu" => Device::gpu()?,
        "best" => Device::best(),
        other => return Err(wgrad::Error::Mismatch(format!("--device must be cpu, gpu or best, not {other:?}"))),
    };
    println!("device: {}", device.info());
    let data = mnist::load(&args.data)?;
    println!("data: {} training and {} test digits from {}", data.train.len(), data.test.len(), args.data.display());
    wgrad::manual_seed(args.seed);
    let mut net = model(&args.hidden, args.dropout, &device);
    println!("model: {}", net.describe());

    if let Some(path) = &args.load {
        io::load(&net, path)?;
        let m = evaluate(&mut net, &data.test, 256)?;
        println!("test loss: {:.4}", m.loss);
        println!("test accuracy: {:.4}", m.accuracy);
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
    fit(&mut net, &mut opt, &data.train, &config)?;
    println!("trained in {:.1}s", started.elapsed().as_secs_f64());

    let test = evaluate(&mut net, &data.test, 256)?;
    println!("test loss: {:.4}", test.loss);
    io::save(&net, &args.save, io::Dtype::F32)?;
    let mut reloaded = model(&args.hidden, args.dropout, &device);
    io::load(&reloaded, &args.save)?;
    let same = predict(&mut net, &data.test, 256)? == predict(&mut reloaded, &data.test, 256)?;
    let again = evaluate(&mut reloaded, &data.test, 256)?;
    if !same || again.accuracy != test.accuracy {
        return Err(wgrad::Error::Mismatch(format!(
            "{}: the reloaded model scores {:.4}, the trained one {:.4}",
            args.save.display(),
            again.accuracy,
            test.accuracy
        )));
    }
    println!("saved {} and reloaded it: same predictions", args.save.display());
    println!("test accuracy: {:.4}", test.accuracy);
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
