//! The training loop does what it says: schedules start from the
//! optimizer's own rate and leave it as found; regression and custom losses
//! train; callbacks stop early, restore the best weights and save
//! checkpoints; a NaN is never an improvement; evaluation leaves each mode
//! flag as it found it; and a run resumed from a checkpoint, schedule and
//! all, trains bit for bit as an uninterrupted one, on each device.

mod common;

use std::sync::{Arc, Mutex};
use wgrad::data::{Dataset, mnist};
use wgrad::io::load_checkpoint;
use wgrad::nn::{self, Module};
use wgrad::optim::{Adam, Cosine, LinearWarmup, Optimizer, ReduceOnPlateau, Sgd};
use wgrad::train::{
    Callback, Control, EarlyStopping, EpochStats, FitConfig, Hook, Loss, Metric, ModelCheckpoint, evaluate, fit,
    predict, predict_outputs,
};
use wgrad::{Device, Tensor, manual_seed};

fn quiet() -> FitConfig {
    FitConfig { verbose: false, ..FitConfig::default() }
}

/// 3 well-separated classes in 4 dimensions, 90 items, sorted by class.
fn blobs() -> Dataset {
    let mut g = wgrad::Generator::new(1);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for class in 0..3 {
        for _ in 0..30 {
            for d in 0..4 {
                x.push(if d == class { 2.0 } else { 0.0 } + 0.3 * g.normal());
            }
            y.push(class as f32);
        }
    }
    Dataset::new(x, y, &[4], 3)
}

fn classifier(dev: &Device) -> nn::Sequential {
    manual_seed(5);
    nn::Sequential::new()
        .add(nn::Linear::new(4, 16, dev))
        .add(nn::ReLU)
        .add(nn::Dropout::new(0.3))
        .add(nn::Linear::new(16, 3, dev))
}

#[test]
fn a_schedule_runs_every_step_from_the_optimizers_rate_and_leaves_it() {
    let model = classifier(&Device::Cpu);
    let mut opt = Sgd::new(model.parameters(), 0.2);
    let rates = Arc::new(Mutex::new(Vec::new()));
    let seen = rates.clone();
    let config = FitConfig {
        epochs: 3,
        batch_size: 30,
        schedule: Some(Box::new(LinearWarmup { steps: 5 })),
        callbacks: vec![Box::new(Hook::new(move |end| {
            seen.lock().unwrap().push(end.stats.lr);
            Ok(Control::Continue)
        }))],
        ..quiet()
    };
    fit(&model, &mut opt, &blobs(), &config).unwrap();
    // 3 steps an epoch: the last step of each epoch is step 3, 6, 9 → 0.2·3/5, then 0.2.
    let got = rates.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    assert!((got[0] - 0.12).abs() < 1e-6 && got[1] == 0.2 && got[2] == 0.2, "{got:?}");
    assert_eq!(opt.learning_rate(), 0.2, "the schedule's rate leaked out of fit");
    // A second fit with cosine annealing starts from 0.2 again: its last of
    // 3 steps is 2/3 of the way, 0.2 · ½(1 + cos(2π/3)) = 0.05.
    let config = FitConfig { epochs: 1, schedule: Some(Box::new(Cosine { warmup: 0, min_lr: 0.0 })), ..quiet() };
    let h = fit(&model, &mut opt, &blobs(), &config).unwrap();
    assert!((h[0].lr - 0.05).abs() < 1e-6, "{}", h[0].lr);
    assert_eq!(opt.learning_rate(), 0.2);
    // Reduce-on-plateau with a rate of 0 never improves, so it reduces.
    let mut still = Sgd::new(model.parameters(), 0.0);
    let config = FitConfig { epochs: 4, schedule: Some(Box::new(ReduceOnPlateau::with(0.5, 0))), ..quiet() };
    fit(&model, &mut still, &blobs(), &config).unwrap();
}

fn regression_and_custom_losses_train(dev: &Device) {
    // y = (x0 - 2·x1, x0 + x1): two outputs per item.
    let mut g = wgrad::Generator::new(2);
    let xs: Vec<f32> = (0..128 * 2).map(|_| g.uniform() * 2.0 - 1.0).collect();
    let ys: Vec<f32> = xs.chunks(2).flat_map(|x| [x[0] - 2.0 * x[1], x[0] + x[1]]).collect();
    let data = Dataset::regression(xs, ys, &[2], &[2]);
    assert_eq!(data.classes(), None);
    manual_seed(1);
    let model = nn::Linear::new(2, 2, dev);
    let mut opt = Adam::new(model.parameters(), 0.05);
    let h = fit(&model, &mut opt, &data, &FitConfig { epochs: 30, batch_size: 16, ..quiet() }).unwrap();
    let last = h.last().unwrap();
    assert!(last.train.get("mae").unwrap() < 0.05, "{last:?}");
    assert_eq!(predict_outputs(&model, &data, 50).unwrap().dims(), &[128, 2]);
    let m = evaluate(&model, &data, 32).unwrap();
    assert!(m.loss < 0.01 && m.get("mae").unwrap() < 0.05, "{m:?}");
    // A custom loss: the mean fourth power of the error.
    let quartic = Loss::Custom(Arc::new(|out: &Tensor, y: &Tensor| (out - y).sqr().sqr().mean()));
    let config = FitConfig { epochs: 2, loss: Some(quartic), metrics: Some(vec![Metric::Mse, Metric::Mae]), ..quiet() };
    let h = fit(&model, &mut opt, &data, &config).unwrap();
    assert!(h[1].train.get("mse").is_some() && h[1].train.get("mae").is_some());
}
test_device!(regression_and_custom_losses_train);

#[test]
fn top_k_accuracy_and_shuffled_validation() {
    let data = blobs();
    // The last 10% of class-sorted data holds one class; a random split all three.
    let model = classifier(&Device::Cpu);
    let mut opt = Adam::new(model.parameters(), 0.01);
    let config = FitConfig {
        epochs: 2,
        validation_split: 0.2,
        shuffle_before_split: true,
        metrics: Some(vec![Metric::Accuracy, Metric::TopK(2)]),
        ..quiet()
    };
    let h = fit(&model, &mut opt, &data, &config).unwrap();
    let v = h[1].validation.as_ref().unwrap();
    assert!(v.get("top2_accuracy").unwrap() >= v.accuracy());
    let (rest, held) = data.split_shuffled(0.2, &mut wgrad::Generator::new(3));
    assert_eq!((rest.len(), held.len()), (72, 18));
    let classes: std::collections::HashSet<u32> = held.labels().iter().map(|&l| l as u32).collect();
    assert_eq!(classes.len(), 3);
}

#[test]
fn early_stopping_stops_and_restores_the_best_weights() {
    let model = classifier(&Device::Cpu);
    // A rate so high the loss climbs after the first epoch or two.
    let mut opt = Sgd::new(model.parameters(), 3.0);
    let best = Arc::new(Mutex::new((f32::INFINITY, Vec::new())));
    let keep = best.clone();
    let config = FitConfig {
        epochs: 30,
        validation_split: 0.3,
        shuffle_before_split: true,
        callbacks: vec![
            Box::new(Hook::new(move |end| {
                let v = end.stats.get("val_loss").unwrap();
                let mut b = keep.lock().unwrap();
                if v < b.0 {
                    *b = (v, end.model.parameters().iter().map(|p| p.to_vec().unwrap()).collect());
                }
                Ok(Control::Continue)
            })),
            Box::new(EarlyStopping::new("val_loss", 2).restoring_best()),
        ],
        ..quiet()
    };
    let h = fit(&model, &mut opt, &blobs(), &config).unwrap();
    assert!(h.len() < 30, "early stopping never stopped");
    let after: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    assert_eq!(after, best.lock().unwrap().1, "the best epoch's weights were not restored");
    // Monitoring something training does not report is an error.
    let config = FitConfig { epochs: 1, callbacks: vec![Box::new(EarlyStopping::new("val_mae", 1))], ..quiet() };
    assert!(fit(&model, &mut opt, &blobs(), &config).is_err());
}

fn early_stopping_restores_batch_norm_running_statistics(dev: &Device) {
    manual_seed(5);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(4, 16, dev))
        .add(nn::BatchNorm1d::new(16, dev))
        .add(nn::ReLU)
        .add(nn::Linear::new(16, 3, dev));
    let state = |m: &dyn Module| -> Vec<(String, Vec<f32>)> {
        m.state_dict().into_iter().map(|(n, t)| (n, t.to_vec().unwrap())).collect()
    };
    let mut opt = Adam::new(model.parameters(), 0.01);
    // Validation accuracy soon reaches its best and stays: training stops 2
    // epochs later, while the running statistics still move.
    // (the best val_accuracy, its epoch, the state then, the last epoch's state)
    let seen = Arc::new(Mutex::new((f32::NEG_INFINITY, 0, Vec::new(), Vec::new())));
    let keep = seen.clone();
    let config = FitConfig {
        epochs: 30,
        batch_size: 16,
        validation_split: 0.3,
        shuffle_before_split: true,
        callbacks: vec![
            Box::new(Hook::new(move |end| {
                let v = end.stats.get("val_accuracy").unwrap();
                let mut s = keep.lock().unwrap();
                s.3 = state(end.model);
                if v > s.0 {
                    (s.0, s.1, s.2) = (v, end.stats.epoch, s.3.clone());
                }
                Ok(Control::Continue)
            })),
            Box::new(EarlyStopping::new("val_accuracy", 2).restoring_best()),
        ],
        ..quiet()
    };
    let h = fit(&model, &mut opt, &blobs(), &config).unwrap();
    let (_, best_epoch, best, last) = &*seen.lock().unwrap();
    assert_eq!(h.len(), best_epoch + 2, "early stopping did not stop 2 epochs after the best");
    let running_mean = |s: &[(String, Vec<f32>)]| s.iter().find(|(n, _)| n == "1.running_mean").unwrap().1.clone();
    assert_ne!(running_mean(last), running_mean(best), "nothing to restore: the statistics did not move");
    let after = state(&model);
    assert_eq!(after.len(), best.len());
    for ((name, got), (_, want)) in after.iter().zip(best) {
        assert_eq!(got, want, "{name} is not the best epoch's");
    }
}
test_device!(early_stopping_restores_batch_norm_running_statistics);

#[test]
fn evaluation_restores_each_mode_flag_as_it_was() {
    let dev = Device::Cpu;
    manual_seed(5);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(4, 16, &dev))
        .add(nn::BatchNorm1d::new(16, &dev))
        .add(nn::ReLU)
        .add(nn::Dropout::new(0.3))
        .add(nn::Linear::new(16, 3, &dev));
    let modes = |m: &nn::Sequential| (m[1].is_training(), m[3].is_training());
    let running_mean = |m: &nn::Sequential| m[1].named_buffers()[0].1.to_vec().unwrap();
    let data = blobs();
    // Fine-tuning: the batch norm frozen in evaluation mode, dropout on.
    model.train();
    model[1].eval();
    evaluate(&model, &data, 32).unwrap();
    assert_eq!(modes(&model), (false, true), "after evaluate");
    predict(&model, &data, 32).unwrap();
    assert_eq!(modes(&model), (false, true), "after predict");
    predict_outputs(&model, &data, 32).unwrap();
    assert_eq!(modes(&model), (false, true), "after predict_outputs");
    // fit trains and validates so: the frozen statistics do not move.
    let before = running_mean(&model);
    let mut opt = Adam::new(model.parameters(), 0.01);
    let config = FitConfig { epochs: 2, validation_split: 0.2, shuffle_before_split: true, ..quiet() };
    fit(&model, &mut opt, &data, &config).unwrap();
    assert_eq!(modes(&model), (false, true), "after fit");
    assert_eq!(running_mean(&model), before, "fit trained the frozen batch norm");
    // A model left all in evaluation mode trains in training mode.
    model.eval();
    fit(&model, &mut opt, &data, &config).unwrap();
    assert_eq!(modes(&model), (true, true));
    assert_ne!(running_mean(&model), before);
}

#[test]
fn a_nan_loss_is_never_an_improvement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("best.safetensors");
    let model = classifier(&Device::Cpu);
    let mut opt = Sgd::new(model.parameters(), 0.1);
    // A NaN loss whose gradients are 0: the weights do not move.
    let nan = Loss::Custom(Arc::new(|out: &Tensor, _: &Tensor| out.sum().mul_scalar(0.0).add_scalar(f32::NAN)));
    let config = FitConfig {
        epochs: 10,
        loss: Some(nan),
        schedule: Some(Box::new(ReduceOnPlateau::with(0.5, 0))),
        callbacks: vec![
            Box::new(EarlyStopping::new("loss", 2).restoring_best()),
            Box::new(ModelCheckpoint::best_only(&path, "loss")),
        ],
        ..quiet()
    };
    let h = fit(&model, &mut opt, &blobs(), &config).unwrap();
    assert!(h.iter().all(|s| s.train.loss.is_nan()));
    assert_eq!(h.len(), 2, "early stopping counted a NaN loss as an improvement");
    assert!(!path.exists(), "a NaN epoch was saved as the best");
    // Reduce-on-plateau (patience 0) halves the rate after every NaN epoch.
    assert_eq!((h[0].lr, h[1].lr), (0.1, 0.05));
}

fn a_resumed_run_trains_bit_for_bit_as_an_uninterrupted_one(dev: &Device) {
    let data = mnist::load("data/mnist").unwrap();
    let small = data.test;
    let model = || {
        nn::Sequential::new()
            .add(nn::Flatten)
            .add(nn::Linear::new(784, 32, dev))
            .add(nn::ReLU)
            .add(nn::Dropout::new(0.2))
            .add(nn::Linear::new(32, 10, dev))
    };
    // A warm-up into the second epoch (of 32 steps), then cosine annealing
    // to the end of the fourth: the resumed run must continue it from the
    // step, and the rate, the interrupted one was at.
    let config = |initial_epoch, epochs, callbacks: Vec<Box<dyn Callback>>| FitConfig {
        epochs,
        initial_epoch,
        batch_size: 64,
        shuffle_seed: 9,
        schedule: Some(Box::new(Cosine { warmup: 40, min_lr: 1e-4 })),
        callbacks,
        ..quiet()
    };
    let weights =
        |m: &nn::Sequential| -> Vec<Vec<f32>> { m.parameters().iter().map(|p| p.to_vec().unwrap()).collect() };
    let rates = |h: &[EpochStats]| -> Vec<f32> { h.iter().map(|s| s.lr).collect() };

    manual_seed(4);
    let straight = model();
    let mut opt = Adam::new(straight.parameters(), 2e-3);
    let whole = fit(&straight, &mut opt, &small, &config(0, 4, vec![])).unwrap();

    // Configured for 4 epochs, stopped by a hook after the second, and
    // checkpointed by ModelCheckpoint as it trains.
    manual_seed(4);
    let first = model();
    let mut opt = Adam::new(first.parameters(), 2e-3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let stop = Hook::new(|end| Ok(if end.stats.epoch == 2 { Control::Stop } else { Control::Continue }));
    let callbacks: Vec<Box<dyn Callback>> = vec![Box::new(ModelCheckpoint::new(&path)), Box::new(stop)];
    let interrupted = fit(&first, &mut opt, &small, &config(0, 4, callbacks)).unwrap();
    assert_eq!(rates(&interrupted), rates(&whole[..2]));

    // A fresh process, as far as wgrad can tell: other weights, other seed.
    manual_seed(77);
    let resumed = model();
    let mut opt = Adam::new(resumed.parameters(), 1.0);
    let ck = load_checkpoint(&path, &resumed, &mut opt).unwrap();
    assert_eq!((ck.epoch, opt.learning_rate()), (2, 2e-3), "the checkpoint holds the schedule's rate");
    let rest = fit(&resumed, &mut opt, &small, &config(ck.epoch, 4, vec![])).unwrap();
    assert_eq!(rates(&rest), rates(&whole[2..]), "the resumed run scheduled other rates");
    assert_eq!(weights(&resumed), weights(&straight), "resuming changed the trajectory");
    assert_eq!(opt.learning_rate(), 2e-3);
}
test_device!(a_resumed_run_trains_bit_for_bit_as_an_uninterrupted_one);

#[test]
fn checkpoints_refuse_what_does_not_fit_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("best.safetensors");
    let model = classifier(&Device::Cpu);
    let mut opt = Adam::new(model.parameters(), 0.01);
    let config = FitConfig {
        epochs: 3,
        validation_split: 0.3,
        shuffle_before_split: true,
        callbacks: vec![Box::new(ModelCheckpoint::best_only(&path, "val_accuracy"))],
        ..quiet()
    };
    fit(&model, &mut opt, &blobs(), &config).unwrap();
    assert!(path.exists());
    // Into a model of another shape: an error, and nothing changed.
    let other = nn::Sequential::new().add(nn::Linear::new(4, 8, &Device::Cpu));
    let before: Vec<Vec<f32>> = other.parameters().iter().map(|p| p.to_vec().unwrap()).collect();
    let mut other_opt = Adam::new(other.parameters(), 0.5);
    let err = load_checkpoint(&path, &other, &mut other_opt).unwrap_err().to_string();
    assert!(err.contains("model.0.weight"), "{err}");
    assert_eq!(other_opt.learning_rate(), 0.5);
    assert_eq!(before, other.parameters().iter().map(|p| p.to_vec().unwrap()).collect::<Vec<_>>());
    // A plain model file is not a checkpoint.
    let plain = dir.path().join("model.safetensors");
    wgrad::io::save(&model, &plain, wgrad::io::Dtype::F32).unwrap();
    assert!(load_checkpoint(&plain, &model, &mut opt).unwrap_err().to_string().contains("not a wgrad checkpoint"));
    // An optimizer of another kind does not take Adam's state.
    let mut sgd = Sgd::new(model.parameters(), 0.1);
    assert!(load_checkpoint(&path, &model, &mut sgd).is_err());
}

/// Accuracy and top-k accuracy are fractions of predictions: a language
/// model's `[batch, positions, classes]` outputs against `[batch,
/// positions]` targets count one prediction per position (not per row of
/// the batch), and `[batch, 1]` labels of `[batch, classes]` outputs one per
/// row (not broadcast against each other), on every device.
#[test]
fn accuracy_counts_one_prediction_per_position_and_per_label() {
    use wgrad::train::evaluate_with;
    let (items, positions, classes) = (12, 3, 4);
    let mut g = wgrad::Generator::new(4);
    let scores: Vec<f32> = (0..items * positions * classes).map(|_| (4.0 * g.uniform()).floor()).collect();
    let x = Tensor::from_vec(scores.clone(), [items, positions, classes], &Device::Cpu).unwrap();
    let best = x.argmax(-1, false).to_vec().unwrap();
    let labels: Vec<f32> =
        best.iter().enumerate().map(|(i, &b)| if i % 4 == 0 { (b + 1.0) % 4.0 } else { b }).collect();
    let hits = best.iter().zip(&labels).filter(|(b, l)| b == l).count() as f32;
    let second: Vec<f32> = x.argsort(-1, true).narrow(-1, 0, 2).to_vec().unwrap();
    let top2 =
        labels.iter().enumerate().filter(|&(i, l)| second[2 * i] == *l || second[2 * i + 1] == *l).count() as f32;
    let sequences = Dataset::regression(scores.clone(), labels.clone(), &[positions, classes], &[positions]);
    // The first position of each item alone, its label as [1].
    let firsts: Vec<f32> = scores.chunks(positions * classes).flat_map(|c| c[..classes].to_vec()).collect();
    let first_labels: Vec<f32> = labels.iter().step_by(positions).copied().collect();
    let first_hits = best.iter().zip(&labels).step_by(positions).filter(|(b, l)| b == l).count() as f32;
    let rows = Dataset::regression(firsts, first_labels, &[classes], &[1]);
    let loss = Loss::CrossEntropyWith { label_smoothing: 0.0, weight: None, ignore_index: None };
    let metrics = [Metric::Accuracy, Metric::TopK(2)];
    let devices: Vec<Device> = [Some(Device::Cpu), common::gpu()].into_iter().flatten().collect();
    for dev in devices {
        let identity = identity(classes, &dev);
        let m = evaluate_with(&identity, &sequences, 5, &loss, &metrics).unwrap();
        let n = (items * positions) as f32;
        assert_eq!(m.accuracy(), hits / n, "{dev:?}: sequences");
        assert_eq!(m.get("top2_accuracy"), Some(top2 / n), "{dev:?}: sequences");
        let flat: Loss = Loss::Custom(Arc::new(|o: &Tensor, t: &Tensor| o.cross_entropy(&t.reshape([t.elem_count()]))));
        let m = evaluate_with(&identity, &rows, 5, &flat, &[Metric::Accuracy]).unwrap();
        assert_eq!(m.accuracy(), first_hits / items as f32, "{dev:?}: [batch, 1] labels");
    }
}

/// A linear layer that passes its `classes` inputs through unchanged (a
/// model with parameters, so that it lives on `dev`).
fn identity(classes: usize, dev: &Device) -> nn::Linear {
    let layer = nn::Linear::new(classes, classes, dev);
    let eye: Vec<f32> = (0..classes * classes).map(|i| f32::from(i % (classes + 1) == 0)).collect();
    layer.parameters()[0].assign(&Tensor::from_vec(eye, [classes, classes], dev).unwrap());
    layer.parameters()[1].assign(&Tensor::zeros([classes], dev));
    layer
}

/// With class weights and an ignore index, the reported loss is the whole
/// set's weighted mean over the kept targets, `Σ w[tᵢ]·lᵢ / Σ w[tᵢ]`
/// (PyTorch's over one batch of everything): the same at every batch
/// size, and a batch of padding alone neither makes it NaN nor counts.
/// Accuracy and top-k leave the ignored targets out, also when the ignored
/// label is a class the model predicts.
#[test]
fn weighted_and_ignored_targets_report_the_whole_sets_mean_at_any_batch_size() {
    use wgrad::train::evaluate_with;
    let (items, classes) = (11, 3);
    let mut g = wgrad::Generator::new(8);
    let logits: Vec<f32> = (0..items * classes).map(|_| 2.0 * g.normal()).collect();
    let weights = vec![0.5f32, 2.0, 1.5];
    let best: Vec<usize> =
        logits.chunks(classes).map(|r| (0..classes).fold(0, |b, c| if r[c] > r[b] { c } else { b })).collect();
    for ignore in [-100i64, 2] {
        // Items 0 and 1 (a whole batch at batch size 2) are padding.
        let labels: Vec<f32> =
            (0..items).map(|i| if i < 2 || i == 7 { ignore as f32 } else { ((i * 7) % classes) as f32 }).collect();
        let (mut num, mut den, mut hits, mut top2, mut kept) = (0.0f64, 0.0f64, 0.0, 0.0, 0.0);
        let mut plain_sum = 0.0f64;
        for (i, row) in logits.chunks(classes).enumerate() {
            let t = labels[i];
            if t == ignore as f32 {
                continue;
            }
            let t = t as usize;
            let lse = row.iter().map(|&z| (z as f64).exp()).sum::<f64>().ln();
            let w = weights[t] as f64;
            num += w * (lse - row[t] as f64);
            plain_sum += lse - row[t] as f64;
            den += w;
            kept += 1.0;
            hits += f32::from(best[i] == t);
            let second = (0..classes)
                .filter(|&c| c != best[i])
                .fold(usize::MAX, |b, c| if b == usize::MAX || row[c] > row[b] { c } else { b });
            top2 += f32::from(best[i] == t || second == t);
        }
        let expected = (num / den) as f32;
        let data = Dataset::regression(logits.clone(), labels, &[classes], &[]);
        let loss =
            Loss::CrossEntropyWith { label_smoothing: 0.0, weight: Some(weights.clone()), ignore_index: Some(ignore) };
        let unweighted = Loss::CrossEntropyWith { label_smoothing: 0.0, weight: None, ignore_index: Some(ignore) };
        let devices: Vec<Device> = [Some(Device::Cpu), common::gpu()].into_iter().flatten().collect();
        for dev in &devices {
            let model = identity(classes, dev);
            for batch in [1, 2, 4, items] {
                let m = evaluate_with(&model, &data, batch, &loss, &[Metric::Accuracy, Metric::TopK(2)]).unwrap();
                let what = format!("{dev:?}, ignore {ignore}, batch {batch}");
                assert!((m.loss - expected).abs() < 1e-5 * expected.abs().max(1.0), "{what}: {} vs {expected}", m.loss);
                assert!((m.accuracy() - hits / kept).abs() < 1e-6, "{what}: accuracy {}", m.accuracy());
                assert!((m.get("top2_accuracy").unwrap() - top2 / kept).abs() < 1e-6, "{what}: top 2");
                // Without weights too: the mean over the kept targets.
                let plain = evaluate_with(&model, &data, batch, &unweighted, &[]).unwrap().loss;
                let want = (plain_sum / kept as f64) as f32;
                assert!((plain - want).abs() < 1e-5 * want.max(1.0), "{what}: unweighted {plain} vs {want}");
            }
        }
    }
}

/// Accuracy reads the targets as Keras's "accuracy" does: a single output
/// per row is a binary prediction (logits above 0 with BCE-with-logits,
/// probabilities above 0.5 otherwise), targets of the outputs' shape are
/// one-hot (arg-max against arg-max) or, with BCE, one binary target per
/// output.
#[test]
fn accuracy_reads_binary_one_hot_and_multi_label_targets() {
    use wgrad::train::evaluate_with;
    let devices: Vec<Device> = [Some(Device::Cpu), common::gpu()].into_iter().flatten().collect();
    for dev in &devices {
        // Binary: one logit per row against 0/1 labels.
        let scores = vec![2.0f32, -1.0, 0.3, -0.2, 0.7, -3.0];
        let labels = vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0];
        // Right: rows 0, 1, 3, 4 (logit > 0 ⇔ label 1).
        let data = Dataset::regression(scores.clone(), labels.clone(), &[1], &[]);
        let m = evaluate_with(&identity(1, dev), &data, 4, &Loss::BceWithLogits, &[Metric::Accuracy]).unwrap();
        assert_eq!(m.accuracy(), 4.0 / 6.0, "{dev:?}: binary logits");
        // Probabilities (another loss): the cut is 0.5, so 0.3 and 0.7 differ.
        let m = evaluate_with(&identity(1, dev), &data, 4, &Loss::Mse, &[Metric::Accuracy]).unwrap();
        // scores > 0.5: rows 0, 4 → right: 0, 1, 2, 3, 4 (row 2: 0.3 → 0 = label 0).
        assert_eq!(m.accuracy(), 5.0 / 6.0, "{dev:?}: binary probabilities");
        // One-hot targets of [N, 3] outputs: arg-max against arg-max.
        let outs = vec![0.1f32, 0.8, 0.1, 0.6, 0.3, 0.1, 0.2, 0.2, 0.6, 0.3, 0.4, 0.25];
        let onehot = vec![0.0f32, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let data = Dataset::regression(outs.clone(), onehot, &[3], &[3]);
        let metrics = [Metric::Accuracy, Metric::TopK(2)];
        let m = evaluate_with(&identity(3, dev), &data, 3, &Loss::Mse, &metrics).unwrap();
        // Rows 0 and 2 right; row 1's label (1) and row 3's (0) are second.
        assert_eq!(m.accuracy(), 0.5, "{dev:?}: one-hot");
        assert_eq!(m.get("top2_accuracy"), Some(1.0), "{dev:?}: one-hot top 2");
        // Multi-label targets with BCE: every output is a prediction.
        let logits: Vec<f32> = outs.iter().map(|p| p - 0.5).collect();
        let multi = vec![0.0f32, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let data = Dataset::regression(logits, multi, &[3], &[3]);
        let m = evaluate_with(&identity(3, dev), &data, 3, &Loss::BceWithLogits, &[Metric::Accuracy]).unwrap();
        // Wrong: row 1's second output (0.3 → 0, target 1), row 2's last
        // (0.6 → 1, target 0) and row 3's last (0.25 → 0, target 1).
        assert_eq!(m.accuracy(), 9.0 / 12.0, "{dev:?}: multi-label");
    }
}

/// A validation split asked for is never silently empty (Keras's rule): a
/// small fraction of a small set holds out one item; predicting an empty
/// set is an empty answer, not a panic.
#[test]
fn a_small_validation_split_holds_out_an_item_and_empty_predictions_are_empty() {
    let data = blobs();
    let (rest, held) = data.split_last(0.004);
    assert_eq!((rest.len(), held.len()), (89, 1));
    let (rest, held) = data.split_shuffled(0.004, &mut wgrad::Generator::new(2));
    assert_eq!((rest.len(), held.len()), (89, 1));
    assert_eq!(data.split_last(0.0).1.len(), 0);
    let model = classifier(&Device::Cpu);
    let mut opt = Adam::new(model.parameters(), 0.01);
    let stats = fit(&model, &mut opt, &data, &FitConfig { epochs: 1, validation_split: 0.004, ..quiet() }).unwrap();
    assert!(stats[0].validation.is_some(), "the validation split was dropped");
    let empty = Dataset::new(Vec::new(), Vec::new(), &[4], 3);
    assert_eq!(predict(&model, &empty, 8).unwrap(), Vec::<usize>::new());
}

/// `ModelCheckpoint::best_only` with `initial_value_threshold` (a resumed
/// run's best so far) saves only epochs that beat it.
#[test]
fn a_best_only_checkpoint_beats_its_initial_threshold_before_saving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("best.safetensors");
    let model = classifier(&Device::Cpu);
    let mut opt = Adam::new(model.parameters(), 0.01);
    let mut checkpoint = ModelCheckpoint::best_only(&path, "val_loss");
    checkpoint.initial_value_threshold = Some(-1.0);
    let config = FitConfig { epochs: 2, validation_split: 0.3, callbacks: vec![Box::new(checkpoint)], ..quiet() };
    fit(&model, &mut opt, &blobs(), &config).unwrap();
    assert!(!path.exists(), "saved an epoch that did not beat the threshold");
    let mut checkpoint = ModelCheckpoint::best_only(&path, "val_loss");
    checkpoint.initial_value_threshold = Some(f32::INFINITY);
    let config = FitConfig { epochs: 1, validation_split: 0.3, callbacks: vec![Box::new(checkpoint)], ..quiet() };
    fit(&model, &mut opt, &blobs(), &config).unwrap();
    assert!(path.exists());
}
