// The statistics of a softmax row in one pass, shared by softmax.wgsl and
// loss.wgsl (which declare `x`, `params.len` and WG, a power of two).
//
// Each row's maximum and sum of exponentials come from one pass (the
// "online softmax": the running sum is rescaled when the maximum grows), so
// logits of ±1e4 never overflow. One workgroup per row: each invocation
// folds a strided slice of the row, then a tree in workgroup memory
// combines the partials.

// Running (max, Σ exp(x - max)); sum == 0 means empty.
struct Stats {
    max: f32,
    sum: f32,
}

var<workgroup> part_max: array<f32, WG>;
var<workgroup> part_sum: array<f32, WG>;

fn push(s: Stats, v: f32) -> Stats {
    if s.sum == 0.0 {
        return Stats(v, 1.0);
    }
    if v > s.max {
        return Stats(v, s.sum * exp(s.max - v) + 1.0);
    }
    return Stats(s.max, s.sum + exp(v - s.max));
}

fn merge(a: Stats, b: Stats) -> Stats {
    if b.sum == 0.0 {
        return a;
    }
    if a.sum == 0.0 {
        return b;
    }
    let m = max(a.max, b.max);
    return Stats(m, a.sum * exp(a.max - m) + b.sum * exp(b.max - m));
}

// The statistics of row `row` (contiguous, length params.len), shared by the
// whole workgroup. Must be called in uniform control flow.
fn row_stats(row: u32, lid: u32) -> Stats {
    let base = row * params.len;
    var s = Stats(0.0, 0.0);
    for (var l = lid; l < params.len; l += WG) {
        s = push(s, x[base + l]);
    }
    part_max[lid] = s.max;
    part_sum[lid] = s.sum;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w / 2u) {
        if lid < w {
            let m = merge(Stats(part_max[lid], part_sum[lid]), Stats(part_max[lid + w], part_sum[lid + w]));
            part_max[lid] = m.max;
            part_sum[lid] = m.sum;
        }
        workgroupBarrier();
    }
    let total = Stats(part_max[0], part_sum[0]);
    workgroupBarrier();
    return total;
}
