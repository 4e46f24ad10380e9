// Split-KV combine: merges the partial softmax states that the fused kernels
// write per key split (see flash_common.wgsl, `state`) into O and LSE.
//
// In LSE terms, lse = log Σ_s exp(lse_s) and O = Σ_s exp(lse_s − lse)·O_s.
// The state keeps each split as m_s (row max, log2 units), l_s (sum of
// exp2(score − m_s)) and the unnormalised O_s·l_s, so the merge formula of
// softmax_state.wgsl (state_merge, one split at a time) gives
//   l = Σ w_s·l_s,   O = Σ w_s·O_s / l,   LSE = (m + log2 l)·ln 2,
// with w_s = exp2(m_s − m): one exp2 per split and no division per split. An
// empty split (every key masked: m = NEG_BIG, l = 0, O = 0) adds nothing; a
// row whose splits are all empty gets O = 0 and LSE = −∞, never NaN.
//
// Padded query rows arrive as empty states from every split, so they too come
// out as O = 0, LSE = −∞.
//
// Lanes across d_v: a workgroup of 64 invocations merges 64/CL rows, CL
// lanes per row (a power of two ≥ ⌈d_v/4⌉ up to 64), lane c of a row owning
// the row's vec4 columns c, c + CL, … (OC of them); every lane of a row
// reads the splits' (m, l), the same words. Host-prepended constants D, DV,
// D4, DV4, ROWS = 1, OC, CL (MASK and WIN are 0: the combine needs neither).

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * (64u / CL) + lid / CL;
    let lane = lid % CL;
    if (row >= params.lse_rows) {
        return;
    }
    // Every split's partial merged into row 0 of this invocation's state
    // (ROWS = 1), one pass over the splits.
    state_reset(0u);
    for (var s = 0u; s < params.splits; s++) {
        let sb = state_base(s, row);
        let w = state_merge(0u, state[sb].x, state[sb].y);
        for (var i = 0u; i < OC; i++) {
            let c = lane + CL * i;
            if (c < DV4) {
                O[i] = fma(vec4<f32>(w), state[sb + 1u + c], O[i]);
            }
        }
    }
    // Row = b·lse_stride_b + h·lse_stride_h + t: lse [B, H, n_q] for padded
    // batches, [H, total_q] for packed ones (lse_stride_b = 0).
    let t = row % params.lse_stride_h;
    let bh = row / params.lse_stride_h;
    var b = 0u;
    var h = bh;
    if ((params.seq_flags & SEQ_VARLEN) == 0u) {
        b = bh / params.heads;
        h = bh % params.heads;
    }
    let ob = o_base(b, t, h);
    let inv = inv_l(l[0]);
    for (var i = 0u; i < OC; i++) {
        let c = lane + CL * i;
        if (c < DV4) {
            store_o4(ob, c, O[i] * inv);
        }
    }
    if (lane == 0u) {
        lse[row] = lse_of(m[0], l[0]);
    }
}
