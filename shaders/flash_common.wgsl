// Shared by the fused-attention kernels (flash_forward.wgsl, flash_lanes.wgsl):
// constants, the params struct, the bindings and the guarded row loads. The
// host prepends the specialisation constants and this file to each kernel.

// Finite stand-in for −∞ inside the kernel: exp2(NEG_BIG − x) is 0 for any
// real score x, and NEG_BIG − NEG_BIG is 0 rather than NaN.
const NEG_BIG: f32 = -3.0e38;
const LN2: f32 = 0.6931471805599453;

// Mirrors `FlashParams` in src/attention.rs field by field.
struct Params {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    n_q: u32,
    n_kv: u32,
    // 1 when kv_len holds one key length per batch entry.
    has_kv_len: u32,
    // ⌈n_q / BR⌉.
    q_blocks: u32,
    // Workgroups along x of the (possibly folded) dispatch grid.
    grid_x: u32,
    // Element strides: batch, row (sequence position), head.
    q_stride_b: u32,
    q_stride_s: u32,
    q_stride_h: u32,
    k_stride_b: u32,
    k_stride_s: u32,
    k_stride_h: u32,
    v_stride_b: u32,
    v_stride_s: u32,
    v_stride_h: u32,
    o_stride_b: u32,
    o_stride_s: u32,
    o_stride_h: u32,
    // scale · log2(e).
    scale_log2: f32,
    // Query heads per key/value head (H / H_kv).
    group: u32,
    // This launch covers keys [kv_begin, kv_end) (clamped to the batch
    // entry's key length). Long key ranges are cut into several launches on
    // adapters that bound a shader's total loop iterations (see `chunk_keys`
    // in src/attention.rs); the softmax state is carried between them.
    kv_begin: u32,
    kv_end: u32,
    // Bit 0: first launch of the range (start from m = −∞, l = 0, O = 0).
    // Bit 1: last launch. Otherwise the state (m, l, unnormalised O) is read
    // from / written to `state`.
    flags: u32,
    // Split-KV: the key range is cut into `splits` parts of `split_keys` keys,
    // each owned by its own workgroups; kv_begin/kv_end are then offsets
    // inside a split. With splits > 1 every split ends by writing its partial
    // state, and split_combine.wgsl merges them into O and LSE.
    splits: u32,
    split_keys: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// q (binding 1), k (2), v (3) and o (5) are declared by the host-prepended
// tensor access code (flash_io.wgsl), with their row loads q_row4, k_row4,
// v_row4 and the row store store_o4.
@group(0) @binding(4) var<storage, read> kv_len: array<u32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
// Per split s and query row (b·H + h)·n_q + i, from state_base(s, row): one
// vec4 (m, l, 0, 0), then DV4 vec4s of unnormalised O (m in log2 units, O not
// yet divided by l).
@group(0) @binding(7) var<storage, read_write> state: array<vec4<f32>>;

// Which (query block, batch, head, kv head, key split) a workgroup owns, from
// its index in the possibly folded grid. `live` is false for the grid's
// padding. Splits are outermost, so each split's workgroups are contiguous.
struct Tile {
    live: bool,
    qb: u32,
    b: u32,
    h: u32,
    hk: u32,
    split: u32,
}

// The tile of workgroup `wid` in a grid of q_blocks × batch × `heads` ×
// splits workgroups: `heads` is H for kernels with one query head per
// workgroup (h its index, hk = h / group), H_kv for flash_decode.wgsl, whose
// workgroups own a kv head (then h = hk = that kv head, and qb indexes the
// packed rows of its query heads).
fn grid_tile(wid: vec3<u32>, heads: u32) -> Tile {
    let linear = wid.x + wid.y * p.grid_x;
    let per_split = p.q_blocks * p.batch * heads;
    let rest = linear % per_split;
    let bh = rest / p.q_blocks;
    let h = bh % heads;
    let hk = select(h / p.group, h, heads == p.kv_heads);
    return Tile(linear < per_split * p.splits, rest % p.q_blocks, bh / heads, h, hk, linear / per_split);
}

fn workgroup_tile(wid: vec3<u32>) -> Tile {
    return grid_tile(wid, p.heads);
}

// Row addressing shared by every kernel, through the layouts' strides: the
// first element of query row qi of head h in batch entry b in q and in o, and
// the row's index in lse and state order, (b·H + h)·n_q + qi.
fn q_base(b: u32, qi: u32, h: u32) -> u32 {
    return b * p.q_stride_b + qi * p.q_stride_s + h * p.q_stride_h;
}

fn o_base(b: u32, qi: u32, h: u32) -> u32 {
    return b * p.o_stride_b + qi * p.o_stride_s + h * p.o_stride_h;
}

fn row_index(b: u32, h: u32, qi: u32) -> u32 {
    return (b * p.heads + h) * p.n_q + qi;
}

// Chunk c of query row (b, qi, h), pre-scaled by scale·log2(e) so the
// softmax can use exp2; zeros for a row that does not exist (`live` false).
fn q_scaled4(b: u32, qi: u32, h: u32, c: u32, live: bool) -> vec4<f32> {
    if (!live) {
        return vec4<f32>(0.0);
    }
    return q_row4(q_base(b, qi, h), c, D) * p.scale_log2;
}

// Vec4s of one state row: (m, l, 0, 0), then the unnormalised O.
const STATE_VEC4S: u32 = 1u + DV4;

// First vec4 of the state of query row `row` = (b·H + h)·n_q + i in `split`.
fn state_base(split: u32, row: u32) -> u32 {
    return (split * p.batch * p.heads * p.n_q + row) * STATE_VEC4S;
}

// The keys [x, y) this launch of `split` covers: the launch's chunk of the
// split's range, clamped to the batch entry's key count.
fn key_range(split: u32, n_valid: u32) -> vec2<u32> {
    let s0 = split * p.split_keys;
    let hi = min(s0 + min(p.kv_end, p.split_keys), n_valid);
    return vec2<u32>(min(s0 + p.kv_begin, hi), hi);
}

// Whether this launch writes O and LSE (the last launch of an unsplit key
// range) rather than the state.
fn writes_output() -> bool {
    return (p.flags & 2u) != 0u && p.splits == 1u;
}

var<workgroup> wg_n_valid: u32;

// Keys of batch entry `b` that exist (key padding: keys at or past kv_len[b]
// do not). Read by one invocation and broadcast, so loop bounds built on it
// are workgroup-uniform.
fn key_count(b: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        var n = p.n_kv;
        if (p.has_kv_len != 0u) {
            n = min(kv_len[b], p.n_kv);
        }
        wg_n_valid = n;
    }
    return workgroupUniformLoad(&wg_n_valid);
}

// LSE in natural-log units from m (log2 units) and l; −∞ for an empty row.
fn lse_of(m: f32, l: f32) -> f32 {
    return select((m + log2(l)) * LN2, bitcast<f32>(0xff800000u), l == 0.0);
}
