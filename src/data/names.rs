//! The names corpus of `data/names/` (8,422 first names, lower case, from
//! stdlib's English first-name datasets; see its README) for makemore-style
//! character models, encoded as Andrej Karpathy's makemore encodes it.
//!
//! Token 0 is `.`, the start and end marker; tokens 1.. are the sorted
//! alphabet of the training names (`-` and `a`–`z`: a vocabulary of 28).
//! With a context of `block` tokens, a name of tokens `ix` (at most
//! `block - 1` of them) is the example
//!
//! ```text
//! x = [0] + ix + [0, 0, …]       (block inputs)
//! y = ix + [0] + [-1, -1, …]     (block targets; -1 is ignored)
//! ```
//!
//! so a model predicts every next character and the end of the name; the
//! loss is cross-entropy with `ignore_index = -1` (see
//! [`Loss::CrossEntropyWith`](crate::train::Loss::CrossEntropyWith)).
//!
//! ```no_run
//! let names = wgrad::data::names::load("data/names", 16).unwrap();
//! assert_eq!(names.vocab.len(), 28);
//! assert_eq!(names.vocab.decode(&names.vocab.encode("anna").unwrap()), "anna");
//! ```

use super::Dataset;
use crate::{Error, Result};
use std::path::Path;

/// Characters ↔ tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    /// The characters of tokens 1.., sorted.
    chars: Vec<char>,
}

impl Vocab {
    /// The vocabulary of `names`: `.` and their sorted characters.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut chars: Vec<char> = names.into_iter().flat_map(str::chars).collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab { chars }
    }

    /// Tokens, the marker included.
    pub fn len(&self) -> usize {
        self.chars.len() + 1
    }

    /// Never: the marker is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The tokens of `name`, or `None` if it has a character outside the
    /// vocabulary.
    pub fn encode(&self, name: &str) -> Option<Vec<usize>> {
        name.chars().map(|c| self.chars.binary_search(&c).ok().map(|i| i + 1)).collect()
    }

    /// The characters of `tokens`, `.` for the marker.
    pub fn decode(&self, tokens: &[usize]) -> String {
        tokens.iter().map(|&t| if t == 0 { '.' } else { self.chars[t - 1] }).collect()
    }
}

/// The corpus, split and encoded.
#[derive(Clone, Debug)]
pub struct Names {
    /// `x` of `[block]` token ids, `y` of `[block]` targets (-1 ignored).
    pub train: Dataset,
    /// The validation split, encoded the same way.
    pub validation: Dataset,
    /// The tokens.
    pub vocab: Vocab,
    /// The context length.
    pub block: usize,
}

impl Names {
    /// The characters a model learns to predict in `data` (the names'
    /// letters and one end marker each): the targets not ignored.
    pub fn targets(data: &Dataset) -> usize {
        data.targets.iter().filter(|&&t| t >= 0.0).count()
    }
}

/// The loss of this encoding: cross-entropy over the next token with the
/// padding (-1) ignored, averaged over the characters predicted.
pub fn loss() -> crate::train::Loss {
    crate::train::Loss::CrossEntropyWith { label_smoothing: 0.0, weight: None, ignore_index: Some(-1) }
}

/// Reads `train.txt` and `val.txt` (one name a line) from `dir` and
/// encodes them with a context of `block` tokens. A missing file, an empty
/// split, a name longer than `block - 1`, or a validation character the
/// training names lack is an [`Error`] naming the file.
pub fn load(dir: impl AsRef<Path>, block: usize) -> Result<Names> {
    let dir = dir.as_ref();
    let read = |name: &str| -> Result<(std::path::PathBuf, Vec<String>)> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.is_empty() {
            return Err(Error::format(&path, "no names"));
        }
        Ok((path, names))
    };
    let (train_path, train) = read("train.txt")?;
    let (val_path, val) = read("val.txt")?;
    let vocab = Vocab::of(train.iter().map(String::as_str));
    let encode = |path: &Path, names: &[String]| -> Result<Dataset> {
        let mut x = Vec::with_capacity(names.len() * block);
        let mut y = Vec::with_capacity(names.len() * block);
        for name in names {
            let ix = vocab
                .encode(name)
                .ok_or_else(|| Error::format(path, format!("{name:?} has a character the training names lack")))?;
            if ix.len() + 1 > block {
                return Err(Error::format(path, format!("{name:?} does not fit a context of {block}")));
            }
            x.push(0.0);
            x.extend(ix.iter().map(|&t| t as f32));
            x.resize(x.len() + block - 1 - ix.len(), 0.0);
            y.extend(ix.iter().map(|&t| t as f32));
            y.push(0.0);
            y.resize(y.len() + block - 1 - ix.len(), -1.0);
        }
        Ok(Dataset::regression(x, y, &[block], &[block]))
    };
    Ok(Names { train: encode(&train_path, &train)?, validation: encode(&val_path, &val)?, vocab, block })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_as_makemore_does() {
        let dir = std::env::temp_dir().join(format!("wgrad-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.txt"), "ab\nb-a\n").unwrap();
        std::fs::write(dir.join("val.txt"), "ba\n").unwrap();
        let n = load(&dir, 4).unwrap();
        assert_eq!(n.vocab.len(), 4);
        assert_eq!(n.vocab.encode("b-a"), Some(vec![3, 1, 2]));
        assert_eq!(n.train.inputs, [0.0, 2.0, 3.0, 0.0, 0.0, 3.0, 1.0, 2.0]);
        assert_eq!(n.train.targets, [2.0, 3.0, 0.0, -1.0, 3.0, 1.0, 2.0, 0.0]);
        assert_eq!(Names::targets(&n.train), 7);
        std::fs::write(dir.join("val.txt"), "abc\n").unwrap();
        assert!(load(&dir, 4).unwrap_err().to_string().contains("val.txt"));
        std::fs::write(dir.join("val.txt"), "abab\n").unwrap();
        assert!(load(&dir, 4).unwrap_err().to_string().contains("context of 4"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_committed_corpus_loads() {
        let n = load(concat!(env!("CARGO_MANIFEST_DIR"), "/data/names"), 16).unwrap();
        assert_eq!((n.train.len(), n.validation.len(), n.vocab.len()), (7579, 843, 28));
        assert_eq!(Names::targets(&n.train), 53_271);
    }
}
