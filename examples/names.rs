//! A character-level language model of first names (makemore-style),
//! trained on `data/names/` (7,579 training and 843 validation names), on
//! the CPU or a GPU:
//!
//!     cargo run --release --example names -- --model transformer --device cpu
//!     cargo run --release --example names -- --model lstm --device gpu
//!
//! `--model transformer` (the default) is a GPT: token and position
//! embeddings, `--layers` (2) pre-norm causal blocks of `--d-model` (64)
//! features and `--heads` (4) heads, context 16; `--model lstm` an
//! embedding of 64, an LSTM of `--hidden` (128) and a linear head. Both
//! train with Adam (3e-3), batch 64, cross-entropy over the next character
//! with the padding ignored; each epoch prints `loss` and `val_loss` (per
//! character, as `benches/names_torch.py`, the PyTorch twin, prints them),
//! then 20 names are sampled. The unigram and bigram baselines on this
//! split are 2.87 and 2.44 nats.
//!
//! `--save` writes the model as safetensors with the twin's `state_dict`
//! names; `--load` samples from a saved model instead of training.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use wgrad::data::names::{self, Names};
use wgrad::models::{Gpt, GptConfig, LstmLm, generate};
use wgrad::nn::Module;
use wgrad::optim::Adam;
use wgrad::train::{FitConfig, evaluate_with, fit};
use wgrad::{Device, Generator, Sampling, io};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Arch {
    /// A GPT (pre-norm transformer blocks)
    Transformer,
    /// An LSTM
    Lstm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Choice {
    Cpu,
    Gpu,
    /// A GPU if there is one
    Best,
}

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

#[derive(Parser)]
#[command(about = "Train a character-level model of names on the CPU or a GPU, then sample from it")]
struct Args {
    #[arg(long, value_enum, default_value = "transformer")]
    model: Arch,
    #[arg(long, value_enum, default_value = "best")]
    device: Choice,
    #[arg(long, default_value_t = 10, value_parser = positive)]
    epochs: usize,
    #[arg(long, default_value_t = 64, value_parser = positive)]
    batch_size: usize,
    #[arg(long, default_value_t = 3e-3, value_parser = rate)]
    lr: f32,
    /// Layers: transformer blocks (default 2) or LSTM layers (default 1)
    #[arg(long, value_parser = positive)]
    layers: Option<usize>,
    /// The transformer's features, and the LSTM's embedding size
    #[arg(long, default_value_t = 64, value_parser = positive)]
    d_model: usize,
    #[arg(long, default_value_t = 4, value_parser = positive)]
    heads: usize,
    /// The LSTM's hidden size
    #[arg(long, default_value_t = 128, value_parser = positive)]
    hidden: usize,
    /// Names sampled at the end
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Sampling temperature
    #[arg(long, default_value_t = 1.0, value_parser = rate)]
    temperature: f32,
    /// A directory with train.txt and val.txt
    #[arg(long, default_value = "data/names")]
    data: PathBuf,
    /// Where to save the trained model
    #[arg(long, default_value = "names.safetensors")]
    save: PathBuf,
    /// Sample from this saved model instead of training
    #[arg(long)]
    load: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The context: a name of at most 15 characters, the markers around it.
const BLOCK: usize = 16;

fn model(args: &Args, vocab: usize, device: &Device) -> Result<Box<dyn Module>, String> {
    Ok(match args.model {
        Arch::Transformer => {
            if args.d_model % args.heads != 0 {
                return Err(format!("--heads {} does not divide --d-model {}", args.heads, args.d_model));
            }
            let layers = args.layers.unwrap_or(2);
            let config = GptConfig { vocab, context: BLOCK, d_model: args.d_model, heads: args.heads, layers };
            Box::new(Gpt::new(config, device))
        }
        Arch::Lstm => Box::new(LstmLm::new(vocab, args.d_model, args.hidden, args.layers.unwrap_or(1), device)),
    })
}

fn run(args: Args) -> wgrad::Result<()> {
    let device = match args.device {
        Choice::Cpu => Device::Cpu,
        Choice::Gpu => Device::gpu()?,
        Choice::Best => Device::best(),
    };
    println!("device: {}", device.info());
    let data = names::load(&args.data, BLOCK)?;
    println!(
        "data: {} training and {} validation names from {}, vocabulary {}",
        data.train.len(),
        data.validation.len(),
        args.data.display(),
        data.vocab.len()
    );
    wgrad::manual_seed(args.seed);
    let net =
        model(&args, data.vocab.len(), &device).map_err(|msg| wgrad::Error::InvalidArgument { op: "names", msg })?;
    println!("model: {} ({} parameters)", net.describe(), net.num_parameters());

    if let Some(path) = &args.load {
        io::load(&*net, path)?;
    } else {
        let val = evaluate_with(&*net, &data.validation, 1024, &names::loss(), &[])?;
        println!("untrained val_loss {:.4}", val.loss);
        let mut opt = Adam::new(net.parameters(), args.lr);
        let config = FitConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            validation_data: Some(data.validation.clone()),
            shuffle_seed: args.seed,
            loss: Some(names::loss()),
            metrics: Some(Vec::new()),
            ..FitConfig::default()
        };
        let started = Instant::now();
        let history = fit(&*net, &mut opt, &data.train, &config)?;
        let seconds = started.elapsed().as_secs_f64();
        let train_seconds: f64 = history.iter().map(|h| h.seconds).sum();
        println!(
            "trained in {seconds:.1}s ({:.0} characters/s of training)",
            (Names::targets(&data.train) * history.len()) as f64 / train_seconds
        );
        io::save(&*net, &args.save, io::Dtype::F32)?;
        println!("saved {}", args.save.display());
    }
    let mut g = Generator::new(args.seed);
    let options = Sampling { temperature: args.temperature, top_k: None };
    let samples = generate(&*net, args.samples, (0, 0), BLOCK, options, &mut g, &device)?;
    let samples: Vec<String> = samples.iter().map(|s| data.vocab.decode(s)).collect();
    println!("samples: {}", samples.join(" "));
    let val = evaluate_with(&*net, &data.validation, 1024, &names::loss(), &[])?;
    println!("val_loss: {:.4}", val.loss);
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
        for flags in [
            &["--batch-size", "0"][..],
            &["--lr", "nan"],
            &["--epochs", "0"],
            &["--temperature", "0"],
            &["--model", "rnn"],
            &["--layers", "0"],
        ] {
            let args = std::iter::once("names").chain(flags.iter().copied());
            let err = Args::try_parse_from(args).err().unwrap_or_else(|| panic!("{flags:?} was accepted"));
            assert_eq!(err.exit_code(), 2, "{flags:?}");
        }
        assert!(Args::try_parse_from(["names", "--model", "lstm", "--hidden", "32"]).is_ok());
        let args = Args::try_parse_from(["names", "--d-model", "10", "--heads", "4"]).unwrap();
        assert!(model(&args, 28, &Device::Cpu).err().unwrap().contains("does not divide"));
    }
}
