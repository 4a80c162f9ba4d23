//! Mutation fuzzing of the two readers that take files from elsewhere: the
//! IDX reader (raw and gzipped) and the safetensors loader. 100,000 mutated
//! inputs in all (proptest, deterministic seed). Each must come back `Ok` or
//! `Err` — a panic fails the test — and must not allocate more than its
//! size could justify: a header that claims 2^40 elements is not believed.
//!
//! The allocation bound is measured with a counting allocator (per thread,
//! so parallel tests do not disturb it): the peak growth during one parse
//! must stay under `16 · len + 1 MiB` for raw inputs, and under
//! `1100 · len + 1 MiB` for gzip, whose deflate stream can legitimately
//! expand 1032-fold.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;

struct Counting;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grow(bytes: usize) {
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + bytes;
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrink(bytes: usize) {
    let _ = CURRENT.try_with(|c| c.set(c.get().saturating_sub(bytes)));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size);
        shrink(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns how far the calling thread's allocations rose above
/// where they started.
fn peak_growth(f: impl FnOnce()) -> usize {
    let start = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(start));
    f();
    PEAK.with(Cell::get) - start
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// Overwrite 4 bytes with a big little- or big-endian number.
    BigWord(usize, u32, bool),
    /// Overwrite 8 bytes (a safetensors header length) with a number.
    BigLong(usize, u64),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let big = prop_oneof![Just(u32::MAX), Just(1u32 << 31), Just(1u32 << 20), any::<u32>()];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::SetByte(p, v)),
        (any::<usize>(), big, any::<bool>()).prop_map(|(p, v, be)| Mutation::BigWord(p, v, be)),
        (any::<usize>(), prop_oneof![Just(u64::MAX), Just(1u64 << 40), 0u64..4096])
            .prop_map(|(p, v)| Mutation::BigLong(p, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Mutation::Insert(p, v)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::FlipBit(p, b) if !bytes.is_empty() => bytes[p % len] ^= 1 << b,
            Mutation::SetByte(p, v) if !bytes.is_empty() => bytes[p % len] = *v,
            Mutation::BigWord(p, v, be) if bytes.len() >= 4 => {
                let at = p % (bytes.len() - 3);
                let word = if *be { v.to_be_bytes() } else { v.to_le_bytes() };
                bytes[at..at + 4].copy_from_slice(&word);
            }
            Mutation::BigLong(p, v) if bytes.len() >= 8 => {
                // Mostly the header length at offset 0, sometimes elsewhere.
                let at = if p % 2 == 0 { 0 } else { p % (bytes.len() - 7) };
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            Mutation::Truncate(p) => bytes.truncate(p % len),
            Mutation::Insert(p, v) => {
                let at = p % (bytes.len() + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

fn idx_bytes(dims: &[u32], fill: u8) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(std::iter::repeat_n(fill, dims.iter().product::<u32>() as usize));
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let dev = wgrad::Device::Cpu;
    let tensors = vec![
        ("a.weight".to_string(), wgrad::Tensor::arange(0.0, 12.0, &dev).reshape([3, 4])),
        ("a.bias".to_string(), wgrad::Tensor::ones([3], &dev)),
    ];
    [wgrad::io::Dtype::F32, wgrad::io::Dtype::F16, wgrad::io::Dtype::BF16]
        .into_iter()
        .map(|dtype| {
            let path = dir.path().join("seed.safetensors");
            wgrad::io::save_tensors(&tensors, &path, dtype).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

/// Runs `cases` mutated inputs of `seeds` through `parse`, checking the
/// allocation bound for each.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, cases: u32, factor: usize, parse: impl Fn(&[u8]) -> bool) {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let ok = std::cell::Cell::new(0u32);
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..5));
    runner
        .run(&strategy, |(seed, mutations)| {
            let input = apply(seeds[seed].clone(), &mutations);
            let mut accepted = false;
            let grew = peak_growth(|| accepted = parse(&input));
            let budget = factor * input.len() + (1 << 20);
            prop_assert!(grew <= budget, "{name}: {} input bytes made the reader allocate {grew} bytes", input.len());
            ok.set(ok.get() + accepted as u32);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // The seeds themselves must still parse, so the fuzzing is not only of
    // the first error check.
    for s in &seeds {
        assert!(parse(s), "{name}: an unmutated seed was rejected");
    }
    eprintln!("{name}: {cases} mutated inputs, {} accepted", ok.get());
}

#[test]
fn idx_reader_survives_mutated_files() {
    let raw = vec![idx_bytes(&[3, 4, 5], 7), idx_bytes(&[10], 3), idx_bytes(&[2, 2], 255)];
    let path = Path::new("fuzz.idx");
    fuzz("raw IDX", raw.clone(), 35_000, 16, |b| wgrad::data::parse_idx(b, path).is_ok());
    let gz: Vec<Vec<u8>> = raw.iter().map(|r| gzip(r)).collect();
    fuzz("gzipped IDX", gz, 15_000, 1100, |b| wgrad::data::parse_idx(b, path).is_ok());
}

#[test]
fn safetensors_loader_survives_mutated_files() {
    let path = Path::new("fuzz.safetensors");
    fuzz("safetensors", safetensors_seeds(), 50_000, 16, |b| wgrad::io::parse(b, path).is_ok());
}
