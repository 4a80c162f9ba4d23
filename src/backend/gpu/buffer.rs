//! GPU buffers and the pool they come from.
//!
//! Creating a wgpu buffer costs a driver allocation; a training step makes
//! dozens of tensors of the same few sizes. Buffers therefore go back to a
//! pool when their tensor drops and are reused by the next tensor of the same
//! size class. Size classes are `m · 2^e` with `m` in 8..16 — at most 12.5%
//! over the request — so a pool hit needs an exact class match and never
//! hands a small tensor a huge buffer.
//!
//! A [`GpuBuffer`] may instead hold the error that prevented its creation (or
//! the computation of its contents): that is how GPU faults travel through a
//! computation to the `to_vec` that reports them.

use super::Context;
use super::fusion::{self, Expr};
use crate::Error;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Memory use of one GPU device, for checking that a long run is flat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in buffers that hold live tensors.
    pub live_bytes: u64,
    /// Bytes in buffers waiting in the pool for reuse.
    pub pooled_bytes: u64,
    /// Buffers created since the device was opened (pool misses).
    pub allocations: u64,
}

/// Free buffers by size class.
#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    pub stats: MemoryStats,
}

impl Pool {
    pub fn take(&mut self, class: u64) -> Option<wgpu::Buffer> {
        let buffer = self.free.get_mut(&class)?.pop()?;
        self.stats.pooled_bytes -= class;
        self.stats.live_bytes += class;
        Some(buffer)
    }

    pub fn created(&mut self, class: u64) {
        self.stats.allocations += 1;
        self.stats.live_bytes += class;
    }

    fn release(&mut self, buffer: wgpu::Buffer, class: u64) {
        self.stats.live_bytes -= class;
        self.stats.pooled_bytes += class;
        self.free.entry(class).or_default().push(buffer);
    }

    /// Destroys every pooled buffer, returning their memory to the driver.
    pub fn clear(&mut self) {
        for buffer in self.free.drain().flat_map(|(_, v)| v) {
            buffer.destroy();
        }
        self.stats.pooled_bytes = 0;
    }
}

/// The size class of a request of `bytes`: the smallest `m · 2^e ≥ bytes`
/// with `8 ≤ m < 16`, after rounding up to whole 16-byte vec4s (elementwise
/// kernels read and write whole vec4s; an empty buffer cannot be bound).
/// Classes are multiples of 16: below 128 bytes the step divides 16.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(1).div_ceil(16) * 16;
    let e = (63 - bytes.leading_zeros()).saturating_sub(3);
    let step = 1u64 << e;
    bytes.div_ceil(step) * step
}

/// A buffer on loan from the pool; it returns there when the last handle
/// drops (a tensor's storage, or a pending expression reading it).
pub(crate) struct Pooled {
    pub buffer: wgpu::Buffer,
    pub class: u64,
    ctx: Arc<Context>,
}

impl Pooled {
    pub fn new(buffer: wgpu::Buffer, class: u64, ctx: Arc<Context>) -> Self {
        Pooled { buffer, class, ctx }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buffer = self.buffer.clone();
        self.ctx.pool.lock().unwrap_or_else(|e| e.into_inner()).release(buffer, self.class);
    }
}

/// The storage of a GPU tensor: a pooled buffer, the error that prevented
/// producing it, or — until something needs it — the pending elementwise
/// expression that will compute it (see [`fusion`](super::fusion)).
pub(crate) struct GpuBuffer(Arc<Cell>);

pub(crate) struct Cell {
    ready: OnceLock<Result<Arc<Pooled>, Error>>,
    pending: Mutex<Option<(Arc<Context>, Expr)>>,
}

impl Cell {
    /// The buffer, computing it first if it is pending.
    fn get(&self) -> Result<&Arc<Pooled>, &Error> {
        self.ready
            .get_or_init(|| {
                let (ctx, expr) = lock(&self.pending).take().expect("a GPU buffer is either ready or pending");
                fusion::run(&ctx, &expr)
            })
            .as_ref()
    }

    /// Computes the buffer now if it is pending.
    pub fn run(&self) {
        let _ = self.get();
    }

    /// Computes the buffer now if it is pending and reads `buffer`.
    pub fn run_if_reads(&self, buffer: &Arc<Pooled>) {
        let reads = lock(&self.pending).as_ref().is_some_and(|(_, e)| e.reads(buffer));
        if reads {
            self.run();
        }
    }

    pub fn is_pending(&self) -> bool {
        lock(&self.pending).is_some()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GpuBuffer {
    pub fn ready(result: Result<Arc<Pooled>, Error>) -> Self {
        GpuBuffer(Arc::new(Cell { ready: OnceLock::from(result), pending: Mutex::new(None) }))
    }

    pub fn poisoned(error: Error) -> Self {
        Self::ready(Err(error))
    }

    /// A buffer `expr` computes when it is first needed.
    pub fn pending(ctx: &Arc<Context>, expr: Expr) -> Self {
        let cell = Arc::new(Cell { ready: OnceLock::new(), pending: Mutex::new(Some((ctx.clone(), expr))) });
        ctx.register_pending(Arc::downgrade(&cell));
        GpuBuffer(cell)
    }

    /// The buffer (computed first if it was pending) or its error.
    pub fn get(&self) -> Result<&Arc<Pooled>, &Error> {
        self.0.get()
    }

    /// The expression computing this buffer, while it is pending.
    pub fn expr(&self) -> Option<Expr> {
        lock(&self.0.pending).as_ref().map(|(_, e)| e.clone())
    }

    /// The first error among `buffers`, if any is poisoned.
    pub fn first_error<'a>(buffers: impl IntoIterator<Item = &'a GpuBuffer>) -> Option<Error> {
        buffers.into_iter().find_map(|b| b.get().err().cloned())
    }

    pub fn wgpu(&self) -> Option<&wgpu::Buffer> {
        self.get().ok().map(|p| &p.buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class(0), 16);
        assert_eq!(size_class(16), 16);
        assert_eq!(size_class(20), 32);
        assert_eq!(size_class(4000), 4096);
        assert_eq!(size_class(4097), 4608);
        for bytes in (4u64..400_000).step_by(4 * 97) {
            let c = size_class(bytes);
            let wanted = bytes.div_ceil(16) * 16;
            assert!(c >= wanted && (c - wanted) * 8 <= wanted, "{bytes} -> {c}");
            // Whole vec4s, as the elementwise kernels read and write.
            assert_eq!(c % 16, 0, "{bytes} -> {c}");
        }
    }
}
