//! The IDX format of the MNIST files: a 4-byte magic (two zero bytes, an
//! element type, the number of dimensions), the dimensions as big-endian
//! u32s, then the elements. Only unsigned bytes (type 0x08) are supported,
//! which is what MNIST uses.
//!
//! Files may be raw or gzip-compressed (recognised by their first bytes, not
//! their names). The reader never trusts the header with an allocation: data
//! is read as it arrives, up to what the header promises, so a header that
//! claims 2^40 elements in a small file fails with "truncated" after reading
//! what is there.

use crate::{Error, Result};
use flate2::read::MultiGzDecoder;
use std::io::{BufReader, Read};
use std::path::Path;

/// An IDX array of bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file (raw or gzipped).
pub fn read_idx(path: &Path) -> Result<Idx> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    parse_idx(BufReader::new(file), path)
}

/// Parses IDX bytes (raw or gzipped); `path` names the source in errors.
pub fn parse_idx(mut reader: impl Read, path: &Path) -> Result<Idx> {
    let mut magic = [0u8; 4];
    read_exact(&mut reader, &mut magic, path, "the 4-byte magic number")?;
    let whole = std::io::Cursor::new(magic).chain(reader);
    if magic[..2] == [0x1f, 0x8b] {
        // A gzip stream (of one member or several, as `gzip -d` reads
        // concatenated ones; bytes after the last are an error): parse
        // what it decompresses to.
        return parse_raw(MultiGzDecoder::new(whole), path);
    }
    parse_raw(whole, path)
}

/// Maps a read error to a format error when the bytes (not the disk) are at fault.
fn read_error(path: &Path, e: std::io::Error, what: &str) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof => Error::format(path, format!("truncated: the file ends inside {what}")),
        InvalidInput | InvalidData => Error::format(path, format!("corrupt compressed data: {e}")),
        _ => Error::io(path, e),
    }
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    reader.read_exact(buf).map_err(|e| read_error(path, e, what))
}

fn parse_raw(mut reader: impl Read, path: &Path) -> Result<Idx> {
    let bad = |msg: String| Error::format(path, msg);
    let mut magic = [0u8; 4];
    read_exact(&mut reader, &mut magic, path, "the 4-byte magic number")?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad(format!(
            "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x}",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", magic[2])));
    }
    let rank = magic[3] as usize;
    if rank == 0 {
        return Err(bad("IDX header declares 0 dimensions".into()));
    }
    let mut header = vec![0u8; 4 * rank];
    read_exact(&mut reader, &mut header, path, "the dimensions")?;
    let dims: Vec<usize> =
        header.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    // Read at most one byte more than promised: enough to notice trailing
    // garbage, and never more than the file actually holds.
    let mut data = Vec::new();
    reader.take(count.saturating_add(1)).read_to_end(&mut data).map_err(|e| read_error(path, e, "the data"))?;
    if (data.len() as u64) < count {
        return Err(bad(format!(
            "truncated: dimensions {dims:?} need {count} bytes of data, the file has {}",
            data.len()
        )));
    }
    if data.len() as u64 > count {
        return Err(bad(format!("{count} bytes of data expected for dimensions {dims:?}, but more follow")));
    }
    Ok(Idx { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    fn parse(bytes: &[u8]) -> Result<Idx> {
        parse_idx(bytes, Path::new("t.idx"))
    }

    #[test]
    fn parses_raw_and_gzipped() {
        let raw = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let want = Idx { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] };
        assert_eq!(parse(&raw).unwrap(), want);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        assert_eq!(parse(&gz.finish().unwrap()).unwrap(), want);
    }

    #[test]
    fn rejects_malformed_headers_and_sizes() {
        let msg = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(msg(&[0, 0, 8]).contains("truncated"));
        assert!(msg(&[1, 2, 8, 1, 0, 0, 0, 1, 7]).contains("not an IDX file"));
        assert!(msg(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).contains("not supported"));
        assert!(msg(&idx(&[2, 3], &[1, 2, 3])).contains("truncated"));
        assert!(msg(&idx(&[2], &[1, 2, 3])).contains("more follow"));
        assert!(msg(&[0, 0, 8, 0]).contains("0 dimensions"));
        // A header promising 2^40 bytes reads what is there and stops.
        assert!(msg(&idx(&[1 << 20, 1 << 20], &[0; 10])).contains("need 1099511627776 bytes"));
        assert!(msg(&[0x1f, 0x8b, 8, 0, 1, 2, 3]).contains("t.idx"));
    }
}
