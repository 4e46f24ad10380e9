// The online-softmax state, FlashAttention-2's m, l and O, written once for
// every fused kernel (flash_forward, flash_decode, flash_lanes) and the
// split-KV combine. The host prepends it after flash_common.wgsl; ROWS (query
// rows of state per invocation: TR, BR or 1) and OC (vec4 columns of O per
// row and invocation: DV4, or flash_lanes.wgsl's share of them) come
// with the specialisation. state_load, state_store and state_finish move
// whole rows and are for kernels with OC = DV4.
//
// Per row r:  m  running max of the scores seen, log2 units (Q carries
//                scale·log2 e, so the softmax is exp2);
//             l  Σ exp2(S − m) over those scores;
//             O  Σ exp2(S − m)·V, not yet divided by l.
// Empty: m = NEG_BIG (a finite −∞: NEG_BIG − NEG_BIG is 0, not NaN), l = 0,
// O = 0. A row that ends empty gets O = 0 and LSE = −∞.
//
// Merging two states of a row (a new key block, a lane's keys, a key split):
// with M = max(m_a, m_b) and w = exp2(m − M) per side,
//     m = M,   l = w_a·l_a + w_b·l_b,   O = w_a·O_a + w_b·O_b,
// which in LSE terms is lse = log Σ exp(lse_s), O = Σ exp(lse_s − lse)·O_s.

var<private> m: array<f32, ROWS>;
var<private> l: array<f32, ROWS>;
var<private> O: array<vec4<f32>, ROWS * OC>;

// Vec4s of one row in the `state` buffer: (m, l, 0, 0), then DV4 of O.
const STATE_VEC4S: u32 = 1u + DV4;

// First vec4 of the state of query row `row` (row_index) in key split `split`.
fn state_base(split: u32, row: u32) -> u32 {
    return (split * params.lse_rows + row) * STATE_VEC4S;
}

// Row r starts empty.
fn state_reset(r: u32) {
    m[r] = NEG_BIG;
    l[r] = 0.0;
    for (var c = 0u; c < OC; c++) {
        O[r * OC + c] = vec4<f32>(0.0);
    }
}

// Row r continues a state carried from an earlier launch (`state` at sb).
fn state_load(r: u32, sb: u32) {
    m[r] = state[sb].x;
    l[r] = state[sb].y;
    for (var c = 0u; c < DV4; c++) {
        O[r * OC + c] = state[sb + 1u + c];
    }
}

// Row r's state to `state` at sb: carried to the next launch, or this
// split's partial for split_combine.wgsl.
fn state_store(r: u32, sb: u32) {
    state[sb] = vec4<f32>(m[r], l[r], 0.0, 0.0);
    for (var c = 0u; c < DV4; c++) {
        state[sb + 1u + c] = O[r * OC + c];
    }
}

// The weight exp2(m_s − m_max) of a state with max m_s in a merge whose max
// is m_max (the merge formula above, one side).
fn merge_weight(m_s: f32, m_max: f32) -> f32 {
    return exp2(m_s - m_max);
}

// Raises row r's max to m_new ≥ m[r]: l and O scale by exp2(m − m_new).
fn state_rescale(r: u32, m_new: f32) {
    let alpha = merge_weight(m[r], m_new);
    l[r] *= alpha;
    for (var c = 0u; c < OC; c++) {
        O[r * OC + c] *= alpha;
    }
    m[r] = m_new;
}

// Merges a state (m_s, l_s, O_s) into row r, the rescale only when the max
// grows; returns the weight the caller applies to O_s (O += w·O_s), which
// lives wherever the caller has it (a V row, `state`).
fn state_merge(r: u32, m_s: f32, l_s: f32) -> f32 {
    if (m_s > m[r]) {
        state_rescale(r, m_s);
    }
    let w = merge_weight(m_s, m[r]);
    l[r] = fma(w, l_s, l[r]);
    return w;
}

// 1/l, or 0 for an empty row (O = 0 rather than 0/0).
fn inv_l(l_r: f32) -> f32 {
    return select(1.0 / l_r, 0.0, l_r == 0.0);
}

// LSE in natural-log units from m (log2 units) and l; −∞ for an empty row.
fn lse_of(m_r: f32, l_r: f32) -> f32 {
    return select((m_r + log2(l_r)) * LN2, bitcast<f32>(0xff800000u), l_r == 0.0);
}

// The epilogue of row r: O / l to o at `ob` (o_base), LSE to lse[row].
fn state_finish(r: u32, ob: u32, row: u32) {
    let inv = inv_l(l[r]);
    for (var c = 0u; c < DV4; c++) {
        store_o4(ob, c, O[r * OC + c] * inv);
    }
    lse[row] = lse_of(m[r], l[r]);
}

// Whether this launch writes O and LSE (the last launch of an unsplit key
// range) rather than `state`.
fn writes_output() -> bool {
    return (params.flags & LAUNCH_LAST) != 0u && params.splits == 1u;
}
