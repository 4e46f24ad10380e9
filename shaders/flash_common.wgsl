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
    // Bit 1: last launch (normalise, write O and LSE). Otherwise the state
    // (m, l, unnormalised O) is read from / written to `state`.
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> kv_len: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
// Per row (b·H + h)·n_q + i: m, l, then DV4 vec4s of unnormalised O.
@group(0) @binding(7) var<storage, read_write> state: array<f32>;

// One element of q (0), k (1) or v (2). `which` is a literal at every call
// site, so the switch folds away once inlined. (WGSL cannot pass storage
// pointers to functions.)
fn elem(which: u32, i: u32) -> f32 {
    switch which {
        case 0u: { return q[i]; }
        case 1u: { return k[i]; }
        default: { return v[i]; }
    }
}

// Loads elements 4c … 4c+3 of a row of `len` elements starting at `base`,
// zero-filling past the row's end: no element of the next row is ever read.
// When the head dim is a multiple of 4 the guard is constant and folds away.
fn load4(which: u32, base: u32, c: u32, len: u32) -> vec4<f32> {
    let e = c * 4u;
    var r = vec4<f32>(0.0);
    if (len % 4u == 0u || e + 3u < len) {
        r = vec4<f32>(elem(which, base + e), elem(which, base + e + 1u), elem(which, base + e + 2u), elem(which, base + e + 3u));
    } else {
        for (var i = 0u; i < 4u; i++) {
            if (e + i < len) {
                r[i] = elem(which, base + e + i);
            }
        }
    }
    return r;
}

// Which (query block, batch, head, kv head) a workgroup owns, from its index
// in the possibly folded grid. `live` is false for the grid's padding.
struct Tile {
    live: bool,
    qb: u32,
    b: u32,
    h: u32,
    hk: u32,
}

fn workgroup_tile(wid: vec3<u32>) -> Tile {
    let linear = wid.x + wid.y * p.grid_x;
    let bh = linear / p.q_blocks;
    return Tile(linear < p.q_blocks * p.batch * p.heads, linear % p.q_blocks, bh / p.heads, bh % p.heads, (bh % p.heads) / p.group);
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
