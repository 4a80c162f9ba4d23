//! Saving and loading named parameters as safetensors, the format PyTorch,
//! candle and burn share, and checkpoints to resume training from
//! ([`save_checkpoint`], [`load_checkpoint`]).
//!
//! Names and layouts are PyTorch's `state_dict` ones (see [`crate::nn`]), so
//! a model saved here loads with `safetensors.torch.load_file` +
//! `load_state_dict` into the equivalent `torch.nn.Sequential`, and a file
//! saved from that model loads here. Values are stored as f32, f16 or bf16;
//! loading accepts any of the three (and f64).
//!
//! Saving is atomic: the file is written next to its destination under a
//! temporary name, flushed to disk, then renamed over it, so a crash or a
//! full disk leaves any earlier file at that path intact.
//!
//! ```no_run
//! use wgrad::{Device, io, nn};
//! let model = nn::Sequential::new().add(nn::Linear::new(4, 2, &Device::Cpu));
//! io::save(&model, "model.safetensors", io::Dtype::F32).unwrap();
//! io::load(&model, "model.safetensors").unwrap();
//! ```

use crate::nn::Module;
use crate::optim::{Optimizer, OptimizerState};
use crate::{Device, Error, Result, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// A tensor read from a file, still on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The elements, row-major, converted to f32.
    pub values: Vec<f32>,
}

/// The element type values are stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float: exact.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

/// Saves `model`'s state (parameters and buffers, see
/// [`Module::state_dict`]) to `path` (atomically), its floats as `dtype`.
/// BatchNorm's step counters (`num_batches_tracked`) are integers and are
/// written as int64 whatever `dtype` is, as PyTorch holds them (in f16 a
/// count past 65,504 would be infinite, in bf16 one of 1001 would be 1000).
pub fn save(model: &dyn Module, path: impl AsRef<Path>, dtype: Dtype) -> Result<()> {
    save_tensors(&model.state_dict(), path, dtype)
}

/// Loads a state saved by [`save`] (or by PyTorch) into `model`, in place.
/// The file must hold exactly the model's parameters and buffers with the
/// same shapes, as PyTorch's strict `load_state_dict`; otherwise nothing is
/// changed and the error names the offending tensor.
pub fn load(model: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let loaded: HashMap<String, HostTensor> = read(path)?.into_iter().collect();
    let state = model.state_dict();
    let assign = check_state(&state, loaded, "", path)?;
    assign()
}

/// Checks that `loaded` (names with `prefix`) holds exactly `state`'s
/// tensors with their shapes; returns what assigns them.
fn check_state<'a>(
    state: &'a [(String, Tensor)],
    mut loaded: HashMap<String, HostTensor>,
    prefix: &str,
    path: &Path,
) -> Result<impl FnOnce() -> Result<()> + 'a> {
    let mut names = std::collections::HashSet::new();
    for (name, p) in state {
        let full = format!("{prefix}{name}");
        if !names.insert(full.clone()) {
            return Err(Error::Mismatch(format!(
                "{}: the model names two tensors {full:?}; a state with duplicate names cannot be loaded",
                path.display()
            )));
        }
        match loaded.get(&full) {
            None => return Err(Error::Mismatch(format!("{}: no tensor named {full:?}", path.display()))),
            Some(t) if t.shape.as_slice() != p.dims() => {
                return Err(Error::Mismatch(format!(
                    "{}: tensor {full:?} has shape {:?} in the file but {:?} in the model",
                    path.display(),
                    t.shape,
                    p.dims()
                )));
            }
            Some(_) => {}
        }
    }
    if loaded.len() > state.len() {
        let mut extra: Vec<&String> =
            loaded.keys().filter(|k| !state.iter().any(|(n, _)| &format!("{prefix}{n}") == *k)).collect();
        extra.sort();
        return Err(Error::Mismatch(format!("{}: tensors {extra:?} are not in the model", path.display())));
    }
    let prefix = prefix.to_string();
    Ok(move || {
        for (name, p) in state {
            let t = loaded.remove(&format!("{prefix}{name}")).expect("checked above");
            p.assign(&Tensor::from_vec(t.values, t.shape, &p.device())?);
        }
        Ok(())
    })
}

/// What [`load_checkpoint`] restored besides the model and optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The epochs trained when it was saved: pass it as
    /// [`FitConfig::initial_epoch`](crate::train::FitConfig::initial_epoch).
    pub epoch: usize,
}

const CHECKPOINT_FORMAT: &str = "wgrad-checkpoint-1";

/// Saves everything needed to resume training exactly where it is: the
/// model's state (`model.<name>`), the optimizer's (`optimizer.<name>`, its
/// numbers in the metadata), the epoch, and the calling thread's random
/// state (dropout masks continue as they would have). One safetensors
/// file, its metadata in the JSON header, written atomically like
/// [`save`]. Resuming with [`load_checkpoint`] and `FitConfig {
/// initial_epoch, .. }` trains bit for bit as an uninterrupted run, with
/// any learning-rate schedule that is a function of the step
/// ([`Progress`](crate::optim::Progress)): the optimizer's rate saved is its
/// own, which `fit` shows callbacks, not a schedule's. The state of a
/// schedule that learns from the losses,
/// [`ReduceOnPlateau`](crate::optim::ReduceOnPlateau), is not saved: a run
/// resumed with one starts it afresh.
///
/// In a data-parallel job the file holds rank 0's generator, and
/// `load_checkpoint` gives it to every rank. Ranks seeded `seed + rank` (as
/// `docs/distributed.md` advises, so their dropout masks differ) restore
/// their own stream by adding their rank to the loaded seed:
/// `let mut s = default_generator_state(); s.seed += rank as u64;
/// set_default_generator_state(s);` (every rank has drawn as many numbers).
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    epoch: usize,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> =
        model.state_dict().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    let opt = optimizer.state_dict();
    tensors.extend(opt.tensors.into_iter().map(|(n, t)| (format!("optimizer.{n}"), t)));
    let rng = crate::rng::default_generator_state();
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), CHECKPOINT_FORMAT.into());
    meta.insert("epoch".into(), epoch.to_string());
    meta.insert("rng.seed".into(), rng.seed.to_string());
    meta.insert("rng.word_pos".into(), rng.word_pos.to_string());
    meta.insert("rng.dropout_calls".into(), rng.dropout_calls.to_string());
    for (n, v) in opt.scalars {
        // `{:?}` writes the shortest text that reads back to the same f64.
        meta.insert(format!("optimizer.{n}"), format!("{v:?}"));
    }
    write_tensors(&tensors, path.as_ref(), Dtype::F32, Some(meta))
}

/// Restores a checkpoint written by [`save_checkpoint`] into `model` and
/// `optimizer` (built as when it was saved) and the calling thread's random
/// state; returns its epoch. Everything is checked before anything
/// changes: a file that does not fit leaves all three as they were.
pub fn load_checkpoint(
    path: impl AsRef<Path>,
    model: &dyn Module,
    optimizer: &mut dyn Optimizer,
) -> Result<Checkpoint> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let meta: HashMap<String, String> = metadata.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(Error::format(path, format!("not a wgrad checkpoint (format {:?})", meta.get("format"))));
    }
    let number = |key: &str| -> Result<u128> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::format(path, format!("checkpoint metadata {key:?} is missing or not a number")))
    };
    let (epoch, seed, word_pos, dropout_calls) =
        (number("epoch")?, number("rng.seed")?, number("rng.word_pos")?, number("rng.dropout_calls")?);
    let small = |key: &str, v: u128| -> Result<u64> {
        u64::try_from(v).map_err(|_| Error::format(path, format!("checkpoint metadata {key:?} is out of range: {v}")))
    };
    let (epoch, seed, dropout_calls) =
        (small("epoch", epoch)?, small("rng.seed", seed)?, small("rng.dropout_calls", dropout_calls)?);
    let all: HashMap<String, HostTensor> = parse(&bytes, path)?.into_iter().collect();
    let (model_part, opt_part): (HashMap<_, _>, HashMap<_, _>) =
        all.into_iter().partition(|(n, _)| n.starts_with("model."));
    let state = model.state_dict();
    let assign = check_state(&state, model_part, "model.", path)?;
    let mut opt = OptimizerState::default();
    for (n, t) in opt_part {
        let Some(name) = n.strip_prefix("optimizer.") else {
            return Err(Error::format(path, format!("tensor {n:?} is neither the model's nor the optimizer's")));
        };
        opt.tensors.push((name.to_string(), Tensor::from_vec(t.values, t.shape, &Device::Cpu)?));
    }
    for (k, v) in &meta {
        if let Some(name) = k.strip_prefix("optimizer.") {
            let value = v.parse().map_err(|_| Error::format(path, format!("optimizer number {k:?} is {v:?}")))?;
            opt.scalars.push((name.to_string(), value));
        }
    }
    optimizer.load_state_dict(&opt)?;
    assign()?;
    crate::rng::set_default_generator_state(crate::rng::GeneratorState { seed, word_pos, dropout_calls });
    Ok(Checkpoint { epoch: epoch as usize })
}

/// Saves named tensors to `path` (atomically).
pub fn save_tensors(tensors: &[(String, Tensor)], path: impl AsRef<Path>, dtype: Dtype) -> Result<()> {
    write_tensors(tensors, path.as_ref(), dtype, None)
}

fn write_tensors(
    tensors: &[(String, Tensor)],
    path: &Path,
    dtype: Dtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut encoded: BTreeMap<String, (StDtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, t) in tensors {
        let values = t.to_vec()?;
        let (st_dtype, bytes): (StDtype, Vec<u8>) = match dtype {
            _ if is_counter(name) => (StDtype::I64, values.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect()),
            Dtype::F32 => (StDtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Dtype::F16 => (StDtype::F16, values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()),
            Dtype::BF16 => {
                (StDtype::BF16, values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect())
            }
        };
        if encoded.insert(name.clone(), (st_dtype, t.dims().to_vec(), bytes)).is_some() {
            return Err(Error::Mismatch(format!("{}: two tensors named {name:?}", path.display())));
        }
    }
    let views = encoded
        .iter()
        .map(|(name, (st_dtype, shape, bytes))| {
            TensorView::new(*st_dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::format(path, format!("tensor {name:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, metadata).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomically(path, |f| f.write_all(&bytes))
}

/// Whether the tensor `name` is a step counter PyTorch keeps as int64
/// (BatchNorm's `num_batches_tracked`), which `save` writes as one.
fn is_counter(name: &str) -> bool {
    name.rsplit('.').next() == Some("num_batches_tracked")
}

/// Creates a temporary file beside `path`, fills it with `write`, syncs it
/// and renames it to `path`. On any failure the temporary file is removed
/// and `path` is left as it was. A `path` that is a symbolic link is written
/// through, as `torch.save` writes: its target is replaced and the link
/// kept (`latest.safetensors -> run/epoch10.safetensors`).
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let target = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_symlink())
        .and_then(|_| std::fs::canonicalize(path).ok());
    let path = target.as_deref().unwrap_or(path);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(path, e))?;
    // Temporary files are private (0600); give the result the permissions
    // of the file it replaces, or the usual 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0o644);
        file.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
    }
    write(file.as_file_mut()).map_err(|e| Error::io(path, e))?;
    file.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Reads every tensor of a safetensors file, sorted by name, converting
/// f16, bf16, f64 and integers (8 to 64 bits, and bool) to f32.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<(String, HostTensor)>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// As [`read`], from bytes in memory; `path` names the source in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<(String, HostTensor)>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            StDtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StDtype::F64 => {
                data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            StDtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StDtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            // Integers (PyTorch's int64 `num_batches_tracked`, say) become
            // the nearest f32, as wgrad holds every value.
            StDtype::I64 => {
                data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            StDtype::I32 => {
                data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f32).collect()
            }
            StDtype::I16 => data.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            StDtype::I8 => data.iter().map(|&b| b as i8 as f32).collect(),
            StDtype::U64 => {
                data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            StDtype::U32 => {
                data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as f32).collect()
            }
            StDtype::U16 => data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            StDtype::U8 | StDtype::BOOL => data.iter().map(|&b| b as f32).collect(),
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor {name:?} has type {other:?}; wgrad reads floats, integers and bools"),
                ));
            }
        };
        out.push((name.to_string(), HostTensor { shape: view.shape().to_vec(), values }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads a safetensors file into tensors on `device`.
pub fn load_tensors(path: impl AsRef<Path>, device: &Device) -> Result<Vec<(String, Tensor)>> {
    read(path)?.into_iter().map(|(name, t)| Ok((name, Tensor::from_vec(t.values, t.shape, device)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_fails_midway_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"the old model").unwrap();
        // A disk that fills up after a few bytes.
        let err = write_atomically(&path, |f| {
            f.write_all(b"half a ")?;
            Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"the old model");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is removed");
        // And a write that succeeds replaces it.
        write_atomically(&path, |f| f.write_all(b"the new model")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"the new model");
    }
}
