// The statistics of a softmax row in one pass, shared by softmax.wgsl and
// loss.wgsl (which declare `x`, `params.len` and WG, a power of two).
//
// Each row's maximum and sum of exponentials come from one pass (the
// "online softmax": the running sum is rescaled when the maximum grows), so
// logits of ±1e4 never overflow. Long rows take a workgroup each
// (row_stats): each invocation folds a strided slice of the row, then a
// tree in workgroup memory combines the partials; rows of up to 32 values
// (SHORT_LINE in src/backend/gpu/reduce.rs) one invocation (line_stats).
//
// A row holding NaN or +∞, or only -∞, has no softmax: the CPU's
// `exp(v - max)` turns all of it into NaN, and so do these kernels, by a
// flag found with bit tests rather than by trusting NaN to survive the
// arithmetic (the compiler may assume it cannot occur).

// Running (max, Σ exp(x - max)); sum == 0 means empty. `bad` is set once a
// NaN or +∞ was seen.
struct Stats {
    max: f32,
    sum: f32,
    bad: bool,
}

var<workgroup> part_max: array<f32, WG>;
var<workgroup> part_sum: array<f32, WG>;
var<workgroup> part_bad: array<u32, WG>;

// exp(a - b) for a ≤ b, 1 when the two are the same infinity (where a - b
// would be NaN: a column whose maximum so far is -∞ meeting another -∞).
fn exp_below(a: f32, b: f32) -> f32 {
    return select(op_exp(a - b), 1.0, bitcast<u32>(a) == bitcast<u32>(b));
}

fn push(s: Stats, v: f32) -> Stats {
    let bad = s.bad || is_nan(v) || bitcast<u32>(v) == 0x7f800000u;
    if s.sum == 0.0 {
        return Stats(v, 1.0, bad);
    }
    if v > s.max {
        return Stats(v, s.sum * exp_below(s.max, v) + 1.0, bad);
    }
    return Stats(s.max, s.sum + exp_below(v, s.max), bad);
}

fn merge(a: Stats, b: Stats) -> Stats {
    let bad = a.bad || b.bad;
    if b.sum == 0.0 {
        return Stats(a.max, a.sum, bad);
    }
    if a.sum == 0.0 {
        return Stats(b.max, b.sum, bad);
    }
    let m = max(a.max, b.max);
    return Stats(m, a.sum * exp_below(a.max, m) + b.sum * exp_below(b.max, m), bad);
}

// Whether the row has no softmax (see the top of the file).
fn undefined(s: Stats) -> bool {
    return s.bad || bitcast<u32>(s.max) == 0xff800000u;
}

// The statistics of row `row` (contiguous, length params.len), shared by the
// whole workgroup. Must be called in uniform control flow.
fn row_stats(row: u32, lid: u32) -> Stats {
    let base = row * params.len;
    var s = Stats(0.0, 0.0, false);
    for (var l = lid; l < params.len; l += WG) {
        s = push(s, x[base + l]);
    }
    part_max[lid] = s.max;
    part_sum[lid] = s.sum;
    part_bad[lid] = u32(s.bad);
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w / 2u) {
        if lid < w {
            let m = merge(Stats(part_max[lid], part_sum[lid], part_bad[lid] != 0u),
                          Stats(part_max[lid + w], part_sum[lid + w], part_bad[lid + w] != 0u));
            part_max[lid] = m.max;
            part_sum[lid] = m.sum;
            part_bad[lid] = u32(m.bad);
        }
        workgroupBarrier();
    }
    let total = Stats(part_max[0], part_sum[0], part_bad[0] != 0u);
    workgroupBarrier();
    return total;
}

// The statistics of the `len` values of x from `base`, `stride` apart, by
// one invocation (for short lines and columns).
fn line_stats(base: u32, len: u32, stride: u32) -> Stats {
    var s = Stats(0.0, 0.0, false);
    for (var l = 0u; l < len; l++) {
        s = push(s, x[base + l * stride]);
    }
    return s;
}
