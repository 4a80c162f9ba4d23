//! How the CPU kernels run their loops: compiled for the widest vector
//! instructions this CPU has, and split over the cores by [`pool`](super::pool)
//! when they are long enough to pay for it.

use super::pool::{self, Chunks};

/// Loops shorter than this stay on one thread: splitting them costs more than
/// it saves (a fork to a spinning worker costs about a microsecond).
pub(super) const PAR_MIN: usize = 1 << 15;
/// Elements per parallel chunk.
pub(super) const CHUNK: usize = 1 << 13;

/// Runs `body` compiled for the widest vector instructions this CPU has,
/// detected at run time: the crate itself is built for baseline x86-64
/// (SSE2), which would leave the loops 4 lanes wide. `body` is inlined into
/// a function with the wider target features, so its loops vectorise for
/// them. Elsewhere, or on older CPUs, it runs as built.
#[inline(always)]
pub(super) fn simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let level = level();
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: the features were detected on this CPU just above.
        match level {
            2 => return unsafe { avx512(body) },
            1 => return unsafe { avx2(body) },
            _ => {}
        }
    }
    body()
}

/// The vector level `simd` runs at: 2 for AVX-512 (F and VL, with AVX2 and
/// FMA), 1 for AVX2 with FMA, 0 for the baseline; detected once.
#[cfg(target_arch = "x86_64")]
fn level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        // Level 2's function enables AVX2 and FMA too: require them, as
        // every AVX-512 processor has them but a hypervisor may hide them.
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
            2
        } else if avx2 {
            1
        } else {
            0
        }
    })
}

/// Fills `out` by calling `f(start, chunk)` on consecutive chunks, over all
/// cores when `out` is large.
pub(super) fn fill_chunks(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN {
        let chunks = Chunks::new(out, CHUNK);
        pool::run(chunks.count(), &|c| {
            // SAFETY: task c takes piece c only (`pool::run` runs each task once).
            let chunk = unsafe { chunks.get(c) };
            simd(
                #[inline(always)]
                || f(c * CHUNK, chunk),
            )
        });
    } else {
        simd(
            #[inline(always)]
            || f(0, out),
        );
    }
}

/// Runs `f(row, out_row)` for each `row_len`-long row of `out`, over all
/// cores when `out` is large.
pub(super) fn for_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if row_len == 0 {
        return;
    }
    let rows = out.len() / row_len;
    if out.len() >= PAR_MIN && rows > 1 {
        // Whole rows per task, about CHUNK elements each.
        let per_task = (CHUNK / row_len).clamp(1, rows.div_ceil(2));
        let chunks = Chunks::new(out, per_task * row_len);
        pool::run(chunks.count(), &|c| {
            // SAFETY: task c takes piece c only (`pool::run` runs each task once).
            let chunk = unsafe { chunks.get(c) };
            simd(
                #[inline(always)]
                || each_row(chunk, row_len, c * per_task, &f),
            )
        });
    } else {
        simd(
            #[inline(always)]
            || each_row(out, row_len, 0, &f),
        );
    }
}

/// `f(first + r, row r)` for the rows of `out`, as a plain index loop: an
/// iterator chain here (`chunks_mut().enumerate().for_each`) was compiled
/// out of line, without the target features of the `simd` wrapper around
/// it, so the rows' loops ran on SSE2 instead of AVX-512.
#[inline(always)]
fn each_row(out: &mut [f32], row_len: usize, first: usize, f: &impl Fn(usize, &mut [f32])) {
    for r in 0..out.len() / row_len {
        f(first + r, &mut out[r * row_len..(r + 1) * row_len]);
    }
}

/// `f` of every element of `x`.
pub(super) fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> crate::Result<Vec<f32>> {
    let mut out = super::output_overwritten(x.len())?;
    fill_chunks(
        &mut out,
        #[inline(always)]
        |start, chunk| {
            for (o, &v) in chunk.iter_mut().zip(&x[start..]) {
                *o = f(v);
            }
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The precondition of `simd`'s unsafe calls: every feature its level's
    /// function enables is present on this CPU.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_level_only_enables_features_this_cpu_has() {
        let needs: &[&str] = match level() {
            2 => &["avx512f", "avx512vl", "avx2", "fma"],
            1 => &["avx2", "fma"],
            _ => &[],
        };
        for f in needs {
            let present = match *f {
                "avx512f" => is_x86_feature_detected!("avx512f"),
                "avx512vl" => is_x86_feature_detected!("avx512vl"),
                "avx2" => is_x86_feature_detected!("avx2"),
                _ => is_x86_feature_detected!("fma"),
            };
            assert!(present, "level {} enables {f}, which this CPU lacks", level());
        }
        // And the vectorised loops compute what plain ones do.
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0.0; 1000];
        fill_chunks(&mut out, |start, chunk| {
            for (o, &v) in chunk.iter_mut().zip(&x[start..]) {
                *o = v * 2.0 + 1.0;
            }
        });
        assert!(out.iter().zip(&x).all(|(o, v)| *o == v * 2.0 + 1.0));
    }
}
