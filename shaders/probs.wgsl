// Attention probabilities, the second pass after the fused kernel: for each
// written element, P = exp2(S − LSE·log2 e) with S the row's score in log2
// units (Q scaled by scale·log2 e, as in the fused kernels), the bias and
// boolean mask applied (mask_score), and the key length, query length and
// window deciding which keys a row sees. Masked keys, padded query rows and
// rows with no visible key (LSE = −∞) are 0, so each row sums to 1 or 0.
// The fused output stays O(n); only this pass writes n_q × n_kv values, and
// only for the heads asked for.
//
// Output `probs` (binding 9), f32, padded batches: [B, PH, n_q, n_kv] for
// the PH heads listed in `heads` (binding 10), or, with PH = 0,
// [B, n_q, n_kv] averaged over all H heads (torch MHA's
// average_attn_weights). One invocation per element, 64 per workgroup, the
// grid folded (x, y). Host-prepended: D, DV, D4, DV4, MASK, WIN, PH and the
// fused family's tensor access, params (the fused launch's: strides, scale,
// masks), flash_common.wgsl and softmax_state.wgsl.

@group(0) @binding(9) var<storage, read_write> probs: array<f32>;
@group(0) @binding(10) var<storage, read> heads: array<u32>;

// P of key j for query row i of head h in batch entry b.
fn prob(b: u32, h: u32, i: u32, j: u32, sq: Seq) -> f32 {
    let keys = row_keys(sq, i);
    if (i >= sq.nq_used || j < keys.x || j >= keys.y) {
        return 0.0;
    }
    let lse_r = lse[row_index(b, h, sq.q0 + i)];
    if (!(lse_r > -3.0e38)) {
        return 0.0;
    }
    let qb = q_base(b, sq.q0 + i, h);
    let kb = k_base(b, sq.k0 + j, h / params.group);
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < D4; c++) {
        acc = fma(q_row4(qb, c, D) * params.scale_log2, k_row4(kb, c, D), acc);
    }
    let s = mask_score(hsum4(acc), mask_row(b, h, i), j);
    if (s <= MASKED) {
        return 0.0;
    }
    return exp2(s - lse_r * LOG2E);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 64u + lid;
    let planes = max(PH, 1u);
    let j = e % params.n_kv;
    let i = (e / params.n_kv) % params.n_q;
    let plane = e / (params.n_kv * params.n_q);
    let b = plane / planes;
    if (b >= params.batch) {
        return;
    }
    let sq = seq_of(b);
    var p = 0.0;
    if (PH == 0u) {
        for (var h = 0u; h < params.heads; h++) {
            p += prob(b, h, i, j, sq);
        }
        p /= f32(params.heads);
    } else {
        p = prob(b, heads[plane % planes], i, j, sq);
    }
    probs[e] = p;
}
