//! The kernel profiler: every dispatch between [`GpuDevice::start_profiling`]
//! and [`GpuDevice::stop_profiling`] (or for the whole run with
//! `WGRAD_PROFILE=trace.json`), with the op that issued it, its kernel,
//! workgroups and bound buffers, the host time spent recording it, and —
//! where the adapter has `TIMESTAMP_QUERY` — its GPU time, from timestamps
//! written at the start and end of a compute pass of its own (profiling
//! gives up the one long pass a batch otherwise shares, which is part of
//! the profiler's own overhead).
//!
//! [`Profile::table`] prints the top kernels as `torch.profiler`'s
//! `key_averages()` does; [`Profile::chrome_trace`] writes the Chrome trace
//! event format that Perfetto (ui.perfetto.dev) and `chrome://tracing`
//! open: one track for the host, one for the GPU.
//!
//! [`GpuDevice::start_profiling`]: super::GpuDevice::start_profiling
//! [`GpuDevice::stop_profiling`]: super::GpuDevice::stop_profiling

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

thread_local! {
    /// The op whose kernels this thread is recording (set by
    /// `Context::compute_many` around its `fill`).
    static CURRENT_OP: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs `f` with `op` as the current op of this thread's dispatches.
pub(crate) fn with_op<R>(op: &'static str, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT_OP.with(|c| c.replace(Some(op)));
    let r = f();
    CURRENT_OP.with(|c| c.set(previous));
    r
}

/// The op recording on this thread, if one said so.
pub(crate) fn current_op() -> Option<&'static str> {
    CURRENT_OP.with(Cell::get)
}

/// One kernel dispatch, as the profiler saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelEvent {
    /// The op that dispatched it (`"matmul"`, `"layer_norm_backward"`,
    /// `"fused"` for a generated elementwise kernel, or the kernel's family
    /// for work outside an op, such as an optimizer step).
    pub op: String,
    /// The kernel: WGSL file stem and entry point (`"matmul::main"`), or
    /// `"fused"`.
    pub kernel: String,
    /// Workgroups dispatched along x, y and z.
    pub workgroups: [u32; 3],
    /// The size in f32 elements of each buffer bound, by binding slot.
    pub elements: Vec<u64>,
    /// When recording began, from the start of profiling.
    pub host_start: Duration,
    /// Host time spent recording it: pipeline and bind-group lookup,
    /// encoding, and the submission of a full batch.
    pub host: Duration,
    /// When it started on the GPU, from the first GPU timestamp of the
    /// profile (the GPU clock is not the host's: the two tracks of the
    /// Chrome trace are aligned at their first event).
    pub gpu_start: Option<Duration>,
    /// Its GPU time, from timestamp queries; `None` where the adapter has
    /// no `TIMESTAMP_QUERY`.
    pub gpu: Option<Duration>,
}

/// Every kernel dispatched while profiling, in dispatch order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// The dispatches.
    pub events: Vec<KernelEvent>,
    /// Whether GPU times were measured (the adapter has `TIMESTAMP_QUERY`).
    pub gpu_timing: bool,
    /// The adapter, for the table's title.
    pub device: String,
}

/// One row of [`Profile::key_averages`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelAverage {
    /// The op.
    pub op: String,
    /// The kernel.
    pub kernel: String,
    /// Dispatches.
    pub calls: usize,
    /// Host time recording them, in total.
    pub host: Duration,
    /// GPU time, in total (zero without timestamps).
    pub gpu: Duration,
}

impl Profile {
    /// Events grouped by (op, kernel), most GPU time first (most host time
    /// first without GPU timing).
    pub fn key_averages(&self) -> Vec<KernelAverage> {
        let mut rows: HashMap<(&str, &str), KernelAverage> = HashMap::new();
        for e in &self.events {
            let row = rows.entry((&e.op, &e.kernel)).or_insert_with(|| KernelAverage {
                op: e.op.clone(),
                kernel: e.kernel.clone(),
                calls: 0,
                host: Duration::ZERO,
                gpu: Duration::ZERO,
            });
            row.calls += 1;
            row.host += e.host;
            row.gpu += e.gpu.unwrap_or_default();
        }
        let mut rows: Vec<KernelAverage> = rows.into_values().collect();
        rows.sort_by(|a, b| (b.gpu, b.host, &a.op, &a.kernel).cmp(&(a.gpu, a.host, &b.op, &b.kernel)));
        rows
    }

    /// The `top` rows of [`key_averages`](Self::key_averages) as a table,
    /// with totals.
    pub fn table(&self, top: usize) -> String {
        let rows = self.key_averages();
        let gpu_total: Duration = rows.iter().map(|r| r.gpu).sum();
        let host_total: Duration = rows.iter().map(|r| r.host).sum();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut out = String::new();
        let _ = writeln!(out, "wgrad profile: {} dispatches on {}", self.events.len(), self.device);
        let _ = writeln!(
            out,
            "{:<28} {:<30} {:>7} {:>12} {:>10} {:>12} {:>10} {:>7}",
            "op", "kernel", "calls", "host total", "host avg", "GPU total", "GPU avg", "GPU %"
        );
        for r in rows.iter().take(top) {
            let (gpu, gpu_avg, share) = if self.gpu_timing {
                let share =
                    if gpu_total.is_zero() { 0.0 } else { 100.0 * r.gpu.as_secs_f64() / gpu_total.as_secs_f64() };
                (format!("{:.1} µs", us(r.gpu)), format!("{:.1} µs", us(r.gpu) / r.calls as f64), format!("{share:.1}"))
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            let _ = writeln!(
                out,
                "{:<28} {:<30} {:>7} {:>12} {:>10} {:>12} {:>10} {:>7}",
                r.op,
                r.kernel,
                r.calls,
                format!("{:.1} µs", us(r.host)),
                format!("{:.1} µs", us(r.host) / r.calls as f64),
                gpu,
                gpu_avg,
                share
            );
        }
        if rows.len() > top {
            let _ = writeln!(out, "… {} more rows", rows.len() - top);
        }
        let gpu = if self.gpu_timing {
            format!("{:.1} µs", us(gpu_total))
        } else {
            "not measured (the adapter has no TIMESTAMP_QUERY)".into()
        };
        let _ = writeln!(out, "total: host {:.1} µs recording, GPU {gpu}", us(host_total));
        out
    }

    /// The profile in Chrome's trace event format (JSON): a host track of
    /// recording times and a GPU track of kernel times, each event named by
    /// its op and carrying kernel, workgroups and buffer sizes.
    pub fn chrome_trace(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        // The GPU track starts where the host track's first timed event
        // does: the clocks differ, only durations and order are exact.
        let offset = self.events.iter().find(|e| e.gpu_start.is_some()).map_or(0.0, |e| us(e.host_start));
        let mut out = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n");
        let _ = write!(
            out,
            "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"args\":{{\"name\":{}}}}},\n\
             {{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":1,\"args\":{{\"name\":\"host (recording)\"}}}},\n\
             {{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":2,\"args\":{{\"name\":\"GPU\"}}}}",
            json_string(&format!("wgrad on {}", self.device))
        );
        for e in &self.events {
            let args = format!(
                "{{\"kernel\":{},\"workgroups\":[{},{},{}],\"elements\":[{}]}}",
                json_string(&e.kernel),
                e.workgroups[0],
                e.workgroups[1],
                e.workgroups[2],
                e.elements.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            );
            let name = json_string(&e.op);
            let _ = write!(
                out,
                ",\n{{\"name\":{name},\"cat\":\"host\",\"ph\":\"X\",\"pid\":1,\"tid\":1,\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}}",
                us(e.host_start),
                us(e.host)
            );
            if let (Some(start), Some(dur)) = (e.gpu_start, e.gpu) {
                let _ = write!(
                    out,
                    ",\n{{\"name\":{name},\"cat\":\"gpu\",\"ph\":\"X\",\"pid\":1,\"tid\":2,\"ts\":{:.3},\"dur\":{:.3},\"args\":{args}}}",
                    offset + us(start),
                    us(dur)
                );
            }
        }
        out.push_str("\n]}\n");
        out
    }

    /// Writes [`chrome_trace`](Self::chrome_trace) to `path`.
    pub fn write_chrome_trace(&self, path: impl AsRef<std::path::Path>) -> crate::Result<()> {
        use std::io::Write;
        let trace = self.chrome_trace();
        crate::io::write_atomically(path.as_ref(), |f| f.write_all(trace.as_bytes()))
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a dispatch tells the profiler (built only while profiling).
pub(crate) struct EventInfo {
    pub op: &'static str,
    pub kernel: String,
    pub elements: Vec<u64>,
    pub started: Instant,
}

/// A profile being recorded (inside the queue, under its batch lock).
pub(crate) struct Recording {
    pub origin: Instant,
    pub events: Vec<KernelEvent>,
    /// Timestamps resolved into mappable buffers, submitted: (buffer, the
    /// events whose begin/end pairs it holds, in order).
    pub pending: Vec<(wgpu::Buffer, Vec<usize>)>,
}

impl Recording {
    pub fn new() -> Self {
        Recording { origin: Instant::now(), events: Vec::new(), pending: Vec::new() }
    }

    /// Records one event; its index.
    pub fn push(&mut self, info: EventInfo, workgroups: [u32; 3]) -> usize {
        self.events.push(KernelEvent {
            op: info.op.to_string(),
            kernel: info.kernel,
            workgroups,
            elements: info.elements,
            host_start: info.started.saturating_duration_since(self.origin),
            host: info.started.elapsed(),
            gpu_start: None,
            gpu: None,
        });
        self.events.len() - 1
    }
}

/// `WGRAD_PROFILE`: the devices profiling for the whole run, written out
/// when the process exits.
pub(crate) mod at_exit {
    use super::super::Context;
    use std::path::PathBuf;
    use std::sync::{Mutex, Once, Weak};

    static DEVICES: Mutex<Vec<(Weak<Context>, PathBuf)>> = Mutex::new(Vec::new());

    /// Profiles `ctx` until the process exits, then writes its Chrome trace
    /// to `path` (a second device's to `path.1`, …) and prints its table.
    pub fn register(ctx: &std::sync::Arc<Context>, path: PathBuf) {
        static HOOK: Once = Once::new();
        let mut devices = super::super::lock(&DEVICES);
        let path = match devices.len() {
            0 => path,
            n => PathBuf::from(format!("{}.{n}", path.display())),
        };
        devices.push((std::sync::Arc::downgrade(ctx), path));
        HOOK.call_once(|| {
            // SAFETY: registers a plain `extern "C" fn` with the C runtime.
            unsafe { libc::atexit(write_all) };
        });
    }

    extern "C" fn write_all() {
        // On a thread of its own: by now the main thread's thread-locals
        // (which wgpu's locks use) are destroyed.
        let _ = std::thread::spawn(write_all_now).join();
    }

    fn write_all_now() {
        let devices = std::mem::take(&mut *super::super::lock(&DEVICES));
        for (ctx, path) in devices {
            if let Some(ctx) = ctx.upgrade() {
                report(&ctx, &path);
            }
        }
    }

    /// Ends `ctx`'s profile, prints its table and writes its trace to `path`.
    fn report(ctx: &Context, path: &std::path::Path) {
        match ctx.stop_profiling() {
            Ok(profile) => {
                eprint!("{}", profile.table(20));
                match profile.write_chrome_trace(path) {
                    Ok(()) => eprintln!("wgrad: wrote the kernel trace to {}", path.display()),
                    Err(e) => eprintln!("wgrad: could not write {}: {e}", path.display()),
                }
            }
            Err(e) => eprintln!("wgrad: WGRAD_PROFILE: {e}"),
        }
    }

    /// Forgets a device being dropped, after writing its profile (as at exit).
    pub fn on_drop(ctx: &Context) {
        let mut devices = super::super::lock(&DEVICES);
        let Some(i) = devices.iter().position(|(w, _)| std::ptr::eq(w.as_ptr(), ctx)) else { return };
        let (_, path) = devices.remove(i);
        drop(devices);
        report(ctx, &path);
    }
}
