// Shared by the fused-attention kernels (flash_forward.wgsl, flash_decode.wgsl,
// flash_lanes.wgsl) and split_combine.wgsl: constants, the params struct, the
// bindings, sequences, masks and row addressing. The host prepends the
// specialisation constants, the tensor access (flash_io.wgsl), this file and
// the softmax state (softmax_state.wgsl) to each kernel (src/source.rs).

// Finite stand-in for −∞ inside the kernel: exp2(NEG_BIG − x) is 0 for any
// real score x, and NEG_BIG − NEG_BIG is 0 rather than NaN.
const NEG_BIG: f32 = -3.0e38;
// A score hidden by the mask, the bias (−∞) or the window: below NEG_BIG, so
// it never raises a row max and exp2(MASKED − m) is 0 for every max m.
const MASKED: f32 = -3.4e38;
const LN2: f32 = 0.6931471805599453;
const LOG2E: f32 = 1.4426950408889634;
// `seq_flags` bits (FlashParams::SEQ_*).
const SEQ_KV_LENS: u32 = 1u;
const SEQ_Q_LENS: u32 = 2u;
const SEQ_VARLEN: u32 = 4u;
// `flags` bits (FlashParams::FIRST_LAUNCH, LAST_LAUNCH).
const LAUNCH_FIRST: u32 = 1u;
const LAUNCH_LAST: u32 = 2u;
// `MASK` bits: what the `mask` binding holds.
const MASK_BIAS: u32 = 1u;
const MASK_BOOL: u32 = 2u;

// Mirrors `FlashParams` in src/params.rs field by field.
struct Params {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    n_q: u32,
    n_kv: u32,
    // Which arrays the `seq` binding holds (SEQ_* bits); their offsets are
    // kv_lens_at, q_lens_at, cu_q_at and cu_k_at.
    seq_flags: u32,
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
    // in src/plan/); the softmax state is carried between them.
    kv_begin: u32,
    kv_end: u32,
    // LAUNCH_FIRST: the first launch of the range (the state starts empty).
    // LAUNCH_LAST: the last launch. Otherwise the state (m, l, unnormalised
    // O) is read from / written to `state`.
    flags: u32,
    // Split-KV: the key range is cut into `splits` parts of `split_keys` keys,
    // each owned by its own workgroups; kv_begin/kv_end are then offsets
    // inside a split. With splits > 1 every split ends by writing its partial
    // state, and split_combine.wgsl merges them into O and LSE.
    splits: u32,
    split_keys: u32,
    // Offsets (in u32s) into `seq` of the key lengths [B], query lengths [B],
    // cu_seqlens_q [B+1] and cu_seqlens_k [B+1].
    kv_lens_at: u32,
    q_lens_at: u32,
    cu_q_at: u32,
    cu_k_at: u32,
    // Window (with WIN = 1): query i sees keys j with
    // i + off − win_left ≤ j ≤ i + off + win_right, off = keys − queries of its
    // sequence (bottom-right alignment); 2^30 stands for no limit.
    win_left: u32,
    win_right: u32,
    // Strides of the bias (f32 elements, from word 0 of `mask`) between batch
    // entries, heads and query rows; 0 where broadcast.
    bias_stride_b: u32,
    bias_stride_h: u32,
    bias_stride_q: u32,
    // The boolean mask (u32 words of 32 keys) starts at word bits_at of
    // `mask`, after the bias; its strides as the bias's.
    bits_at: u32,
    bits_stride_b: u32,
    bits_stride_h: u32,
    bits_stride_q: u32,
    // lse (and state) row of query position t (q0 + i) of head h in batch
    // entry b: b·lse_stride_b + h·lse_stride_h + t; `lse_rows` rows in all.
    lse_stride_b: u32,
    lse_stride_h: u32,
    lse_rows: u32,
    // Workgroup order (see grid_tile): grid slot s runs tile
    // (s % grid_stride)·grid_rows + s / grid_stride; grid_stride = 1 is the
    // plain order.
    grid_stride: u32,
    grid_rows: u32,
    // Always 1: a loop count times `one` is one the driver's compiler cannot
    // see, so it keeps the loop (flash_simd.wgsl's prologue and epilogue).
    one: u32,
    // 1: heads fastest in the workgroup order (see grid_tile).
    heads_inner: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// q (binding 1), k (2), v (3) and o (5) are declared by the host-prepended
// tensor access code (flash_io.wgsl), with their row loads q_row4, k_row4,
// v_row4 and the row store store_o4.
// Per-batch lengths and packed-sequence offsets (see `seq_flags`).
@group(0) @binding(4) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
// Per split s and query row row_index(b, h, t), from state_base(s, row): one
// vec4 (m, l, 0, 0), then DV4 vec4s of unnormalised O (m in log2 units, O not
// yet divided by l).
@group(0) @binding(7) var<storage, read_write> state: array<vec4<f32>>;
// MASK_BIAS: additive bias, f32 bits [B|1, H|1, n_q|1, n_kv] from word 0;
// MASK_BOOL: boolean mask from word bits_at, bit j % 32 of word j / 32 of row
// (b, h, i) set = key j visible. Either, both or neither.
@group(0) @binding(8) var<storage, read> mask: array<u32>;

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
//
// With grid_stride S > 1 the grid has S·grid_rows slots and consecutive slots
// run tiles grid_rows apart, so any contiguous run of slots samples the whole
// problem: CPU drivers hand each thread a contiguous share of a dispatch, and
// with uneven work per tile (causal, padding) the plain order gave one thread
// most of it.
fn grid_tile(wid: vec3<u32>, heads: u32) -> Tile {
    let slot = wid.x + wid.y * params.grid_x;
    let linear = select((slot % params.grid_stride) * params.grid_rows + slot / params.grid_stride, 0xffffffffu, slot >= params.grid_stride * params.grid_rows);
    let per_split = params.q_blocks * params.batch * heads;
    let rest = linear % per_split;
    // Within a split: query blocks fastest (the plain order), or with
    // heads_inner the heads, so that a contiguous run of workgroups reads Q
    // and writes O rows contiguously in BSHD (the host's choice, see
    // plan::heads_inner).
    var qb = rest % params.q_blocks;
    var bh = rest / params.q_blocks;
    if (params.heads_inner != 0u) {
        let bq = rest / heads;
        qb = bq % params.q_blocks;
        bh = (bq / params.q_blocks) * heads + rest % heads;
    }
    let h = bh % heads;
    let hk = select(h / params.group, h, heads == params.kv_heads);
    return Tile(linear < per_split * params.splits, qb, bh / heads, h, hk, linear / per_split);
}

fn workgroup_tile(wid: vec3<u32>) -> Tile {
    return grid_tile(wid, params.heads);
}

// One batch entry's sequences. Padded batches: q0 = k0 = 0, nq = n_q and
// nkv_alloc = n_kv rows allocated. Packed (varlen) batches: the entry's rows
// start at q0 = cu_seqlens_q[b] and k0 = cu_seqlens_k[b] of the packed
// tensors. nq_used ≤ nq and nkv ≤ nkv_alloc are the rows in use (query and
// key lengths); query rows in [nq_used, nq) are padding and get O = 0.
struct Seq {
    q0: u32,
    k0: u32,
    nq: u32,
    nq_used: u32,
    nkv_alloc: u32,
    nkv: u32,
}

// The sequences of batch entry b, read from `seq` (lengths clamped to the
// allocation, which is clamped to n_q / n_kv).
fn seq_of(b: u32) -> Seq {
    var s = Seq(0u, 0u, params.n_q, params.n_q, params.n_kv, params.n_kv);
    if ((params.seq_flags & SEQ_VARLEN) != 0u) {
        let q0 = seq[params.cu_q_at + b];
        let k0 = seq[params.cu_k_at + b];
        s.q0 = q0;
        s.k0 = k0;
        s.nq = min(max(seq[params.cu_q_at + b + 1u], q0) - q0, params.n_q);
        s.nkv_alloc = min(max(seq[params.cu_k_at + b + 1u], k0) - k0, params.n_kv);
    }
    s.nq_used = s.nq;
    s.nkv = s.nkv_alloc;
    if ((params.seq_flags & SEQ_Q_LENS) != 0u) {
        s.nq_used = min(seq[params.q_lens_at + b], s.nq);
    }
    if ((params.seq_flags & SEQ_KV_LENS) != 0u) {
        s.nkv = min(seq[params.kv_lens_at + b], s.nkv_alloc);
    }
    return s;
}

var<workgroup> wg_seq: Seq;

// seq_of(b), read by one invocation and broadcast so that loop bounds built
// on it are workgroup-uniform.
fn load_seq(b: u32, lid: u32) -> Seq {
    if (lid == 0u) {
        wg_seq = seq_of(b);
    }
    return workgroupUniformLoad(&wg_seq);
}

// The keys [x, y) of its sequence that query row i (< nq_used) may see by
// key length and window, before the mask and bias.
fn row_keys(s: Seq, i: u32) -> vec2<u32> {
    if (WIN == 0u) {
        return vec2<u32>(0u, s.nkv);
    }
    let diag = i32(i) + i32(s.nkv) - i32(s.nq_used);
    let lo = clamp(diag - i32(params.win_left), 0, i32(s.nkv));
    let hi = clamp(diag + i32(params.win_right) + 1, lo, i32(s.nkv));
    return vec2<u32>(u32(lo), u32(hi));
}

// The keys a workgroup whose used query rows are [i0, i_end) loads: the
// union of those rows' keys (empty when i_end ≤ i0: no used row), or every
// allocated key when block skipping is off (SKIP = 0).
fn block_keys(s: Seq, i0: u32, i_end: u32) -> vec2<u32> {
    if (SKIP == 0u) {
        return vec2<u32>(0u, s.nkv_alloc);
    }
    if (i_end <= i0) {
        return vec2<u32>(0u);
    }
    return vec2<u32>(row_keys(s, i0).x, row_keys(s, i_end - 1u).y);
}

// First words of the bias row (x) and the boolean-mask row (y) of (b, h, i).
fn mask_row(b: u32, h: u32, i: u32) -> vec2<u32> {
    return vec2<u32>(
        b * params.bias_stride_b + h * params.bias_stride_h + i * params.bias_stride_q,
        params.bits_at + b * params.bits_stride_b + h * params.bits_stride_h + i * params.bits_stride_q,
    );
}

// Score s (log2 units) of key j for the query whose mask rows are `at`
// (mask_row): the bias added (a −∞ bias gives MASKED), then MASKED where the
// boolean mask hides the key. Compiled out when MASK is 0.
fn mask_score(s: f32, at: vec2<u32>, j: u32) -> f32 {
    var x = s;
    if ((MASK & MASK_BIAS) != 0u) {
        x = max(fma(bitcast<f32>(mask[at.x + j]), LOG2E, x), MASKED);
    }
    if ((MASK & MASK_BOOL) != 0u) {
        let w = mask[at.y + (j >> 5u)];
        x = select(MASKED, x, ((w >> (j & 31u)) & 1u) != 0u);
    }
    return x;
}

// The boolean mask's bits for keys j0 … j0 + 31 (bit n: key j0 + n) of the
// mask row starting at word `at` (mask_row(…).y), from the one or two words
// they straddle.
fn mask_bits(at: u32, j0: u32) -> u32 {
    let w = at + (j0 >> 5u);
    let sh = j0 & 31u;
    let lo = mask[w] >> sh;
    return select(lo, lo | (mask[w + 1u] << (32u - sh)), sh != 0u);
}

// Row addressing shared by every kernel, through the layouts' strides: the
// first element of query position t (q0 + i) of head h in batch entry b in q
// and in o, and the row's index in lse and state order.
fn q_base(b: u32, t: u32, h: u32) -> u32 {
    return b * params.q_stride_b + t * params.q_stride_s + h * params.q_stride_h;
}

fn o_base(b: u32, t: u32, h: u32) -> u32 {
    return b * params.o_stride_b + t * params.o_stride_s + h * params.o_stride_h;
}

fn row_index(b: u32, h: u32, t: u32) -> u32 {
    return b * params.lse_stride_b + h * params.lse_stride_h + t;
}

// First element of key position k0 + j of kv head hk in k and in v.
fn k_base(b: u32, t: u32, hk: u32) -> u32 {
    return b * params.k_stride_b + t * params.k_stride_s + hk * params.k_stride_h;
}

fn v_base(b: u32, t: u32, hk: u32) -> u32 {
    return b * params.v_stride_b + t * params.v_stride_s + hk * params.v_stride_h;
}

// A dot product's vec4 of partial sums folded to one score, in a fixed
// order (pairs first) shared by every kernel.
fn hsum4(a: vec4<f32>) -> f32 {
    return (a.x + a.y) + (a.z + a.w);
}

// Chunk c of the query row starting at `base`, pre-scaled by scale·log2(e)
// so the softmax can use exp2.
fn q_row_scaled4(base: u32, c: u32) -> vec4<f32> {
    return q_row4(base, c, D) * params.scale_log2;
}

// Chunk c of query position t of head h, scaled (q_row_scaled4); zeros for
// a row that is not used (`live` false).
fn q_scaled4(b: u32, t: u32, h: u32, c: u32, live: bool) -> vec4<f32> {
    if (!live) {
        return vec4<f32>(0.0);
    }
    return q_row_scaled4(q_base(b, t, h), c);
}

// The keys [x, y) this launch of `split` covers: the launch's chunk of the
// split's range, intersected with the keys `keys` the workgroup's rows see.
fn key_range(split: u32, keys: vec2<u32>) -> vec2<u32> {
    let s0 = split * params.split_keys;
    let hi = min(s0 + min(params.kv_end, params.split_keys), keys.y);
    return vec2<u32>(min(max(s0 + params.kv_begin, keys.x), hi), hi);
}
