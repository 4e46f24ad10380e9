// Split-KV combine: merges the partial softmax states that the fused kernels
// write per key split (see flash_common.wgsl, `state`) into O and LSE.
//
// In LSE terms, lse = log Σ_s exp(lse_s) and O = Σ_s exp(lse_s − lse)·O_s.
// The state keeps each split as m_s (row max, log2 units), l_s (sum of
// exp2(score − m_s)) and the unnormalised acc_s = l_s·O_s, so with
// M = max_s m_s and w_s = exp2(m_s − M) the same sums read
//   L = Σ w_s·l_s,   O = Σ w_s·acc_s / L,   LSE = (M + log2 L)·ln 2,
// one exp2 per split and no division per split. An empty split (every key
// masked: m = NEG_BIG, l = 0, acc = 0) adds nothing; a row whose splits are all
// empty gets O = 0 and LSE = −∞, never NaN.
//
// Padded query rows arrive as empty states from every split, so they too come
// out as O = 0, LSE = −∞. One invocation per query row; host-prepended
// constants D, DV, D4, DV4 (MASK and WIN are 0: the combine needs neither).

var<private> sum: array<vec4<f32>, DV4>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (row >= p.lse_rows) {
        return;
    }
    var mx = NEG_BIG;
    for (var s = 0u; s < p.splits; s++) {
        mx = max(mx, state[state_base(s, row)].x);
    }
    for (var c = 0u; c < DV4; c++) {
        sum[c] = vec4<f32>(0.0);
    }
    var total = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let sb = state_base(s, row);
        let head = state[sb];
        let w = exp2(head.x - mx);
        total = fma(w, head.y, total);
        for (var c = 0u; c < DV4; c++) {
            sum[c] = fma(vec4<f32>(w), state[sb + 1u + c], sum[c]);
        }
    }
    let inv = select(1.0 / total, 0.0, total == 0.0);
    // Row = b·lse_stride_b + h·lse_stride_h + t: lse [B, H, n_q] for padded
    // batches, [H, total_q] for packed ones (lse_stride_b = 0).
    let t = row % p.lse_stride_h;
    let bh = row / p.lse_stride_h;
    var b = 0u;
    var h = bh;
    if ((p.seq_flags & SEQ_VARLEN) == 0u) {
        b = bh / p.heads;
        h = bh % p.heads;
    }
    let base = o_base(b, t, h);
    for (var c = 0u; c < DV4; c++) {
        store_o4(base, c, sum[c] * inv);
    }
    lse[row] = lse_of(mx, total);
}
