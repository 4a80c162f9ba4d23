// Cross-entropy from logits with integer labels, forward and backward, one
// workgroup per row (row statistics from online_softmax.wgsl), or for rows
// of a few classes (the `_lines` entry points) one invocation per row, and
// for a small batch of those the mean loss in one workgroup. A
// label that is not an integer in 0..classes is reported (check.wgsl) and
// its row is NaN.

struct Params {
    rows: u32,
    // The number of classes (the row length online_softmax.wgsl reads).
    len: u32,
    check_slot: u32,
    check_id: u32,
    // The backward's gradient of row r: grad_rows[r * grad_stride] * grad_scale
    // (stride 0 and scale 1/rows: the gradient of the mean loss, unexpanded),
    // or with grad_const = 1 grad_scale alone (a constant gradient the host
    // folded into the scale; grad_rows is then not read).
    grad_stride: u32,
    grad_scale: f32,
    grad_const: u32,
}
var<immediate> params: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<f32>;
@group(0) @binding(2) var<storage, read> grad_rows: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> errors: array<atomic<u32>>;

// The label of `row`, or NONE when it is not an integer in 0..classes.
fn label_of(row: u32) -> u32 {
    return index_below(labels[row], params.len);
}

// label_of, reporting a bad label (from one invocation per row).
fn checked_label(row: u32, lid: u32) -> u32 {
    let label = label_of(row);
    if label == NONE && lid == 0u {
        report(labels[row], params.len);
    }
    return label;
}

// logsumexp(x[row]) - x[row][label] from the row's statistics; NaN for an
// invalid label or a row without a softmax.
fn row_loss(row: u32, s: Stats, label: u32) -> f32 {
    if label == NONE || undefined(s) {
        return nan();
    }
    return op_sub(s.max + log(s.sum), x[row * params.len + label]);
}

// The gradient of the loss for element l of a row: (softmax - [l ==
// label]) · g, NaN for an invalid label or a row without a softmax.
fn grad_element(at: u32, l: u32, s: Stats, label: u32, g: f32) -> f32 {
    let p = op_exp(x[at] - s.max) / s.sum;
    return select(op_mul(p - select(0.0, 1.0, l == label), g), nan(), label == NONE || undefined(s));
}

// The gradient of row's loss: grad_rows[row · grad_stride] · grad_scale, or
// grad_scale alone.
fn row_grad(row: u32) -> f32 {
    if params.grad_const == 0u {
        return op_mul(grad_rows[row * params.grad_stride], params.grad_scale);
    }
    return params.grad_scale;
}

// out[row] = logsumexp(x[row]) - x[row][label]; NaN for an invalid label.
@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.rows {
        return;
    }
    let s = row_stats(row, lid);
    let label = checked_label(row, lid);
    if lid == 0u {
        out[row] = row_loss(row, s, label);
    }
}

// out[row][j] = (softmax(x[row])[j] - [j == label]) · g, with
// g = grad_rows[row · grad_stride] · grad_scale (or grad_scale alone).
@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= params.rows {
        return;
    }
    let s = row_stats(row, lid);
    let g = row_grad(row);
    let label = checked_label(row, lid);
    let base = row * params.len;
    for (var l = lid; l < params.len; l += WG) {
        out[base + l] = grad_element(base + l, l, s, label, g);
    }
}

// cross_entropy, one invocation per row.
@compute @workgroup_size(WG)
fn cross_entropy_lines(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wid, nwg, lid);
    if row >= params.rows {
        return;
    }
    let s = line_stats(row * params.len, params.len, 1u);
    out[row] = row_loss(row, s, checked_label(row, 0u));
}

// cross_entropy_backward, one invocation per row.
@compute @workgroup_size(WG)
fn cross_entropy_backward_lines(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wid, nwg, lid);
    if row >= params.rows {
        return;
    }
    let base = row * params.len;
    let s = line_stats(base, params.len, 1u);
    let g = row_grad(row);
    let label = checked_label(row, 0u);
    for (var l = 0u; l < params.len; l++) {
        out[base + l] = grad_element(base + l, l, s, label, g);
    }
}

var<workgroup> part_loss: array<f32, WG>;

// The mean of cross_entropy over all rows, which the host keeps within one
// workgroup (and to a few classes each): an invocation per row, then a tree
// of sums in workgroup memory. Written to out[0].
@compute @workgroup_size(WG)
fn cross_entropy_mean_lines(@builtin(local_invocation_index) lid: u32) {
    var loss = 0.0;
    if lid < params.rows {
        loss = row_loss(lid, line_stats(lid * params.len, params.len, 1u), checked_label(lid, 0u));
    }
    part_loss[lid] = loss;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w / 2u) {
        if lid < w {
            part_loss[lid] = op_add(part_loss[lid], part_loss[lid + w]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[0] = op_div(part_loss[0], f32(params.rows));
    }
}
