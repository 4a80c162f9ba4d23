//! The MNIST reader on the bundled files and on broken copies of them.

use std::io::Write;
use std::path::Path;
use wgrad::Error;
use wgrad::data::mnist;

const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

#[test]
fn the_bundled_digits_load() {
    let m = mnist::load("data/mnist").unwrap();
    assert_eq!((m.train.len(), m.test.len()), (8004, 1996));
    assert_eq!(m.train.item_shape(), &[28, 28]);
    // Round-robin over the classes (see data/mnist/README.md).
    assert_eq!(&m.train.labels()[..10], &[0., 1., 2., 3., 4., 5., 6., 7., 8., 9.]);
}

/// A copy of the bundled files, decompressed, for tampering with.
fn raw_copy(dir: &Path) {
    for name in FILES {
        let gz = std::fs::read(format!("data/mnist/{name}.gz")).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        std::fs::write(dir.join(name), raw).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    let err = mnist::load(dir).unwrap_err();
    assert!(matches!(err, Error::Format { .. } | Error::Io { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn broken_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    raw_copy(dir.path());
    assert_eq!(mnist::load(dir.path()).unwrap().train.len(), 8004, "raw files load too");
    let path = |n: &str| dir.path().join(n);
    let edit = |n: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = std::fs::read(path(n)).unwrap();
        f(&mut b);
        std::fs::write(path(n), b).unwrap();
    };

    edit("t10k-labels-idx1-ubyte", &|b| b[8] = 12);
    let msg = load_err(dir.path());
    assert!(msg.contains("t10k-labels-idx1-ubyte") && msg.contains("label 12"), "{msg}");

    raw_copy(dir.path());
    edit("train-images-idx3-ubyte", &|b| b.truncate(b.len() - 100));
    let msg = load_err(dir.path());
    assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"), "{msg}");

    raw_copy(dir.path());
    edit("train-labels-idx1-ubyte", &|b| b[3] = 2);
    assert!(load_err(dir.path()).contains("train-labels-idx1-ubyte"));

    raw_copy(dir.path());
    edit("train-images-idx3-ubyte", &|b| b[0] = 0x42);
    let msg = load_err(dir.path());
    assert!(msg.contains("not an IDX file"), "{msg}");

    raw_copy(dir.path());
    // 8003 labels for 8004 images.
    edit("train-labels-idx1-ubyte", &|b| {
        b[4..8].copy_from_slice(&8003u32.to_be_bytes());
        b.pop();
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("8003 labels for 8004 images"), "{msg}");

    // Headers claiming images of another size (zero-sized ones loaded
    // before, and the model then panicked in its first matmul).
    for (rows, cols) in [(0u32, 0u32), (28, 0), (14, 56)] {
        raw_copy(dir.path());
        edit("t10k-images-idx3-ubyte", &|b| {
            let n = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut header = vec![0, 0, 8, 3];
            for d in [n, rows, cols] {
                header.extend(d.to_be_bytes());
            }
            let data = b[16..16 + (n * rows * cols) as usize].to_vec();
            *b = [header, data].concat();
        });
        let msg = load_err(dir.path());
        assert!(msg.contains("t10k-images-idx3-ubyte") && msg.contains(&format!("{rows}, {cols}]")), "{msg}");
        assert!(msg.contains("must be [n, 28, 28]"), "{msg}");
    }

    raw_copy(dir.path());
    std::fs::remove_file(path("t10k-images-idx3-ubyte")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");

    raw_copy(dir.path());
    // A gzip file cut short.
    let gz = std::fs::read("data/mnist/train-images-idx3-ubyte.gz").unwrap();
    let mut f = std::fs::File::create(path("train-images-idx3-ubyte.gz")).unwrap();
    f.write_all(&gz[..gz.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
}

/// A gzip file of several members (`cat a.gz b.gz`, bgzip's output) reads as
/// `gzip -d` reads it; bytes after the last member are an error, as trailing
/// bytes in a raw file are.
#[test]
fn multi_member_gzip_reads_and_trailing_bytes_are_errors() {
    use flate2::{Compression, write::GzEncoder};
    let gz = std::fs::read("data/mnist/t10k-labels-idx1-ubyte.gz").unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    let member = |bytes: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let cut = raw.len() / 3;
    let mut two = member(&raw[..cut]);
    two.extend(member(&raw[cut..]));
    let read = wgrad::data::parse_idx(&two[..], Path::new("two.gz")).unwrap();
    assert_eq!(read.data, raw[8..], "the labels after the 8-byte header");
    let mut trailing = member(&raw);
    trailing.extend(b"junk");
    let err = wgrad::data::parse_idx(&trailing[..], Path::new("junk.gz")).unwrap_err().to_string();
    assert!(err.contains("junk.gz"), "{err}");
}

/// Datasets name what is wrong: an index past the end in `gather`, a
/// regression shape holding no values.
#[test]
fn gather_and_regression_name_their_misuse() {
    let data = wgrad::data::Dataset::new(vec![0.0; 6], vec![0.0, 1.0, 1.0], &[2], 2);
    let msg = std::panic::catch_unwind(|| data.gather(&[0, 3], &wgrad::Device::Cpu)).unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("Dataset::gather: index 3 is out of range for 3 items"), "{msg}");
    let msg =
        std::panic::catch_unwind(|| wgrad::data::Dataset::regression(vec![1.0; 4], vec![], &[2], &[0])).unwrap_err();
    assert!(msg.downcast_ref::<String>().unwrap().contains("must both hold values"));
}
