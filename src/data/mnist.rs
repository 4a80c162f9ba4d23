//! MNIST from its four standard IDX files (raw or `.gz`) in one directory:
//! `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`. Pixels are scaled to
//! [0, 1] as in the Keras example.

use super::{Dataset, read_idx};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The training and test sets.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// The training set.
    pub train: Dataset,
    /// The test set.
    pub test: Dataset,
}

/// Loads MNIST from `dir`; every problem (a missing or malformed file,
/// images that are not 28×28, counts that disagree, a label above 9) is an
/// [`Error`] naming the file.
pub fn load(dir: impl AsRef<Path>) -> Result<Mnist> {
    let dir = dir.as_ref();
    Ok(Mnist { train: load_split(dir, "train")?, test: load_split(dir, "t10k")? })
}

/// The file for a standard name: `NAME.gz` if present, else `NAME`.
fn find(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() { gz } else { dir.join(name) }
}

fn load_split(dir: &Path, prefix: &str) -> Result<Dataset> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    // What the model will need: 28×28 images (a header claiming other
    // sizes, zero among them, loaded before and failed in the first matmul).
    if images.dims.len() != 3 || images.dims[1..] != [28, 28] {
        return Err(Error::format(
            &images_path,
            format!("MNIST images must be [n, 28, 28], the file's header says {:?}", images.dims),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(Error::format(&labels_path, format!("labels must be [n], got dimensions {:?}", labels.dims)));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(Error::format(
            &labels_path,
            format!("{} labels for {} images in {}", labels.dims[0], images.dims[0], images_path.display()),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|&(_, &l)| l > 9) {
        return Err(Error::format(&labels_path, format!("label {l} of item {i} is not a digit")));
    }
    let inputs = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    let targets = labels.data.iter().map(|&l| l as f32).collect();
    Ok(Dataset::new(inputs, targets, &images.dims[1..], 10))
}
