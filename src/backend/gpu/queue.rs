//! Recording, batching, submission and readback.
//!
//! Dispatches are recorded into one long-lived compute pass and submitted
//! in batches of [`SUBMIT_EVERY`]: often enough that the GPU starts on a
//! long chain while the host is still recording it, rarely enough that
//! submission overhead stays small. Only a read back waits for the GPU.
//!
//! The queue owns one invariant: `write_buffer` lands before the next
//! submission's commands, so a pooled buffer that recorded (unsubmitted)
//! commands still read must not be overwritten before those commands are
//! submitted — [`Queue::write`] submits first.

use super::Health;
use super::lock;
use super::pool::size_class;
use super::profile::{EventInfo, Profile, Recording};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Dispatches recorded before the batch is submitted without being asked.
const SUBMIT_EVERY: u32 = 128;

/// The encoder and compute pass currently recording.
#[derive(Default)]
struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: u32,
    /// While profiling: the batch's timestamp queries (two per dispatch)
    /// and the profile events they time, in order.
    timing: Option<(wgpu::QuerySet, Vec<usize>)>,
    /// While profiling: the profile being recorded.
    profile: Option<Recording>,
}

pub(crate) struct Queue {
    device: wgpu::Device,
    queue: wgpu::Queue,
    batch: Mutex<Batch>,
    /// Mappable buffers for reading back, by size class: a loop that reads
    /// its loss every step would otherwise create one per step.
    staging: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Kernels dispatched since the device was opened.
    dispatched: AtomicU64,
    /// Whether a profile is being recorded (read without the lock, on every
    /// dispatch).
    profiling: AtomicBool,
    /// Whether the device has timestamp queries (`TIMESTAMP_QUERY`).
    timestamps: bool,
}

/// What one dispatch binds and runs.
pub(crate) struct Dispatch<'a> {
    pub pipeline: &'a wgpu::ComputePipeline,
    pub bind_group: &'a wgpu::BindGroup,
    pub immediates: &'a [u8],
    pub groups: [u32; 3],
}

impl Queue {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let timestamps = device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        Queue {
            device,
            queue,
            batch: Mutex::default(),
            staging: Mutex::default(),
            dispatched: AtomicU64::new(0),
            profiling: AtomicBool::new(false),
            timestamps,
        }
    }

    /// Whether dispatches are being profiled.
    pub fn profiling(&self) -> bool {
        self.profiling.load(Ordering::Relaxed)
    }

    /// Starts a profile (dropping one being recorded).
    pub fn start_profiling(&self) {
        let mut batch = self.batch();
        // Work recorded before belongs to no profile: submit it untimed.
        self.submit_batch(&mut batch);
        batch.profile = Some(Recording::new());
        self.profiling.store(true, Ordering::Relaxed);
    }

    /// Ends the profile: waits for the GPU and reads the timestamps back.
    pub fn stop_profiling(&self, health: &Health, device_name: String) -> Result<Profile> {
        let (recording, index) = {
            let mut batch = self.batch();
            self.profiling.store(false, Ordering::Relaxed);
            let index = self.submit_batch(&mut batch);
            (batch.profile.take(), index)
        };
        let Some(mut recording) = recording else {
            return Ok(Profile { device: device_name, gpu_timing: self.timestamps, ..Profile::default() });
        };
        // Every batch's timestamps, mapped together: one wait.
        let buffers: Vec<(&wgpu::Buffer, u64)> =
            recording.pending.iter().map(|(b, events)| (b, (events.len() * 16) as u64)).collect();
        let stamps = self.map_read(&buffers, index, health, "reading the profiler's timestamps", |bytes| {
            bytemuck::pod_collect_to_vec::<u8, u64>(bytes)
        })?;
        let mut ticks: Vec<(usize, u64, u64)> = Vec::new();
        for ((_, events), stamps) in recording.pending.iter().zip(stamps) {
            ticks.extend(events.iter().enumerate().map(|(i, &e)| (e, stamps[2 * i], stamps[2 * i + 1])));
        }
        let period = f64::from(self.queue.get_timestamp_period());
        let first = ticks.iter().map(|t| t.1).min().unwrap_or(0);
        let ns = |t: u64| std::time::Duration::from_nanos((t as f64 * period) as u64);
        for (e, begin, end) in ticks {
            recording.events[e].gpu_start = Some(ns(begin.saturating_sub(first)));
            recording.events[e].gpu = Some(ns(end.saturating_sub(begin)));
        }
        Ok(Profile { events: recording.events, gpu_timing: self.timestamps, device: device_name })
    }

    fn batch(&self) -> MutexGuard<'_, Batch> {
        lock(&self.batch)
    }

    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Relaxed)
    }

    /// Records one dispatch into the current pass; while profiling, `info`
    /// (built only then) describes it, and with timestamp queries it gets a
    /// pass of its own, timed.
    pub fn dispatch(&self, d: Dispatch, info: Option<EventInfo>) {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        let mut batch = self.batch();
        match info {
            Some(info) if batch.profile.is_some() && self.timestamps => self.dispatch_timed(&mut batch, d, info),
            info => {
                let pass = self.pass(&mut batch);
                pass.set_pipeline(d.pipeline);
                pass.set_bind_group(0, d.bind_group, &[]);
                pass.set_immediates(0, d.immediates);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                // Without timestamps, profiled dispatches share the pass.
                if let (Some(info), Some(profile)) = (info, batch.profile.as_mut()) {
                    profile.push(info, d.groups);
                }
            }
        }
        batch.dispatches += 1;
        if batch.dispatches >= SUBMIT_EVERY {
            self.submit_batch(&mut batch);
        }
    }

    /// A profiled dispatch in a compute pass of its own, with timestamps
    /// written at its start and end.
    fn dispatch_timed(&self, batch: &mut Batch, d: Dispatch, info: EventInfo) {
        let (set, slot) = {
            let (set, events) = batch.timing.get_or_insert_with(|| {
                let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("wgrad profiler"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * SUBMIT_EVERY,
                });
                (set, Vec::new())
            });
            (set.clone(), events.len() as u32)
        };
        let encoder = self.encoder(batch);
        {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(2 * slot),
                end_of_pass_write_index: Some(2 * slot + 1),
            };
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(writes) });
            pass.set_pipeline(d.pipeline);
            pass.set_bind_group(0, d.bind_group, &[]);
            pass.set_immediates(0, d.immediates);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
        let event = batch.profile.as_mut().expect("profiling").push(info, d.groups);
        batch.timing.as_mut().expect("just made").1.push(event);
    }

    /// The compute pass being recorded, opened if there is none.
    fn pass<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::ComputePass<'static> {
        if batch.pass.is_none() {
            let encoder = self.encoder(batch);
            batch.pass = Some(
                encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None })
                    .forget_lifetime(),
            );
        }
        batch.pass.as_mut().expect("just opened")
    }

    /// Ends the pass and returns the encoder, for commands outside passes.
    fn encoder<'b>(&self, batch: &'b mut Batch) -> &'b mut wgpu::CommandEncoder {
        batch.pass = None;
        batch.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgrad") })
        })
    }

    fn submit_batch(&self, batch: &mut Batch) -> Option<wgpu::SubmissionIndex> {
        batch.pass = None;
        let mut encoder = batch.encoder.take()?;
        batch.dispatches = 0;
        // While profiling: resolve the batch's timestamps into a buffer
        // the profile reads when it stops.
        let timing = batch.timing.take().filter(|(_, events)| !events.is_empty()).map(|(set, events)| {
            let bytes = (events.len() * 16) as u64;
            let buffer = |usage| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgrad profiler"),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            encoder.resolve_query_set(&set, 0..2 * events.len() as u32, &resolved, 0);
            encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
            (readback, events)
        });
        let index = self.queue.submit([encoder.finish()]);
        if let (Some(timing), Some(profile)) = (timing, batch.profile.as_mut()) {
            profile.pending.push(timing);
        }
        Some(index)
    }

    /// Submits what is recorded (if anything) and returns its index.
    pub fn submit(&self) -> Option<wgpu::SubmissionIndex> {
        self.submit_batch(&mut self.batch())
    }

    /// Waits for a submission (or, with `None`, for everything) to finish.
    pub fn wait(&self, index: Option<wgpu::SubmissionIndex>, health: &Health) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: index, timeout: None })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        health.check()
    }

    /// Writes `data` to the start of `buffer`, after every command recorded
    /// so far (which may still read the buffer's old contents).
    pub fn write(&self, buffer: &wgpu::Buffer, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.submit();
        self.queue.write_buffer(buffer, 0, data);
    }

    /// Copies the first `bytes` (a multiple of 4) of `src` into `dst`,
    /// after every command recorded so far.
    pub fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        if bytes > 0 {
            let mut batch = self.batch();
            self.encoder(&mut batch).copy_buffer_to_buffer(src, 0, dst, 0, bytes);
        }
    }

    /// Reads back the first `bytes` (a multiple of 4) of each `(buffer,
    /// bytes)` as u32 words, after all work recorded before this call, in
    /// one submission and one wait.
    pub fn read(&self, sources: &[(&wgpu::Buffer, u64)], health: &Health) -> Result<Vec<Vec<u32>>> {
        let staging: Vec<(wgpu::Buffer, u64)> = sources
            .iter()
            .map(|&(_, bytes)| {
                let size = size_class(bytes).expect("a bound buffer's size has a class");
                let reused = lock(&self.staging).get_mut(&size).and_then(Vec::pop);
                let buffer = reused.unwrap_or_else(|| {
                    self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("readback"),
                        size,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                });
                (buffer, size)
            })
            .collect();
        let index = {
            let mut batch = self.batch();
            let encoder = self.encoder(&mut batch);
            for ((src, bytes), (dst, _)) in sources.iter().zip(&staging) {
                if *bytes > 0 {
                    encoder.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
                }
            }
            self.submit_batch(&mut batch)
        };
        let mapped: Vec<(&wgpu::Buffer, u64)> = staging.iter().zip(sources).map(|((b, _), &(_, n))| (b, n)).collect();
        let out = self.map_read(&mapped, index, health, "reading back a tensor", bytemuck::pod_collect_to_vec)?;
        for (buffer, size) in staging {
            lock(&self.staging).entry(size).or_default().push(buffer);
        }
        Ok(out)
    }

    /// Maps each `(buffer, bytes)` (submitted, at the latest in `index`)
    /// for reading, waits for the GPU once, and returns `f` of each one's
    /// first `bytes` bytes, unmapping it after.
    fn map_read<T>(
        &self,
        buffers: &[(&wgpu::Buffer, u64)],
        index: Option<wgpu::SubmissionIndex>,
        health: &Health,
        what: &str,
        f: impl Fn(&[u8]) -> T,
    ) -> Result<Vec<T>> {
        let mut receivers = Vec::with_capacity(buffers.len());
        for &(buffer, bytes) in buffers {
            let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
            buffer.map_async(wgpu::MapMode::Read, ..bytes.max(4), move |r| {
                let _ = sender.send(r);
            });
            receivers.push(receiver);
        }
        self.wait(index, health)?;
        let mut out = Vec::with_capacity(buffers.len());
        for (&(buffer, bytes), receiver) in buffers.iter().zip(receivers) {
            match pollster::block_on(receiver.receive()) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(health.lost().unwrap_or_else(|| Error::Gpu(format!("{what}: {e}")))),
                None => return Err(Error::Gpu(format!("{what}: the map callback never ran"))),
            }
            let data = {
                let view = buffer.get_mapped_range(..bytes.max(4)).map_err(|e| Error::Gpu(format!("{what}: {e}")))?;
                f(&view[..bytes as usize])
            };
            buffer.unmap();
            out.push(data);
        }
        Ok(out)
    }

    /// Drops the cached readback buffers.
    pub fn clear_staging(&self) {
        lock(&self.staging).clear();
    }
}
