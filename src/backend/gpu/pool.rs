//! GPU buffers and the pool they come from.
//!
//! Creating a wgpu buffer costs a driver allocation; a training step makes
//! dozens of tensors of the same few sizes. Buffers therefore go back to a
//! pool when their tensor drops and are reused by the next tensor of the same
//! size class. Size classes are `m · 2^e` with `m` in 8..16 — at most 12.5%
//! over the request — so a pool hit needs an exact class match and never
//! hands a small tensor a huge buffer.
//!
//! The pool owns one invariant: a buffer it hands back to the driver may
//! still be used by commands that are recorded but not yet submitted, so it
//! is *dropped* (wgpu frees it once no command needs it), never destroyed.

use super::lock;
use super::taint::Taint;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

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

/// Free buffers by size class, and the device that makes new ones.
pub(crate) struct Pool {
    device: wgpu::Device,
    /// The largest buffer a kernel may bind on this adapter.
    limit: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: MemoryStats,
}

/// The size of the buffer that holds `bytes` under a binding limit of
/// `limit`: its class, cut to the limit (rounded down to 16 bytes), or
/// `None` where even that is too small. A limit that is not a multiple of
/// 16 (2³¹ - 4 on desktop Vulkan and DX12) leaves the last few sizes under
/// it without a buffer that holds them.
fn class_within(bytes: u64, limit: u64) -> Option<u64> {
    let class = size_class(bytes)?.min(limit.max(16) & !15);
    (bytes <= limit && class >= bytes).then_some(class)
}

/// The size class of a request of `bytes`: the smallest `m · 2^e ≥ bytes`
/// with `8 ≤ m < 16`, after rounding up to whole 16-byte vec4s (elementwise
/// kernels read and write whole vec4s; an empty buffer cannot be bound).
/// Classes are multiples of 16: below 128 bytes the step divides 16. `None`
/// when the class would not fit in a `u64`.
pub(crate) fn size_class(bytes: u64) -> Option<u64> {
    let bytes = bytes.max(1).checked_next_multiple_of(16)?;
    let e = (63 - bytes.leading_zeros()).saturating_sub(3);
    let step = 1u64 << e;
    bytes.checked_next_multiple_of(step)
}

impl Pool {
    pub fn new(device: wgpu::Device, limit: u64) -> Arc<Pool> {
        Arc::new(Pool { device, limit, state: Mutex::default() })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The largest tensor, in bytes, a kernel can bind.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn stats(&self) -> MemoryStats {
        self.state().stats
    }

    /// A buffer for `n` f32s, from the pool when one of its class is free.
    /// When the driver refuses a new one, `release` is called once to give
    /// memory back (the pool's own buffers, caches holding others, and the
    /// wait for the GPU that lets the driver free them) and the allocation
    /// is tried again. `op` names the op in errors.
    pub fn alloc(self: &Arc<Self>, op: &'static str, n: usize, release: impl FnOnce()) -> Result<Arc<Pooled>> {
        let too_large = || Error::TooLarge { op, bytes: (n as u64).saturating_mul(4), limit: self.limit };
        let class =
            (n as u64).checked_mul(4).and_then(|bytes| class_within(bytes, self.limit)).ok_or_else(too_large)?;
        let pooled = self.take(class);
        let buffer = match pooled {
            Some(buffer) => buffer,
            None => match self.create(class) {
                Ok(b) => b,
                Err(_) => {
                    release();
                    self.create(class)?
                }
            },
        };
        Ok(Arc::new(Pooled { buffer, class, pool: self.clone(), taint: Taint::default() }))
    }

    fn take(&self, class: u64) -> Option<wgpu::Buffer> {
        let mut state = self.state();
        let buffer = state.free.get_mut(&class)?.pop()?;
        state.stats.pooled_bytes -= class;
        state.stats.live_bytes += class;
        Some(buffer)
    }

    fn create(&self, class: u64) -> Result<wgpu::Buffer> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: class,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory(format!("allocating {class} bytes: {e}")));
        }
        let mut state = self.state();
        state.stats.allocations += 1;
        state.stats.live_bytes += class;
        Ok(buffer)
    }

    fn release(&self, buffer: wgpu::Buffer, class: u64) {
        let mut state = self.state();
        state.stats.live_bytes -= class;
        state.stats.pooled_bytes += class;
        state.free.entry(class).or_default().push(buffer);
    }

    /// Hands every pooled buffer back to the driver. They are dropped, not
    /// destroyed: commands recorded but not yet submitted may still use one,
    /// and wgpu frees each once nothing needs it.
    pub fn clear(&self) {
        let mut state = self.state();
        state.free.clear();
        state.stats.pooled_bytes = 0;
    }
}

/// A buffer on loan from the pool; it returns there when the last handle
/// drops (a tensor's storage, or a pending expression reading it).
pub(crate) struct Pooled {
    pub buffer: wgpu::Buffer,
    pub class: u64,
    pool: Arc<Pool>,
    /// The device-side checks whose outcome this buffer's contents depend on.
    pub taint: Taint,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.release(self.buffer.clone(), self.class);
    }
}

#[cfg(test)]
mod tests {
    use super::{class_within, size_class};

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class(0), Some(16));
        assert_eq!(size_class(16), Some(16));
        assert_eq!(size_class(20), Some(32));
        assert_eq!(size_class(4000), Some(4096));
        assert_eq!(size_class(4097), Some(4608));
        for bytes in (4u64..400_000).step_by(4 * 97) {
            let c = size_class(bytes).unwrap();
            let wanted = bytes.div_ceil(16) * 16;
            assert!(c >= wanted && (c - wanted) * 8 <= wanted, "{bytes} -> {c}");
            // Whole vec4s, as the elementwise kernels read and write.
            assert_eq!(c % 16, 0, "{bytes} -> {c}");
        }
    }

    #[test]
    fn a_size_just_under_a_limit_off_the_16_byte_grid_is_too_large() {
        let limit = (1u64 << 31) - 4;
        assert_eq!(class_within(limit & !15, limit), Some(limit & !15));
        for bytes in [(limit & !15) + 4, limit] {
            assert_eq!(class_within(bytes, limit), None, "{bytes}");
        }
        assert_eq!(class_within(limit + 4, limit), None);
        assert_eq!(class_within(100, limit), size_class(100));
    }

    #[test]
    fn size_classes_near_the_top_of_u64_do_not_wrap() {
        assert_eq!(size_class(u64::MAX), None);
        assert_eq!(size_class(u64::MAX - 15), None);
        assert_eq!(size_class(1 << 63), Some(1 << 63));
        assert_eq!(size_class((1 << 63) + 1), Some((1 << 63) + (1 << 60)));
        assert_eq!(size_class((1 << 62) + 1), Some((1 << 62) + (1 << 59)));
    }
}
