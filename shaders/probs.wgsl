// Attention probabilities, the second pass after the fused kernel: for each
// written element, P = exp2(S − m) / l with S the row's score in log2 units
// (Q scaled by scale·log2 e, as in the fused kernels), the bias and boolean
// mask applied (mask_score), m and l the row's max and sum of exp2(S − m)
// from a first pass over the same scores, and the key length, query length
// and window deciding which keys a row sees (the fused kernel's LSE says
// which rows see none). Masked keys, padded query rows and
// rows with no visible key (LSE = −∞) are 0, so each row sums to 1 or 0.
// The fused output stays O(n); only this pass writes n_q × n_kv values, and
// only for the heads asked for.
//
// Output `probs` (binding 9), f32, padded batches: [B, PH, n_q, n_kv] for
// the PH heads listed in `heads` (binding 10), or, with PH = 0,
// [B, n_q, n_kv] averaged over all H heads (torch MHA's
// average_attn_weights). One invocation per written row of n_kv values (its
// query row in registers), 64 per workgroup, the grid folded (x, y). Host-prepended: D, DV, D4, DV4, MASK, WIN, PH and the
// fused family's tensor access, params (the fused launch's: strides, scale,
// masks), flash_common.wgsl and softmax_state.wgsl.

@group(0) @binding(9) var<storage, read_write> probs: array<f32>;
@group(0) @binding(10) var<storage, read> heads: array<u32>;

// Query row i of head h, scaled to log2 units, in registers for its row of
// keys.
var<private> qr: array<vec4<f32>, D4>;

// The score of key j for the row in `qr`, in log2 units, with the bias and
// boolean mask applied (MASKED where the mask hides the key).
fn row_score(kb: u32, at_mask: vec2<u32>, j: u32) -> f32 {
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < D4; c++) {
        acc = fma(qr[c], k_row4(kb, c, D), acc);
    }
    return mask_score(hsum4(acc), at_mask, j);
}

// Writes (`first`) or adds w·P of query row i of head h in batch entry b to
// the n_kv values of `probs` from `at` (0 where the row does not see a key).
fn add_row(b: u32, h: u32, i: u32, sq: Seq, at: u32, w: f32, first: bool) {
    let keys = row_keys(sq, i);
    let lse_r = lse[row_index(b, h, sq.q0 + i)];
    // Padded rows, empty rows (LSE = −∞): zeros.
    let live = i < sq.nq_used && lse_r > -3.0e38;
    for (var c = 0u; c < D4; c++) {
        qr[c] = q_scaled4(b, sq.q0 + i, h, c, live);
    }
    let at_mask = mask_row(b, h, i);
    let hk = h / params.group;
    // The row's own max m and sum l over the keys it sees, from the very
    // scores the second loop turns into P = exp2(s − m) / l: the largest
    // key's s − m is exactly 0. P taken from the fused kernel's LSE instead
    // carried the difference of two dot products summed in different orders
    // (and the LSE's own roundings): at logits near 30, errors of 1.2e-5
    // where softmax in f32 had 8e-7.
    var m = MASKED;
    var l = 0.0;
    if (live) {
        for (var j = keys.x; j < keys.y; j++) {
            let s = row_score(k_base(b, sq.k0 + j, hk), at_mask, j);
            if (s > MASKED) {
                // Merges the one-key state (s, 1) into (m, l).
                let mn = max(m, s);
                l = l * merge_weight(m, mn) + merge_weight(s, mn);
                m = mn;
            }
        }
    }
    let inv = inv_l(l);
    for (var j = 0u; j < params.n_kv; j++) {
        var p = 0.0;
        if (live && j >= keys.x && j < keys.y) {
            let s = row_score(k_base(b, sq.k0 + j, hk), at_mask, j);
            p = select(exp2(s - m) * inv, 0.0, s <= MASKED);
        }
        probs[at + j] = select(probs[at + j], 0.0, first) + w * p;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // One invocation per written row (b, plane, i).
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    let planes = max(PH, 1u);
    let i = r % params.n_q;
    let plane = r / params.n_q;
    let b = plane / planes;
    if (b >= params.batch) {
        return;
    }
    let sq = seq_of(b);
    let at = r * params.n_kv;
    if (PH == 0u) {
        // The mean: the first head writes, the others add.
        for (var h = 0u; h < params.heads; h++) {
            add_row(b, h, i, sq, at, 1.0 / f32(params.heads), h == 0u);
        }
    } else {
        add_row(b, heads[plane % planes], i, sq, at, 1.0, true);
    }
}
