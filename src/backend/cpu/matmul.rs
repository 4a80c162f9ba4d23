//! Matrix products through the `gemm` crate, whose packed kernels match
//! OpenBLAS on the machines we measured (see Cargo.toml). Products from
//! [`PAR_MATMUL_MACS`] multiply-adds up are cut into column (or row) blocks
//! run over the pool.

use super::pool;
use crate::backend::MatmulSpec;
use crate::{Error, Result};

/// Multiply-adds from which a matmul is split over the cores.
const PAR_MATMUL_MACS: usize = 1 << 19;

/// An output's base pointer, shared by the blocks of a split product (or
/// convolution), which write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub *mut f32);
// SAFETY: only used to write disjoint blocks of one buffer that outlives the
// `pool::run` it is shared across.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The number of elements a batch of `batch` stored `rows × cols` operands
/// `stride` apart reaches: `(batch - 1) · stride + rows · cols`, or `None`
/// if that overflows. 0 when there is nothing to read.
pub(super) fn operand_extent(batch: usize, stride: usize, rows: usize, cols: usize) -> Option<usize> {
    let one = rows.checked_mul(cols)?;
    if batch == 0 || one == 0 {
        return Some(0);
    }
    (batch - 1).checked_mul(stride)?.checked_add(one)
}

pub(super) fn matmul(a: &[f32], b: &[f32], s: MatmulSpec) -> Result<Vec<f32>> {
    let n_out = s.batch.checked_mul(s.m).and_then(|v| v.checked_mul(s.n));
    let n_out = n_out.ok_or_else(|| Error::OutOfMemory(format!("matmul: a {}×{}×{} result", s.batch, s.m, s.n)))?;
    if s.k == 0 || n_out == 0 {
        // Sums of nothing.
        return super::output(n_out);
    }
    // Every block's GEMM writes its part of C without reading it.
    let mut out = super::output_overwritten(n_out)?;
    // The precondition of every `gemm` call below: each batch entry's
    // operands lie inside `a` and `b` (computed without wrapping).
    let need_a = operand_extent(s.batch, s.a_batch_stride, s.m, s.k);
    let need_b = operand_extent(s.batch, s.b_batch_stride, s.k, s.n);
    assert!(
        need_a.is_some_and(|e| e <= a.len()) && need_b.is_some_and(|e| e <= b.len()),
        "matmul: operands of {} and {} elements are too short for {s:?}",
        a.len(),
        b.len()
    );
    // Row and column strides of the stored operands.
    let (rsa, csa) = if s.trans_a { (1, s.m) } else { (s.k, 1) };
    let (rsb, csb) = if s.trans_b { (1, s.k) } else { (s.n, 1) };
    let macs = s.m.saturating_mul(s.n).saturating_mul(s.k);
    let threads = pool::threads();
    if s.batch > 1 && macs < PAR_MATMUL_MACS && threads > 1 && macs.saturating_mul(s.batch) >= PAR_MATMUL_MACS {
        // Many small products (attention's per-head q·kᵀ): whole entries
        // per task, the batch split into about 4 tasks a thread.
        let per_task = s.batch.div_ceil(threads * 4);
        let optr = OutPtr(out.as_mut_ptr());
        let entry = |i: usize| {
            let a = Mat { data: &a[i * s.a_batch_stride..], rows: s.m, cols: s.k, rs: rsa, cs: csa };
            let b = Mat { data: &b[i * s.b_batch_stride..], rows: s.k, cols: s.n, rs: rsb, cs: csb };
            // SAFETY: entry i's m×n block of C starts at i·m·n, inside the
            // exactly sized output, and only this call writes it.
            unsafe { gemm_raw(optr.at(i * s.m * s.n), s.n, a, b, false) };
        };
        pool::run(s.batch.div_ceil(per_task), &|t| (t * per_task..((t + 1) * per_task).min(s.batch)).for_each(entry));
        return Ok(out);
    }
    for (i, c) in out.chunks_mut(s.m * s.n).enumerate() {
        let pa = &a[i * s.a_batch_stride..];
        let pb = &b[i * s.b_batch_stride..];
        let cptr = OutPtr(c.as_mut_ptr());
        // Rows m0..m1 and columns n0..n1 of C.
        let block = |(m0, m1): (usize, usize), (n0, n1): (usize, usize)| {
            let a = Mat { data: &pa[m0 * rsa..], rows: m1 - m0, cols: s.k, rs: rsa, cs: csa };
            let b = Mat { data: &pb[n0 * csb..], rows: s.k, cols: n1 - n0, rs: rsb, cs: csb };
            // SAFETY: C is a distinct, exactly sized buffer of m rows of n;
            // this block's rows m0..m1, columns n0..n1 lie inside it and are
            // written by this call alone.
            unsafe { gemm_raw(cptr.at(m0 * s.n + n0), s.n, a, b, false) };
        };
        if macs < PAR_MATMUL_MACS || threads == 1 {
            block((0, s.m), (0, s.n));
            continue;
        }
        // Cut the longer side of C into blocks, a multiple of 16 wide
        // (the microkernels' width); more blocks than threads for large
        // products, so a thread the VM preempts does not hold up the rest.
        let per_thread = if macs >= 1 << 25 { 4 } else { 1 };
        let long = s.m.max(s.n);
        let width = long.div_ceil(threads * per_thread).next_multiple_of(16);
        let blocks = long.div_ceil(width);
        let span = |i: usize| (i * width, ((i + 1) * width).min(long));
        if s.n >= s.m {
            pool::run(blocks, &|i| block((0, s.m), span(i)));
        } else {
            pool::run(blocks, &|i| block(span(i), (0, s.n)));
        }
    }
    Ok(out)
}

/// A matrix read from a slice through row and column strides.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Elements between consecutive rows and consecutive columns.
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The same elements read as the transpose.
    pub fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Whether every element lies inside `data` (computed without wrapping).
    fn fits(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1).checked_mul(self.rs).zip((self.cols - 1).checked_mul(self.cs));
        last.and_then(|(r, c)| r.checked_add(c)).is_some_and(|e| e < self.data.len())
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`) on this thread, for a
/// row-major `dst` whose rows are `dst_rs` apart: the safe face of
/// [`gemm_raw`] for kernels (convolutions) that tile their own work.
pub(super) fn gemm_into(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    let dst_fits =
        m == 0 || n == 0 || (m - 1).checked_mul(dst_rs).and_then(|r| r.checked_add(n)).is_some_and(|e| e <= dst.len());
    assert!(dst_fits && (m <= 1 || dst_rs >= n), "gemm_into: the destination is too short");
    // SAFETY: dst's m rows of n (dst_rs ≥ n apart, so rows do not overlap)
    // lie inside `dst`, which is borrowed mutably, so nothing else touches it.
    unsafe { gemm_raw(dst.as_mut_ptr(), dst_rs, a, b, accumulate) }
}

/// `dst = a · b` (or `+=` with `accumulate`) on this thread, where `dst`
/// points at `a.rows` rows of `b.cols` floats, `dst_rs` apart. The operands
/// are checked to lie inside their slices.
///
/// # Safety
/// Those rows must lie in one allocation that no other thread reads or
/// writes during the call and that aliases neither operand.
pub(super) unsafe fn gemm_raw(dst: *mut f32, dst_rs: usize, a: Mat, b: Mat, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "gemm: an operand is too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: row r of dst, by the caller's contract.
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n) }.fill(0.0);
            }
        }
        return;
    }
    // gemm's microkernels want a column-major destination; ours is
    // row-major, so (as `gemm::gemm` does before dispatching) compute the
    // transpose: dstᵀ = bᵀ · aᵀ, swapping the operands and their strides.
    let (mut m, mut n, mut dst_cs, mut dst_rs) = (m, n, 1isize, dst_rs as isize);
    let (mut lhs, mut rhs) = (a, b);
    let (mut lhs_cs, mut lhs_rs, mut rhs_cs, mut rhs_rs) = (a.cs as isize, a.rs as isize, b.cs as isize, b.rs as isize);
    if dst_cs < dst_rs {
        (m, n, dst_cs, dst_rs) = (n, m, dst_rs, dst_cs);
        (lhs, rhs) = (b, a);
        (lhs_cs, lhs_rs, rhs_cs, rhs_rs) = (b.rs as isize, b.cs as isize, a.rs as isize, a.cs as isize);
    }
    // SAFETY: every element each operand's strides reach lies inside its
    // slice (checked above), and every stride is non-negative (what the
    // kernel expects; gemm::gemm would flip negative ones first); dst's rows
    // are the caller's to write.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm_common::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain triple loop over the stored (possibly transposed) operands.
    fn naive(a: &[f32], b: &[f32], s: MatmulSpec) -> Vec<f32> {
        let mut c = vec![0.0f64; s.batch * s.m * s.n];
        for i in 0..s.batch {
            for r in 0..s.m {
                for col in 0..s.n {
                    let mut acc = 0.0f64;
                    for k in 0..s.k {
                        let x = if s.trans_a {
                            a[i * s.a_batch_stride + k * s.m + r]
                        } else {
                            a[i * s.a_batch_stride + r * s.k + k]
                        };
                        let y = if s.trans_b {
                            b[i * s.b_batch_stride + col * s.k + k]
                        } else {
                            b[i * s.b_batch_stride + k * s.n + col]
                        };
                        acc += x as f64 * y as f64;
                    }
                    c[(i * s.m + r) * s.n + col] = acc;
                }
            }
        }
        c.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn split_products_match_a_plain_loop() {
        // Above PAR_MATMUL_MACS, cut along columns (n >= m) or rows (m > n),
        // with widths that leave a ragged last block; plus one below it.
        let shapes = [(32, 784, 131), (517, 40, 33), (70, 300, 70), (1, 1, 600_000), (5, 7, 3)];
        for (m, k, n) in shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let batch = if m * n * k < 1 << 21 { 2 } else { 1 };
                let s = MatmulSpec { batch, m, n, k, trans_a, trans_b, a_batch_stride: m * k, b_batch_stride: k * n };
                let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
                let b: Vec<f32> = (0..batch * k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
                let got = matmul(&a, &b, s).unwrap();
                let want = naive(&a, &b, s);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{k}x{n} {trans_a} {trans_b} [{j}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_small_products_split_by_batch_entry_match_a_plain_loop() {
        // 300 products of 16×24·24×9 (attention's per-head shape): below
        // PAR_MATMUL_MACS each, above it together, so whole entries go to
        // tasks, with a ragged last task; B shared (stride 0) or per entry.
        let (batch, m, k, n) = (300, 16, 24, 9);
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false)] {
            for b_stride in [0, k * n] {
                let s =
                    MatmulSpec { batch, m, n, k, trans_a, trans_b, a_batch_stride: m * k, b_batch_stride: b_stride };
                let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
                let b: Vec<f32> = (0..batch * k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
                let (got, want) = (matmul(&a, &b, s).unwrap(), naive(&a, &b, s));
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{trans_a} {trans_b} {b_stride} [{j}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn operand_extents_do_not_wrap_near_usize_max() {
        assert_eq!(operand_extent(3, 12, 3, 4), Some(36));
        assert_eq!(operand_extent(3, 0, 3, 4), Some(12));
        assert_eq!(operand_extent(0, 12, 3, 4), Some(0));
        assert_eq!(operand_extent(5, 12, 0, 4), Some(0));
        // m·k wraps to a small number with wrapping arithmetic: 3 · X = 1.
        let x = 0xAAAA_AAAA_AAAA_AAABusize;
        assert_eq!(3usize.wrapping_mul(x), 1);
        assert_eq!(operand_extent(1, 0, 3, x), None);
        assert_eq!(operand_extent(usize::MAX, 2, 1, 1), None);
        assert_eq!(operand_extent(2, usize::MAX, 1, 1), None);
        assert_eq!(operand_extent(2, usize::MAX - 1, 1, 1), Some(usize::MAX));
    }

    #[test]
    fn operands_too_short_for_the_spec_panic_before_the_unsafe_call() {
        // The shape of the reported segfault: m·k wraps to 1, so one element
        // looked like enough. The check must refuse it.
        let x = 0xAAAA_AAAA_AAAA_AAABusize;
        let s = MatmulSpec {
            batch: 1,
            m: 3,
            n: 1,
            k: x,
            trans_a: false,
            trans_b: false,
            a_batch_stride: 0,
            b_batch_stride: 0,
        };
        let r = std::panic::catch_unwind(|| matmul(&[1.0], &[1.0; 4], s));
        // Either the output is refused (no memory for it) or the check panics;
        // what must not happen is a call into gemm.
        if let Ok(result) = r {
            assert!(result.is_err());
        }
        let s = MatmulSpec {
            batch: 2,
            m: 2,
            n: 2,
            k: 2,
            trans_a: false,
            trans_b: false,
            a_batch_stride: 4,
            b_batch_stride: 0,
        };
        let r = std::panic::catch_unwind(|| matmul(&[1.0; 7], &[1.0; 4], s));
        assert!(r.is_err(), "a batch reaching past A must be refused");
    }
}
