// Fused attention for decode-shaped problems (a few query rows, many keys)
// on CPU adapters: flash-decoding inside one workgroup, same semantics,
// params and bindings as flash_forward.wgsl. GPUs get
// flash_lanes.wgsl, which spreads each key across lanes instead.
//
// A workgroup owns BR packed query rows of one key/value head and one split
// of the key range (decode_rows.wgsl). Invocation `lid` takes keys lid,
// lid + WG, … of the range straight from memory (each key is read once per
// workgroup) and keeps, for each of its BR rows, a private online softmax:
// running max m, sum l and unnormalised O (softmax_state.wgsl, ROWS = BR).
// The keys come KU per lane per step: the KU scores, then one update of the
// state for all of them (the new max, one rescale of l and O, the KU weights
// into O), so O is written once per KU keys; the last step's keys past the
// range weigh 0. With KU 1, or a boolean mask (whose unseen keys are skipped
// unread), each key is merged into the state on its own (state_merge),
// whose rescale happens only when a lane's max grows. When
// the keys are done the WG partial states are merged through workgroup
// memory with the same formula (lane 0 finds the max and the weighted sum,
// then DVC vec4 columns of O at a time), and the merged state goes to O and
// LSE or, with several splits, to `state` for split_combine.wgsl. No barrier
// inside the key loop, no subgroup operations: it runs on every adapter, GL
// included.
//
// Host-prepended constants: D, DV, D4, DV4, MASK, WIN, SKIP (see flash_forward.wgsl),
// BR (rows per workgroup, = ROWS), WG (invocations), DVC (vec4 columns per
// merge step), KU (keys per lane per step).
// Padded query rows (past their query length) hold an empty state, so they
// come out as O = 0, LSE = −∞.

// The BR rows of Q, scaled (m, l and O: softmax_state.wgsl).
var<private> Q: array<vec4<f32>, BR * D4>;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_l: array<f32, WG>;
var<workgroup> red_o: array<vec4<f32>, WG * DVC>;
// The merged (max, sum) of the row being merged, computed by lane 0.
var<workgroup> wg_merged: vec2<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // qb: the block of packed rows; h = hk: the kv head.
    let t = grid_tile(wid, params.kv_heads);
    if (!t.live) {
        return;
    }
    let sq = load_seq(t.b, lid);
    let first = (params.flags & LAUNCH_FIRST) != 0u;
    // The used rows' lowest and highest query index, for the key range.
    let used_rows = setup_rows(t, sq, 0u);
    for (var r = 0u; r < BR; r++) {
        let hq = packed_row(t, sq, r);
        let used = row_used(sq, hq);
        for (var c = 0u; c < D4; c++) {
            Q[r * D4 + c] = q_scaled4(t.b, sq.q0 + hq.y, hq.x, c, used);
        }
        // A carried state continues in lane 0; the other lanes start empty.
        if (!first && used && lid == 0u) {
            state_load(r, state_base(t.split, row_index(t.b, hq.x, sq.q0 + hq.y)));
        } else {
            state_reset(r);
        }
    }

    let kb = k_base(t.b, sq.k0, t.hk);
    let vb = v_base(t.b, sq.k0, t.hk);
    // Block skipping: the union of the used rows' keys (per-key checks only
    // where a window, mask or bias applies, or skipping is off).
    let range = key_range(t.split, block_keys(sq, used_rows.x, used_rows.y + 1u));
    let checked = WIN != 0u || MASK != 0u || SKIP == 0u;
    if ((MASK & MASK_BOOL) == 0u && KU > 1u) {
        // KU keys per lane per step, WG·KU per workgroup step, the same
        // number of steps in every lane. Keys past the range are read as
        // its last key (a key of the range, never an element past a length)
        // and weigh exactly 0: exp2(MASKED − m) is 0.
        let group = WG * KU;
        let steps = select(0u, (range.y - range.x + group - 1u) / group, range.y > range.x);
        let last = max(range.y, 1u) - 1u;
        for (var t = 0u; t < steps; t++) {
            let j0 = range.x + t * group + lid;
            var part: array<vec4<f32>, BR * KU>;
            for (var i = 0u; i < BR * KU; i++) {
                part[i] = vec4<f32>(0.0);
            }
            for (var c = 0u; c < D4; c++) {
                for (var i = 0u; i < KU; i++) {
                    let kk = k_row4(kb + min(j0 + i * WG, last) * params.k_stride_s, c, D);
                    for (var r = 0u; r < BR; r++) {
                        part[r * KU + i] = fma(Q[r * D4 + c], kk, part[r * KU + i]);
                    }
                }
            }
            // The KU keys are one block: the new max, the old state's
            // weight alpha, each key's weight P.
            var P: array<f32, BR * KU>;
            var alpha: array<f32, BR>;
            for (var r = 0u; r < BR; r++) {
                var mx = m[r];
                for (var i = 0u; i < KU; i++) {
                    let j = j0 + i * WG;
                    let s = row_score(hsum4(part[r * KU + i]), r, min(j, last), checked);
                    P[r * KU + i] = select(MASKED, s, j < range.y);
                    mx = max(mx, P[r * KU + i]);
                }
                alpha[r] = merge_weight(m[r], mx);
                var sum = 0.0;
                for (var i = 0u; i < KU; i++) {
                    P[r * KU + i] = merge_weight(P[r * KU + i], mx);
                    sum += P[r * KU + i];
                }
                l[r] = fma(l[r], alpha[r], sum);
                m[r] = mx;
            }
            for (var c = 0u; c < DV4; c++) {
                var acc: array<vec4<f32>, BR>;
                for (var r = 0u; r < BR; r++) {
                    acc[r] = O[r * DV4 + c] * alpha[r];
                }
                for (var i = 0u; i < KU; i++) {
                    let vv = v_row4(vb + min(j0 + i * WG, last) * params.v_stride_s, c, DV);
                    for (var r = 0u; r < BR; r++) {
                        acc[r] = fma(vec4<f32>(P[r * KU + i]), vv, acc[r]);
                    }
                }
                for (var r = 0u; r < BR; r++) {
                    O[r * DV4 + c] = acc[r];
                }
            }
        }
    } else {
        // One key per lane per step (KU 1, or a boolean mask: keys no row
        // sees are then skipped unread).
        for (var j = range.x + lid; j < range.y; j += WG) {
            if ((MASK & MASK_BOOL) != 0u) {
                // Keys no row of the workgroup sees are not loaded.
                if (!any_row_sees(j)) {
                    continue;
                }
            }
            var part: array<vec4<f32>, BR>;
            for (var r = 0u; r < BR; r++) {
                part[r] = vec4<f32>(0.0);
            }
            let kr = kb + j * params.k_stride_s;
            for (var c = 0u; c < D4; c++) {
                let kk = k_row4(kr, c, D);
                for (var r = 0u; r < BR; r++) {
                    part[r] = fma(Q[r * D4 + c], kk, part[r]);
                }
            }
            // One key is a state of its own: m = S, l = 1, O = V; P is its weight.
            var P: array<f32, BR>;
            for (var r = 0u; r < BR; r++) {
                P[r] = state_merge(r, row_score(hsum4(part[r]), r, j, checked), 1.0);
            }
            let vr = vb + j * params.v_stride_s;
            for (var c = 0u; c < DV4; c++) {
                let vv = v_row4(vr, c, DV);
                for (var r = 0u; r < BR; r++) {
                    O[r * DV4 + c] = fma(vec4<f32>(P[r]), vv, O[r * DV4 + c]);
                }
            }
        }
    }

    // Padded query rows leave an empty state: O = 0, LSE = −∞.
    for (var r = 0u; r < BR; r++) {
        if (!row_used(sq, packed_row(t, sq, r))) {
            state_reset(r);
        }
    }

    // Merge the WG lanes' states, row by row (the merge formula of
    // softmax_state.wgsl in two passes: the max M, then the weights). Every
    // barrier below is reached by the whole workgroup: the loops' bounds are
    // constants.
    let out = writes_output();
    for (var r = 0u; r < BR; r++) {
        let hq = packed_row(t, sq, r);
        let row = row_index(t.b, hq.x, sq.q0 + hq.y);
        let sb = state_base(t.split, row);
        let ob = o_base(t.b, sq.q0 + hq.y, hq.x);
        workgroupBarrier();
        red_m[lid] = m[r];
        red_l[lid] = l[r];
        workgroupBarrier();
        if (lid == 0u) {
            var mx = NEG_BIG;
            for (var i = 0u; i < WG; i++) {
                mx = max(mx, red_m[i]);
            }
            var total = 0.0;
            for (var i = 0u; i < WG; i++) {
                total = fma(red_l[i], merge_weight(red_m[i], mx), total);
            }
            wg_merged = vec2<f32>(mx, total);
        }
        let merged = workgroupUniformLoad(&wg_merged);
        let mx = merged.x;
        let total = merged.y;
        let w = merge_weight(m[r], mx);
        let inv = inv_l(total);
        for (var c0 = 0u; c0 < DV4; c0 += DVC) {
            workgroupBarrier();
            for (var cc = 0u; cc < DVC; cc++) {
                if (c0 + cc < DV4) {
                    red_o[lid * DVC + cc] = O[r * DV4 + c0 + cc] * w;
                }
            }
            workgroupBarrier();
            let c = c0 + lid;
            if (lid < DVC && c < DV4 && hq.z != 0u) {
                var col = vec4<f32>(0.0);
                for (var i = 0u; i < WG; i++) {
                    col += red_o[i * DVC + lid];
                }
                if (out) {
                    store_o4(ob, c, col * inv);
                } else {
                    state[sb + 1u + c] = col;
                }
            }
        }
        if (lid == 0u && hq.z != 0u) {
            if (out) {
                lse[row] = lse_of(mx, total);
            } else {
                state[sb] = vec4<f32>(mx, total, 0.0, 0.0);
            }
        }
    }
}
