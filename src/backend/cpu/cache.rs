//! Reuse of large freed CPU buffers.
//!
//! A training step allocates and frees the same large buffers every step
//! (activations, their gradients, im2col patches). The allocator hands
//! buffers that big out as fresh pages from the kernel and returns them on
//! free, so every step paid a page fault per 4 KiB touched: on this
//! project's VM, a ReLU forward and backward over 2.8M floats took 22 ms,
//! 7 ms once the pages were reused, and the MNIST convnet's epoch dropped
//! from 4.0 s to 2.6 s. So buffers from [`MIN_BYTES`] up are kept here
//! when their storage is dropped, up to a total of `WGRAD_CPU_CACHE_MB`
//! (default 1024; 0 turns the cache off; when full, the largest cached
//! buffers make room), and handed to the next output of a similar size (at
//! most an eighth larger), as PyTorch's caching allocators do for GPU memory.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Buffers smaller than this are left to the allocator, which keeps them
/// in its own free lists without page faults.
const MIN_BYTES: usize = 256 << 10;

struct Cache {
    /// Free buffers by capacity (in floats).
    free: BTreeMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { free: BTreeMap::new(), bytes: 0 });

fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mb = std::env::var("WGRAD_CPU_CACHE_MB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1024);
        mb.saturating_mul(1 << 20)
    })
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cached buffer with room for `n` floats (its length unspecified), if
/// one of a similar size is free.
pub(super) fn take(n: usize) -> Option<Vec<f32>> {
    if n.saturating_mul(4) < MIN_BYTES {
        return None;
    }
    let mut c = lock();
    let (&cap, _) = c.free.range(n..=n.saturating_add(n / 8)).next()?;
    let list = c.free.get_mut(&cap).expect("the key was just found");
    let v = list.pop().expect("lists in the map are not empty");
    if list.is_empty() {
        c.free.remove(&cap);
    }
    c.bytes -= cap * 4;
    Some(v)
}

/// Keeps `v` for reuse if it is large, making room by freeing the largest
/// cached buffers (sizes an earlier model or batch needed, likely as not);
/// a buffer over the whole limit is freed.
pub(crate) fn give(v: Vec<f32>) {
    let bytes = v.capacity().saturating_mul(4);
    if bytes < MIN_BYTES || bytes > limit() {
        return;
    }
    let mut c = lock();
    while c.bytes + bytes > limit() {
        let Some(mut largest) = c.free.last_entry() else { break };
        let list = largest.get_mut();
        let freed = list.pop().map_or(0, |b| b.capacity() * 4);
        if list.is_empty() {
            largest.remove();
        }
        c.bytes -= freed;
    }
    c.bytes += bytes;
    c.free.entry(v.capacity()).or_default().push(v);
}

/// Frees every cached buffer.
pub(crate) fn clear() {
    let mut c = lock();
    c.free.clear();
    c.bytes = 0;
}

/// The bytes the cache holds.
pub(crate) fn cached_bytes() -> usize {
    lock().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_of_a_similar_size_only() {
        // Other tests run in parallel and share the cache: use sizes of
        // our own and look for our buffer by its address.
        let n = (MIN_BYTES / 4) * 3 + 17;
        let v = vec![1.0f32; n];
        let ptr = v.as_ptr();
        give(v);
        assert!(take(n * 2).is_none_or(|w| w.as_ptr() != ptr), "twice the size must not reuse it");
        let w = take(n - n / 10).expect("a buffer a tenth smaller is reused");
        assert_eq!(w.as_ptr(), ptr);
        assert!(w.capacity() >= n);
        give(vec![0.0f32; 10]);
        assert!(take(10).is_none(), "small buffers are not cached");
    }
}
