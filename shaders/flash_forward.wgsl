// Fused attention forward, FlashAttention-2 style.
//
//   O = softmax(Q·Kᵀ·scale + bias) · V,   LSE = log Σ_j exp(Q·Kᵀ·scale + bias)
//
// over the keys each query sees (key and query lengths, causal / sliding
// window, boolean mask, −∞ bias; see flash_common.wgsl).
//
// One workgroup owns BR query rows of one (batch, head). Each invocation owns
// TR of those rows (rows lid, lid + WG, …, so neighbouring invocations hold
// neighbouring rows) and keeps, in registers, its rows of Q (pre-multiplied by
// scale·log2(e) so the softmax can use exp2) and their softmax state m, l, O
// (softmax_state.wgsl, ROWS = TR). K and V stream through
// workgroup memory in blocks of BC rows; every invocation reads the same K/V
// element at the same time (a broadcast on GPUs, a scalar load on CPU drivers),
// so each shared load feeds TR fused multiply-adds.
//
// Per block:  S = Q·Kᵀ (TR × BC tile per invocation, in registers)
//             m_new = max(m, rowmax S);  l, O *= exp2(m − m_new)  (state_rescale)
//             P = exp2(S − m_new);  l += rowsum P;  O += P·V
// and once at the end O /= l, LSE = (m + log2 l)·ln 2 (state_finish). No score
// ever leaves registers.
//
// Split-KV: with params.splits > 1 the grid holds one copy of the workgroups per
// key split; each covers its split's keys and leaves (m, l, O) in `state` for
// split_combine.wgsl. Launches that cover only part of a key range (CPU
// adapters' loop limit) carry the same state to the next launch.
//
// The host prepends the specialisation, the tensor access (flash_io.wgsl),
// flash_common.wgsl (params, bindings, tiles) and softmax_state.wgsl (see
// `FlashSpec::source` in src/source.rs):
//   const D:  u32   head dim of Q and K
//   const DV: u32   head dim of V and O
//   const D4, DV4   the head dims in whole vec4s, ⌈D/4⌉ and ⌈DV/4⌉; padding
//                   lanes hold zeros in Q, K and V, so they add nothing to dot
//                   products, and are never written out
//   const BR: u32   query rows per workgroup
//   const BC: u32   key rows per K/V block
//   const TR: u32   query rows per invocation (BR = TR · WG)
//   const WG: u32   invocations per workgroup
//   const MASK: u32 MASK_BIAS | MASK_BOOL bits: additive bias, boolean mask
//   const WIN: u32  1 when a causal / sliding window applies
//   const SKIP: u32 1: block skipping (key blocks no query of the workgroup
//                   sees are not loaded); 0: every allocated key is loaded
//                   and masked (to measure what skipping saves)
// Function-scope arrays need const (not override) sizes, hence generated source
// rather than pipeline-overridable constants.


var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * DV4>;

// This invocation's TR rows of Q, scaled (m, l and O: softmax_state.wgsl).
var<private> Q: array<vec4<f32>, TR * D4>;

var<workgroup> wg_any: atomic<u32>;
var<workgroup> wg_any_copy: u32;

// Whether the boolean mask lets any used query row of this invocation see
// any of the `count` keys from kv0; or-ed over the workgroup and broadcast.
fn block_visible(lid: u32, b: u32, h: u32, i0: u32, i_end: u32, kv0: u32, count: u32) -> bool {
    if (lid == 0u) {
        atomicStore(&wg_any, 0u);
    }
    workgroupBarrier();
    let keys = select((1u << count) - 1u, 0xffffffffu, count >= 32u);
    var seen = 0u;
    for (var t = 0u; t < TR; t++) {
        let i = i0 + lid + t * WG;
        if (i < i_end) {
            seen |= mask_bits(mask_row(b, h, i).y, kv0) & keys;
        }
    }
    if (seen != 0u) {
        atomicOr(&wg_any, 1u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        wg_any_copy = atomicLoad(&wg_any);
    }
    return workgroupUniformLoad(&wg_any_copy) != 0u;
}

// Streams one K/V block of `count` keys starting at key kv0 of the sequence
// (kb, vb: its first key's k and v elements) and folds it into the running
// softmax state. `edge` is a literal at each call site: false for interior
// blocks (BC keys every row of the workgroup sees), which compile without
// per-score checks; true for the rest, where every score outside its row's
// length and window, or past `count`, becomes MASKED.
fn process_block(lid: u32, sq: Seq, b: u32, h: u32, i0: u32, kb: u32, vb: u32, kv0: u32, count: u32, edge: bool) {
    // Everyone is done reading the previous block.
    workgroupBarrier();
    for (var i = lid; i < BC * D4; i += WG) {
        let j = i / D4;
        var val = vec4<f32>(0.0);
        if (!edge || j < count) {
            val = k_row4(kb + (kv0 + j) * params.k_stride_s, i % D4, D);
        }
        k_tile[i] = val;
    }
    for (var i = lid; i < BC * DV4; i += WG) {
        let j = i / DV4;
        var val = vec4<f32>(0.0);
        if (!edge || j < count) {
            val = v_row4(vb + (kv0 + j) * params.v_stride_s, i % DV4, DV);
        }
        v_tile[i] = val;
    }
    workgroupBarrier();

    // S = Q·Kᵀ for this invocation's TR rows and all BC keys. Each (row, key)
    // accumulates a vec4 of partial products (pure FMAs) and folds it once.
    var S: array<f32, TR * BC>;
    for (var j = 0u; j < BC; j++) {
        var part: array<vec4<f32>, TR>;
        for (var t = 0u; t < TR; t++) {
            part[t] = vec4<f32>(0.0);
        }
        for (var c = 0u; c < D4; c++) {
            let kk = k_tile[j * D4 + c];
            for (var t = 0u; t < TR; t++) {
                part[t] = fma(Q[t * D4 + c], kk, part[t]);
            }
        }
        for (var t = 0u; t < TR; t++) {
            S[t * BC + j] = hsum4(part[t]);
        }
    }

    // Lengths, window, bias and mask (compiled out when none applies).
    if (edge || MASK != 0u) {
        for (var t = 0u; t < TR; t++) {
            let i = i0 + lid + t * WG;
            let keys = row_keys(sq, i);
            let at = mask_row(b, h, i);
            for (var j = 0u; j < BC; j++) {
                let key = kv0 + j;
                var x = mask_score(S[t * BC + j], at, key);
                if (edge && (j >= count || key < keys.x || key >= keys.y)) {
                    x = MASKED;
                }
                S[t * BC + j] = x;
            }
        }
    }

    // Online softmax: new row max, l and O rescaled, P in place of S. MASKED
    // scores never raise the max (it starts at NEG_BIG) and give P = 0.
    for (var t = 0u; t < TR; t++) {
        var m_new = m[t];
        for (var j = 0u; j < BC; j++) {
            m_new = max(m_new, S[t * BC + j]);
        }
        state_rescale(t, m_new);
        var row_sum = 0.0;
        for (var j = 0u; j < BC; j++) {
            let pj = exp2(S[t * BC + j] - m_new);
            S[t * BC + j] = pj;
            row_sum += pj;
        }
        l[t] += row_sum;
    }

    // O += P·V, one output chunk at a time so its accumulator stays in a
    // register across all BC keys.
    for (var c = 0u; c < DV4; c++) {
        for (var j = 0u; j < BC; j++) {
            let vv = v_tile[j * DV4 + c];
            for (var t = 0u; t < TR; t++) {
                O[t * DV4 + c] = fma(vec4<f32>(S[t * BC + j]), vv, O[t * DV4 + c]);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = workgroup_tile(wid);
    if (!tile.live) {
        // Padding workgroups of a folded grid; uniform across the workgroup.
        return;
    }
    let b = tile.b;
    let h = tile.h;
    let sq = load_seq(b, lid);
    // Rows [i0, i0 + BR) of the sequence; [i0, i_end) are used. A block past
    // the sequence (packed batches: shorter than n_q) has nothing to do.
    let i0 = tile.qb * BR;
    if (i0 >= sq.nq) {
        return;
    }
    let i_end = max(min(i0 + BR, sq.nq_used), i0);

    let first = (params.flags & LAUNCH_FIRST) != 0u;
    for (var t = 0u; t < TR; t++) {
        let i = i0 + lid + t * WG;
        for (var c = 0u; c < D4; c++) {
            Q[t * D4 + c] = q_scaled4(b, sq.q0 + i, h, c, i < i_end);
        }
        if (first || i >= sq.nq) {
            state_reset(t);
        } else {
            state_load(t, state_base(tile.split, row_index(b, h, sq.q0 + i)));
        }
    }

    let kb = k_base(b, sq.k0, tile.hk);
    let vb = v_base(b, sq.k0, tile.hk);
    // Block skipping: only keys some used row can see are loaded. Blocks in
    // [int_lo, int_hi) are seen whole by every used row (interior).
    let range = key_range(tile.split, block_keys(sq, i0, i_end));
    var int_lo = 1u;
    var int_hi = 0u;
    if (i_end > i0) {
        int_lo = row_keys(sq, i_end - 1u).x;
        int_hi = row_keys(sq, i0).y;
    }
    if (WIN == 0u && MASK == 0u && SKIP == 1u) {
        // No window or mask: every block is interior but a ragged last one.
        // (Kept apart: on lavapipe, any edge path in the loop, a second
        // inlined copy or a runtime flag, made the interior blocks 14 %
        // slower: square 2k 1 850 against 1 620 ms.)
        let full = (range.y - range.x) / BC;
        for (var n = 0u; n < full; n++) {
            process_block(lid, sq, b, h, i0, kb, vb, range.x + n * BC, BC, false);
        }
        let tail = (range.y - range.x) % BC;
        if (tail != 0u) {
            process_block(lid, sq, b, h, i0, kb, vb, range.x + full * BC, tail, true);
        }
    } else {
        // Blocks n = 0 … n_blocks − 1 start at range.x + n·BC; those in
        // [n_int, n_end) are interior and run with no per-score checks.
        let n_blocks = (range.y - range.x + BC - 1u) / BC;
        var n_int = 0u;
        if (int_lo > range.x) {
            n_int = (int_lo - range.x + BC - 1u) / BC;
        }
        var n_end = 0u;
        if (int_hi > range.x) {
            n_end = (min(int_hi, range.y) - range.x) / BC;
        }
        n_int = min(n_int, n_blocks);
        n_end = max(n_end, n_int);
        for (var n = n_int; n < n_end; n++) {
            let kv0 = range.x + n * BC;
            if ((MASK & MASK_BOOL) != 0u && SKIP == 1u) {
                if (!block_visible(lid, b, h, i0, i_end, kv0, BC)) {
                    continue;
                }
            }
            process_block(lid, sq, b, h, i0, kb, vb, kv0, BC, false);
        }
        // Edge blocks: before the interior run, then after it.
        for (var e = 0u; e < n_int + (n_blocks - n_end); e++) {
            let n = select(e - n_int + n_end, e, e < n_int);
            let kv0 = range.x + n * BC;
            let count = min(BC, range.y - kv0);
            if ((MASK & MASK_BOOL) != 0u && SKIP == 1u) {
                if (!block_visible(lid, b, h, i0, i_end, kv0, count)) {
                    continue;
                }
            }
            process_block(lid, sq, b, h, i0, kb, vb, kv0, count, true);
        }
    }

    let out = writes_output();
    for (var t = 0u; t < TR; t++) {
        let i = i0 + lid + t * WG;
        if (i >= sq.nq) {
            continue;
        }
        if (i >= i_end) {
            // A padded query row: O = 0, LSE = −∞ (or an empty partial).
            state_reset(t);
        }
        let row = row_index(b, h, sq.q0 + i);
        if (out) {
            // Deferred normalisation; an empty row gets O = 0, LSE = −∞.
            state_finish(t, o_base(b, sq.q0 + i, h), row);
        } else {
            state_store(t, state_base(tile.split, row));
        }
    }
}
