
// Lane-per-key variant for CPU adapters with a fixed subgroup size (see
// flash_forward.wgsl for the algorithm and names). The workgroup is one
// subgroup of SG invocations; every invocation holds all BR query rows of the
// workgroup (the same values in every lane) and one key of each SG-key block
// (its own K and V row, in registers). S = Q·Kᵀ then needs no loads at all in
// its inner loop, the row max and row sum are subgroup reductions, and each
// lane keeps a partial O over its own keys, summed across lanes once at the
// end. No workgroup memory, one barrier (the uniform load of the key length).
//
// Key lengths only: the planner refuses query lengths, packed batches,
// windows, bias and masks for this variant (the sequence helpers it shares
// then give q0 = k0 = 0 and every query row used).
//
// Host-prepended constants: D, DV, D4, DV4, BR (rows per workgroup, = ROWS),
// SG, KPL (keys per lane per block).

// The BR rows of Q, scaled; this lane's keys of the block. m and l are the
// same in every lane, O is the lane's partial over its own keys
// (softmax_state.wgsl, ROWS = BR).
var<private> Q: array<vec4<f32>, BR * D4>;
var<private> k_row: array<vec4<f32>, KPL * D4>;
var<private> v_row: array<vec4<f32>, KPL * DV4>;

@compute @workgroup_size(SG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let tile = workgroup_tile(wid);
    if (!tile.live) {
        return;
    }
    let b = tile.b;
    let h = tile.h;
    let sq = load_seq(b, lane);
    let i0 = tile.qb * BR;
    if (i0 >= sq.nq) {
        return;
    }
    let i_end = max(min(i0 + BR, sq.nq_used), i0);

    let first = (params.flags & LAUNCH_FIRST) != 0u;
    for (var r = 0u; r < BR; r++) {
        let qi = i0 + r;
        for (var c = 0u; c < D4; c++) {
            Q[r * D4 + c] = q_scaled4(b, sq.q0 + qi, h, c, qi < i_end);
        }
        state_reset(r);
        if (!first && qi < sq.nq) {
            // A carried state: m and l in every lane, O in lane 0 only (the
            // lanes' partial O are summed at the end).
            let sb = state_base(tile.split, row_index(b, h, sq.q0 + qi));
            if (lane == 0u) {
                state_load(r, sb);
            } else {
                m[r] = state[sb].x;
                l[r] = state[sb].y;
            }
        }
    }

    let kb = k_base(b, sq.k0, tile.hk);
    let vb = v_base(b, sq.k0, tile.hk);
    let range = key_range(tile.split, block_keys(sq, i0, i_end));
    let kv_begin = range.x;
    let kv_end = range.y;
    // Each block is SG·KPL keys: lane ℓ takes keys kv0 + ℓ + SG·u, u < KPL, so
    // the running max and the rescale of O happen once per SG·KPL keys.
    for (var kv0 = kv_begin; kv0 < kv_end; kv0 += SG * KPL) {
        for (var u = 0u; u < KPL; u++) {
            let j = kv0 + lane + SG * u;
            for (var c = 0u; c < D4; c++) {
                var val = vec4<f32>(0.0);
                if (j < kv_end) {
                    val = k_row4(kb + j * params.k_stride_s, c, D);
                }
                k_row[u * D4 + c] = val;
            }
            for (var c = 0u; c < DV4; c++) {
                var val = vec4<f32>(0.0);
                if (j < kv_end) {
                    val = v_row4(vb + j * params.v_stride_s, c, DV);
                }
                v_row[u * DV4 + c] = val;
            }
        }
        for (var r = 0u; r < BR; r++) {
            var S: array<f32, KPL>;
            var s_max = NEG_BIG;
            for (var u = 0u; u < KPL; u++) {
                var part = vec4<f32>(0.0);
                for (var c = 0u; c < D4; c++) {
                    part = fma(Q[r * D4 + c], k_row[u * D4 + c], part);
                }
                S[u] = (part.x + part.y) + (part.z + part.w);
                if (kv0 + lane + SG * u >= kv_end) {
                    S[u] = MASKED;
                }
                s_max = max(s_max, S[u]);
            }
            let m_new = max(m[r], subgroupMax(s_max));
            state_rescale(r, m_new);
            // P in place of S.
            var p_sum = 0.0;
            for (var u = 0u; u < KPL; u++) {
                S[u] = exp2(S[u] - m_new);
                p_sum += S[u];
            }
            l[r] += subgroupAdd(p_sum);
            for (var c = 0u; c < DV4; c++) {
                var a = O[r * DV4 + c];
                for (var u = 0u; u < KPL; u++) {
                    a = fma(vec4<f32>(S[u]), v_row[u * DV4 + c], a);
                }
                O[r * DV4 + c] = a;
            }
        }
    }

    let out = writes_output();
    for (var r = 0u; r < BR; r++) {
        let qi = i0 + r;
        if (qi >= i_end) {
            // A padded query row: O = 0, LSE = −∞ (or an empty partial).
            state_reset(r);
        }
        let row = row_index(b, h, sq.q0 + qi);
        let inv = inv_l(l[r]);
        let sb = state_base(tile.split, row);
        let ob = o_base(b, sq.q0 + qi, h);
        for (var c = 0u; c < DV4; c++) {
            let total = subgroupAdd(O[r * DV4 + c]);
            if (lane == 0u && qi < sq.nq) {
                if (out) {
                    store_o4(ob, c, total * inv);
                } else {
                    state[sb + 1u + c] = total;
                }
            }
        }
        if (lane == 0u && qi < sq.nq) {
            if (out) {
                lse[row] = lse_of(m[r], l[r]);
            } else {
                state[sb] = vec4<f32>(m[r], l[r], 0.0, 0.0);
            }
        }
    }
}
