// Fused attention forward, FlashAttention-2 style.
//
//   O = softmax(Q·Kᵀ·scale) · V,   LSE = log Σ_j exp(Q·Kᵀ·scale)
//
// One workgroup owns BR query rows of one (batch, head). Each invocation owns
// TR of those rows (rows lid, lid + WG, …, so neighbouring invocations hold
// neighbouring rows) and keeps, in registers, its rows of Q (pre-multiplied by
// scale·log2(e) so the softmax can use exp2), the running max m, the running
// sum l and the unnormalised output accumulator O. K and V stream through
// workgroup memory in blocks of BC rows; every invocation reads the same K/V
// element at the same time (a broadcast on GPUs, a scalar load on CPU drivers),
// so each shared load feeds TR fused multiply-adds.
//
// Per block:  S = Q·Kᵀ (TR × BC tile per invocation, in registers)
//             m_new = max(m, rowmax S);  P = exp2(S − m_new)
//             l = exp2(m − m_new)·l + rowsum P;  O = exp2(m − m_new)·O + P·V
// and once at the end O /= l, LSE = (m + log2 l)·ln 2. No score ever leaves
// registers.
//
// Split-KV: with p.splits > 1 the grid holds one copy of the workgroups per
// key split; each covers its split's keys and leaves (m, l, O) in `state` for
// split_combine.wgsl. Launches that cover only part of a key range (CPU
// adapters' loop limit) carry the same state to the next launch.
//
// The host prepends the specialisation, the tensor access (flash_io.wgsl) and
// flash_common.wgsl (params, bindings, tiles, state; see `flash_source` in
// src/attention.rs):
//   const D:  u32   head dim of Q and K
//   const DV: u32   head dim of V and O
//   const D4, DV4   the head dims in whole vec4s, ⌈D/4⌉ and ⌈DV/4⌉; padding
//                   lanes hold zeros in Q, K and V, so they add nothing to dot
//                   products, and are never written out
//   const BR: u32   query rows per workgroup
//   const BC: u32   key rows per K/V block
//   const TR: u32   query rows per invocation (BR = TR · WG)
//   const WG: u32   invocations per workgroup
// Function-scope arrays need const (not override) sizes, hence generated source
// rather than pipeline-overridable constants.


var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * DV4>;

var<private> q_reg: array<vec4<f32>, TR * D4>;
var<private> acc: array<vec4<f32>, TR * DV4>;
var<private> m: array<f32, TR>;
var<private> l: array<f32, TR>;

// Streams one K/V block of `count` valid rows starting at key `kv0` and folds
// it into the running softmax state. `ragged` is a literal at each call site,
// so the aligned path compiles without any per-key bounds checks.
fn process_block(lid: u32, k_base: u32, v_base: u32, kv0: u32, count: u32, ragged: bool) {
    // Everyone is done reading the previous block.
    workgroupBarrier();
    for (var i = lid; i < BC * D4; i += WG) {
        let j = i / D4;
        var val = vec4<f32>(0.0);
        if (!ragged || j < count) {
            val = k_row4(k_base + (kv0 + j) * p.k_stride_s, i % D4, D);
        }
        k_tile[i] = val;
    }
    for (var i = lid; i < BC * DV4; i += WG) {
        let j = i / DV4;
        var val = vec4<f32>(0.0);
        if (!ragged || j < count) {
            val = v_row4(v_base + (kv0 + j) * p.v_stride_s, i % DV4, DV);
        }
        v_tile[i] = val;
    }
    workgroupBarrier();

    // S = Q·Kᵀ for this invocation's TR rows and all BC keys. Each (row, key)
    // accumulates a vec4 of partial products (pure FMAs) and folds it once.
    var s: array<f32, TR * BC>;
    for (var j = 0u; j < BC; j++) {
        var part: array<vec4<f32>, TR>;
        for (var t = 0u; t < TR; t++) {
            part[t] = vec4<f32>(0.0);
        }
        for (var c = 0u; c < D4; c++) {
            let kk = k_tile[j * D4 + c];
            for (var t = 0u; t < TR; t++) {
                part[t] = fma(q_reg[t * D4 + c], kk, part[t]);
            }
        }
        for (var t = 0u; t < TR; t++) {
            s[t * BC + j] = (part[t].x + part[t].y) + (part[t].z + part[t].w);
        }
    }

    // Online softmax: new row max, rescale factor, P in place of S.
    for (var t = 0u; t < TR; t++) {
        var m_new = m[t];
        for (var j = 0u; j < BC; j++) {
            if (!ragged || j < count) {
                m_new = max(m_new, s[t * BC + j]);
            }
        }
        let alpha = exp2(m[t] - m_new);
        var row_sum = 0.0;
        for (var j = 0u; j < BC; j++) {
            var pj = exp2(s[t * BC + j] - m_new);
            if (ragged && j >= count) {
                pj = 0.0;
            }
            s[t * BC + j] = pj;
            row_sum += pj;
        }
        l[t] = l[t] * alpha + row_sum;
        m[t] = m_new;
        for (var c = 0u; c < DV4; c++) {
            acc[t * DV4 + c] *= alpha;
        }
    }

    // O += P·V, one output chunk at a time so its accumulator stays in a
    // register across all BC keys.
    for (var c = 0u; c < DV4; c++) {
        for (var j = 0u; j < BC; j++) {
            let vv = v_tile[j * DV4 + c];
            for (var t = 0u; t < TR; t++) {
                acc[t * DV4 + c] = fma(vec4<f32>(s[t * BC + j]), vv, acc[t * DV4 + c]);
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
    let qb = tile.qb;
    let b = tile.b;
    let h = tile.h;
    let hk = tile.hk;
    let n_valid = key_count(b, lid);

    let first = (p.flags & 1u) != 0u;
    for (var t = 0u; t < TR; t++) {
        let qi = qb * BR + lid + t * WG;
        for (var c = 0u; c < D4; c++) {
            q_reg[t * D4 + c] = q_scaled4(b, qi, h, c, qi < p.n_q);
        }
        let sb = state_base(tile.split, row_index(b, h, qi));
        if (first || qi >= p.n_q) {
            for (var c = 0u; c < DV4; c++) {
                acc[t * DV4 + c] = vec4<f32>(0.0);
            }
            m[t] = NEG_BIG;
            l[t] = 0.0;
        } else {
            m[t] = state[sb].x;
            l[t] = state[sb].y;
            for (var c = 0u; c < DV4; c++) {
                acc[t * DV4 + c] = state[sb + 1u + c];
            }
        }
    }

    let k_base = b * p.k_stride_b + hk * p.k_stride_h;
    let v_base = b * p.v_stride_b + hk * p.v_stride_h;
    let range = key_range(tile.split, n_valid);
    let full_blocks = (range.y - range.x) / BC;
    for (var blk = 0u; blk < full_blocks; blk++) {
        process_block(lid, k_base, v_base, range.x + blk * BC, BC, false);
    }
    let tail = (range.y - range.x) % BC;
    if (tail != 0u) {
        process_block(lid, k_base, v_base, range.x + full_blocks * BC, tail, true);
    }

    let out = writes_output();
    for (var t = 0u; t < TR; t++) {
        let qi = qb * BR + lid + t * WG;
        if (qi >= p.n_q) {
            continue;
        }
        let row = row_index(b, h, qi);
        if (out) {
            // Deferred normalisation. A row with no visible key has l = 0:
            // O = 0 and LSE = −∞ rather than 0/0.
            let inv = select(1.0 / l[t], 0.0, l[t] == 0.0);
            let base = o_base(b, qi, h);
            for (var c = 0u; c < DV4; c++) {
                store_o4(base, c, acc[t * DV4 + c] * inv);
            }
            lse[row] = lse_of(m[t], l[t]);
        } else {
            // Carried to the next launch, or this split's partial for
            // split_combine.wgsl.
            let sb = state_base(tile.split, row);
            state[sb] = vec4<f32>(m[t], l[t], 0.0, 0.0);
            for (var c = 0u; c < DV4; c++) {
                state[sb + 1u + c] = acc[t * DV4 + c];
            }
        }
    }
}
