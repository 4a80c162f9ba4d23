// Device-side asserts (src/backend/gpu/taint.rs): a kernel that meets bad
// data records it in its slot of the error buffer and carries on. The
// including shader declares `errors: array<atomic<u32>>` and the
// `check_slot` and `check_id` fields of its parameters.

// What index_below returns for a value that is not an index.
const NONE: u32 = 0xffffffffu;

// `v` as an index below `bound`, or NONE unless it is an integer in
// 0..bound (NaN is not).
fn index_below(v: f32, bound: u32) -> u32 {
    if !is_nan(v) && v >= 0.0 && v < f32(bound) && v == floor(v) {
        return u32(v);
    }
    return NONE;
}

// Records that `value` is not a valid index below `bound`.
fn report(value: f32, bound: u32) {
    let at = params.check_slot * 4u;
    atomicStore(&errors[at + 1u], bitcast<u32>(value));
    atomicStore(&errors[at + 2u], bound);
    atomicStore(&errors[at], params.check_id);
}
