//! Matmul and convolution autotuning: at the first product of a shape
//! class on an adapter,
//! a few candidate kernel configurations (the subgroup kernel at several
//! workgroup sizes, the workgroup-tiled kernel at several tile shapes, all
//! through override constants: one kernel design, its sizes tuned) are each
//! timed once on scratch operands of that shape, and the fastest is used
//! for every later product of the class — burn's autotune, cuBLAS's
//! heuristics measured instead of guessed.
//!
//! - **Shape class**: M, N and K each rounded up to a power of two, whether
//!   it is batched, and the transpose flags; for a convolution, which of
//!   its three products, its channels, kernel, strides, dilation and groups,
//!   and its image size and batch rounded up to powers of two (timed on at
//!   most 8 images). Products below
//!   [`MIN_WORK`] multiply-adds keep the adapter's default (timing them
//!   would cost more than it could save); candidates are timed on the
//!   product cut to [`TUNE_EDGE`] per axis, best of two submissions of
//!   [`REPS`] products.
//! - **Cache**: per process, keyed by adapter (name, driver, backend,
//!   subgroups on or off) and class, so every device on one adapter picks
//!   the same kernels (results stay bit-identical between them); and on
//!   disk, one line per decision, in `WGRAD_AUTOTUNE_CACHE` (default
//!   `$XDG_CACHE_HOME/wgrad/autotune-v1.txt`, else
//!   `~/.cache/wgrad/autotune-v1.txt`; `off` keeps it in memory), so a
//!   later run on the same adapter and driver starts tuned.
//! - **On** for hardware GPUs; **off** by default on software rasterisers
//!   (lavapipe: most of a second per new class, for defaults chosen for
//!   them), with `WGRAD_AUTOTUNE=0`, on the noop adapter (nothing to time),
//!   and while profiling (the candidates would fill the trace) no new
//!   class is tuned; classes already decided keep their kernel.
//!   `WGRAD_AUTOTUNE=1` turns it on for software adapters too.
//!
//! Different tile shapes sum a row's products in different orders, so two
//! runs whose tuning picked differently can differ in the last bits; the
//! disk cache (or `WGRAD_AUTOTUNE=0`) makes runs repeatable.

use super::device::Tuning;
use super::matmul::{SUBGROUP_TILE_COLS, SUBGROUP_TILE_ROWS, TILED_THREAD_TILE};
use super::{Context, lock};
use crate::backend::{ConvSpec, MatmulSpec};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Products smaller than this many multiply-adds keep the default (2²⁵,
/// a 320³ product): below it a real GPU is bound by launch cost, not by
/// the kernel's tiling, and tuning would cost more than it could save.
pub(super) const MIN_WORK: usize = 1 << 25;

/// Candidates are timed on the class's product cut to at most this many
/// rows, columns and inner steps (and 4 batch entries): enough to rank
/// tilings, and a bounded cost at first use on a slow adapter (a 2048³
/// product times 8 candidates took 37 s on lavapipe; cut, well under 1 s).
const TUNE_EDGE: usize = 512;

/// Products per timed submission.
const REPS: usize = 3;

/// A matmul kernel configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Choice {
    /// matmul.wgsl with this workgroup size (a multiple of the subgroup size).
    Subgroup { wg: u32 },
    /// matmul_tiled.wgsl with WM × WN invocations and a K step of BK.
    Tiled { wm: u32, wn: u32, bk: u32 },
}

impl Choice {
    /// Whether it is the subgroup kernel, its size constants, and the
    /// grid's x and y over an `m × n` output.
    pub(super) fn grid(&self, m: usize, n: usize) -> (bool, Vec<(&'static str, f64)>, [u32; 2]) {
        let (m, n) = (m as u32, n as u32);
        match *self {
            Choice::Subgroup { wg } => {
                (true, vec![("WG", wg as f64)], [n.div_ceil(wg * SUBGROUP_TILE_COLS), m.div_ceil(SUBGROUP_TILE_ROWS)])
            }
            Choice::Tiled { wm, wn, bk } => (
                false,
                vec![("WM", wm as f64), ("WN", wn as f64), ("BK", bk as f64)],
                [n.div_ceil(wn * TILED_THREAD_TILE), m.div_ceil(wm * TILED_THREAD_TILE)],
            ),
        }
    }

    /// The adapter's default (no tuning).
    pub(super) fn default_for(ctx: &Context) -> Choice {
        Choice::of_tuning(&ctx.tuning)
    }

    /// The configuration an adapter class's tuning table names.
    pub(super) fn of_tuning(t: &Tuning) -> Choice {
        match t.matmul_subgroup_wg {
            Some(wg) => Choice::Subgroup { wg },
            None => Choice::Tiled { wm: t.matmul_wm, wn: t.matmul_wn, bk: t.matmul_bk },
        }
    }

    /// Written as in the cache file and `GpuDevice::matmul_kernels`:
    /// `subgroup 32`, `tiled 8 8 32`.
    pub(crate) fn text(&self) -> String {
        match self {
            Choice::Subgroup { wg } => format!("subgroup {wg}"),
            Choice::Tiled { wm, wn, bk } => format!("tiled {wm} {wn} {bk}"),
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Choice> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let num = |i: usize| words.get(i)?.parse::<u32>().ok().filter(|&v| v > 0 && v <= 1024);
        match *words.first()? {
            "subgroup" if words.len() == 2 => Some(Choice::Subgroup { wg: num(1)? }),
            "tiled" if words.len() == 4 => Some(Choice::Tiled { wm: num(1)?, wn: num(2)?, bk: num(3)? }),
            _ => None,
        }
    }
}

/// Every configuration this adapter can run: the default first.
pub(crate) fn candidates(ctx: &Context) -> Vec<Choice> {
    let mut out = vec![Choice::default_for(ctx)];
    let max_invocations = ctx.limits.max_compute_invocations_per_workgroup.min(256);
    if ctx.tuning.matmul_subgroup_wg.is_some() {
        let sg = ctx.info.subgroup_max_size.max(1);
        for wg in [sg, 2 * sg, 4 * sg] {
            if wg <= max_invocations {
                out.push(Choice::Subgroup { wg });
            }
        }
    }
    // Tiles of vec4s: (BK·WM + BK·WN) · 16 bytes of workgroup memory.
    let memory = ctx.limits.max_compute_workgroup_storage_size.min(16 << 10);
    for (wm, wn, bk) in [(8, 8, 32), (16, 16, 16), (8, 8, 16), (16, 8, 16), (8, 16, 16)] {
        if wm * wn <= max_invocations && (bk * wm + bk * wn) * 16 <= memory {
            out.push(Choice::Tiled { wm, wn, bk });
        }
    }
    let mut seen = Vec::new();
    out.retain(|c| {
        let new = !seen.contains(c);
        seen.push(*c);
        new
    });
    out
}

/// A product's shape class.
fn class(s: &MatmulSpec) -> String {
    let p = |v: usize| v.max(1).next_power_of_two();
    format!(
        "{}x{}x{}{}{}{}",
        p(s.m),
        p(s.n),
        p(s.k),
        if s.batch > 1 { " batched" } else { "" },
        if s.trans_a { " ta" } else { "" },
        if s.trans_b { " tb" } else { "" }
    )
}

/// The adapter as the cache knows it.
fn adapter(ctx: &Context) -> String {
    let i = &ctx.info;
    let subgroups = if ctx.tuning.matmul_subgroup_wg.is_some() { "subgroups" } else { "no subgroups" };
    format!("{} | {} {} | {:?} | {subgroups}", i.name, i.driver, i.driver_info, i.backend).replace(['\t', '\n'], " ")
}

type Cache = HashMap<(String, String), Choice>;

/// The process's decisions, the disk cache's read in at first use.
fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let mut map = HashMap::new();
        if let Some(bytes) = file().and_then(|f| std::fs::read(f).ok()) {
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines() {
                let mut fields = line.split('\t');
                if let (Some(a), Some(c), Some(choice), None) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                    && let Some(choice) = Choice::parse(choice)
                {
                    map.insert((a.to_string(), c.to_string()), choice);
                }
            }
        }
        Mutex::new(map)
    })
}

/// The disk cache's path, or `None` (`WGRAD_AUTOTUNE_CACHE=off`, no home).
fn file() -> Option<PathBuf> {
    match std::env::var_os("WGRAD_AUTOTUNE_CACHE") {
        Some(p) if p == "off" => None,
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(base.join("wgrad").join("autotune-v1.txt"))
        }
    }
}

/// Whether a new class may be tuned now (a tuned one is used regardless):
/// `WGRAD_AUTOTUNE=1` or `0` if set, else on hardware GPUs only — on a
/// software rasteriser each new class costs most of a second (a first
/// training step at batch 512 took 4.6 s on lavapipe) and the defaults
/// were chosen for it.
fn enabled(ctx: &Context) -> bool {
    static SETTING: OnceLock<Option<bool>> = OnceLock::new();
    let setting = *SETTING.get_or_init(|| std::env::var("WGRAD_AUTOTUNE").ok().map(|v| v.trim() != "0"));
    let software = ctx.info.device_type == wgpu::DeviceType::Cpu;
    // Not while capturing a step: its timing dispatches would be recorded
    // (a step is captured after an eager warm-up, which tunes).
    setting.unwrap_or(!software)
        && ctx.info.backend != wgpu::Backend::Noop
        && !ctx.queue.profiling()
        && !super::capture::capturing(ctx)
}

/// The kernel for product `s`: a device's forced choice, the tuned one for
/// its class (tuning it now if it is new), or `None` for the default.
pub(super) fn choose(ctx: &Context, s: &MatmulSpec) -> Option<Choice> {
    let work = s.batch.saturating_mul(s.m).saturating_mul(s.n).saturating_mul(s.k);
    choose_class(ctx, class(s), work, &|| tune(ctx, s))
}

/// As [`choose`], for product `mode` (conv.wgsl's MODE) of convolution `s`.
pub(super) fn choose_conv(ctx: &Context, s: &ConvSpec, mode: super::conv::Mode) -> Option<Choice> {
    let work = s.output_len().saturating_mul(s.patch());
    choose_class(ctx, conv_class(s, mode), work, &|| tune_conv(ctx, s, mode))
}

/// The choice for a class: forced, decided before, tuned now by `tune`,
/// or `None` (the default) below [`MIN_WORK`] or when tuning is off.
fn choose_class(ctx: &Context, class: String, work: usize, tune: &dyn Fn() -> crate::Result<Choice>) -> Option<Choice> {
    if let Some(forced) = *lock(&ctx.matmul_forced) {
        return Some(forced);
    }
    if work < MIN_WORK {
        return None;
    }
    let key = (adapter(ctx), class);
    // A decision made before (also while profiling, so a profile shows the
    // kernels a normal run uses), if this adapter offers it: a disk cache
    // edited by hand or written by another version may name others.
    if let Some(&c) = lock(cache()).get(&key)
        && candidates(ctx).contains(&c)
    {
        return Some(c);
    }
    if !enabled(ctx) {
        return None;
    }
    // Timed outside the cache's lock; two threads meeting a new class at
    // once both time it, and the first to finish decides. A tuning that
    // fails (out of memory for the scratch operands, a lost device) keeps
    // the default for the rest of the process rather than retrying at
    // every product.
    let Ok(choice) = tune() else {
        lock(cache()).insert(key, Choice::default_for(ctx));
        return None;
    };
    let mut cache = lock(cache());
    let choice = *cache.entry(key.clone()).or_insert(choice);
    drop(cache);
    if let Some(path) = file() {
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path));
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            // One write per line, appended: concurrent processes interleave
            // whole lines.
            let _ = f.write_all(format!("{}\t{}\t{}\n", key.0, key.1, choice.text()).as_bytes());
        }
    }
    Some(choice)
}

/// A convolution product's shape class.
fn conv_class(s: &ConvSpec, mode: super::conv::Mode) -> String {
    let p = |v: usize| v.max(1).next_power_of_two();
    format!(
        "conv {mode:?} n{} {}x{}x{}→{} k{}x{} s{}x{} p{}x{} d{}x{} g{}",
        p(s.n),
        s.c_in,
        p(s.h),
        p(s.w),
        s.c_out,
        s.kh,
        s.kw,
        s.sh,
        s.sw,
        s.ph,
        s.pw,
        s.dh,
        s.dw,
        s.groups
    )
}

/// Times every candidate with `record` (which records one product with
/// the given kernel on scratch operands), after a warm-up run that
/// compiles its pipeline: the best of two submissions of [`REPS`] products
/// each, so submission latency does not decide on a fast GPU. Returns the
/// fastest.
fn fastest(ctx: &Context, record: &dyn Fn(Choice) -> crate::Result<()>) -> crate::Result<Choice> {
    let mut best: Option<(Duration, Choice)> = None;
    for c in candidates(ctx) {
        record(c)?;
        ctx.queue.wait(ctx.queue.submit(), &ctx.health)?;
        let mut took = Duration::MAX;
        for _ in 0..2 {
            let started = Instant::now();
            for _ in 0..REPS {
                record(c)?;
            }
            ctx.queue.wait(ctx.queue.submit(), &ctx.health)?;
            took = took.min(started.elapsed());
        }
        if best.is_none_or(|(t, _)| took < t) {
            best = Some((took, c));
        }
    }
    Ok(best.map_or_else(|| Choice::default_for(ctx), |(_, c)| c))
}

/// Tunes product `mode` of `s` on zero operands of at most 8 images.
fn tune_conv(ctx: &Context, s: &ConvSpec, mode: super::conv::Mode) -> crate::Result<Choice> {
    use super::conv::Mode;
    ctx.lazy.run_all();
    ctx.queue.wait(ctx.queue.submit(), &ctx.health)?;
    let s = &ConvSpec { n: s.n.min(8), ..*s };
    let (a_len, b_len) = match mode {
        Mode::Forward => (s.weight_len(), s.input_len()),
        Mode::InputGrad => (s.weight_len(), s.output_len()),
        Mode::WeightGrad => (s.output_len(), s.input_len()),
    };
    let a = ctx.upload_words("conv autotune", &vec![0u32; a_len], Default::default())?;
    let b = ctx.upload_words("conv autotune", &vec![0u32; b_len], Default::default())?;
    // Each kernel's output length and split-K chunk; one output buffer, as
    // large as the largest, allocated before anything is timed.
    let layout = |c: Choice| match mode {
        Mode::Forward => (s.output_len(), 0),
        Mode::InputGrad => (s.input_len(), 0),
        Mode::WeightGrad => {
            let (splits, k_chunk) = super::conv::weight_grad_split(ctx, s, c);
            (splits * s.weight_len(), k_chunk)
        }
    };
    let out_len = candidates(ctx).into_iter().map(|c| layout(c).0).max().unwrap_or(0);
    let out = ctx.alloc("conv autotune", out_len)?;
    let record = |c: Choice| super::conv::record(ctx, s, mode, c, &a, &b, &out, layout(c).1);
    fastest(ctx, &record)
}

/// Tunes product `s` on zero operands of its shape, cut to [`TUNE_EDGE`].
fn tune(ctx: &Context, s: &MatmulSpec) -> crate::Result<Choice> {
    // Start from an idle queue, so no earlier work is timed.
    ctx.lazy.run_all();
    ctx.queue.wait(ctx.queue.submit(), &ctx.health)?;
    let (m, n, k) = (s.m.min(TUNE_EDGE), s.n.min(TUNE_EDGE), s.k.min(TUNE_EDGE));
    let s = &MatmulSpec {
        batch: s.batch.min(4),
        m,
        n,
        k,
        a_batch_stride: if s.a_batch_stride == 0 { 0 } else { m * k },
        b_batch_stride: if s.b_batch_stride == 0 { 0 } else { k * n },
        ..*s
    };
    let a_len = s.a_batch_stride * (s.batch - 1) + s.m * s.k;
    let b_len = s.b_batch_stride * (s.batch - 1) + s.k * s.n;
    let a = ctx.upload_words("matmul autotune", &vec![0u32; a_len], Default::default())?;
    let b = ctx.upload_words("matmul autotune", &vec![0u32; b_len], Default::default())?;
    let out = ctx.alloc("matmul autotune", s.batch * s.m * s.n)?;
    fastest(ctx, &|c| super::matmul::record_product(ctx, c, &a, &b, &out, s))
}

/// The decisions made so far for `ctx`'s adapter (class, kernel), sorted.
pub(super) fn decisions(ctx: &Context) -> Vec<(String, String)> {
    let me = adapter(ctx);
    let mut out: Vec<(String, String)> =
        lock(cache()).iter().filter(|((a, _), _)| *a == me).map(|((_, c), k)| (c.clone(), k.text())).collect();
    out.sort();
    out
}
