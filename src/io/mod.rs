//! Saving and loading named parameters as safetensors, the format PyTorch,
//! candle and burn share.
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

/// Saves `model`'s named parameters to `path` (atomically).
pub fn save(model: &dyn Module, path: impl AsRef<Path>, dtype: Dtype) -> Result<()> {
    save_tensors(&model.named_parameters(), path, dtype)
}

/// Loads parameters saved by [`save`] (or by PyTorch) into `model`, in place.
/// The file must hold exactly the model's parameters with the same shapes,
/// as PyTorch's strict `load_state_dict`; otherwise nothing is changed and
/// the error names the offending tensor.
pub fn load(model: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let params = model.named_parameters();
    let mut loaded: HashMap<String, HostTensor> = read(path)?.into_iter().collect();
    // Check everything before changing anything.
    for (name, p) in &params {
        match loaded.get(name) {
            None => return Err(Error::Mismatch(format!("{}: no tensor named {name:?}", path.display()))),
            Some(t) if t.shape.as_slice() != p.dims() => {
                return Err(Error::Mismatch(format!(
                    "{}: tensor {name:?} has shape {:?} in the file but {:?} in the model",
                    path.display(),
                    t.shape,
                    p.dims()
                )));
            }
            Some(_) => {}
        }
    }
    if loaded.len() > params.len() {
        let mut extra: Vec<&String> = loaded.keys().filter(|k| !params.iter().any(|(n, _)| n == *k)).collect();
        extra.sort();
        return Err(Error::Mismatch(format!("{}: tensors {extra:?} are not in the model", path.display())));
    }
    for (name, p) in &params {
        let t = loaded.remove(name).expect("checked above");
        p.assign(&Tensor::from_vec(t.values, t.shape, &p.device())?);
    }
    Ok(())
}

/// Saves named tensors to `path` (atomically).
pub fn save_tensors(tensors: &[(String, Tensor)], path: impl AsRef<Path>, dtype: Dtype) -> Result<()> {
    let path = path.as_ref();
    let mut encoded: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, t) in tensors {
        let values = t.to_vec()?;
        let bytes: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            Dtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        };
        if encoded.insert(name.clone(), (t.dims().to_vec(), bytes)).is_some() {
            return Err(Error::Mismatch(format!("{}: two tensors named {name:?}", path.display())));
        }
    }
    let st_dtype = match dtype {
        Dtype::F32 => StDtype::F32,
        Dtype::F16 => StDtype::F16,
        Dtype::BF16 => StDtype::BF16,
    };
    let views = encoded
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::format(path, format!("tensor {name:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, None).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomically(path, |f| f.write_all(&bytes))
}

/// Creates a temporary file beside `path`, fills it with `write`, syncs it
/// and renames it to `path`. On any failure the temporary file is removed
/// and `path` is left as it was.
fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
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
/// f16, bf16 and f64 to f32.
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
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor {name:?} has type {other:?}; wgrad reads floats only"),
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
