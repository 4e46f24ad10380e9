// Fused attention for GPUs: each key's head dim spread across KL lanes, so
// a warp's loads of K and V are coalesced rows and a lane holds only a share
// of each row of Q and O; scores are summed across those lanes by subgroup
// shuffles. Same semantics, params and bindings as the other fused kernels.
// A workgroup owns BR packed query rows of one key/value head (GQA heads
// packed together: decode_rows.wgsl) and one split of the key range.
//
// Lane layout. The WG invocations are RG row groups × KG key groups × KL
// lanes (lane = (rg·KG + g)·KL + col). Lane `col` owns vec4 columns col,
// col + KL, … of the head dims (QC of Q's, OC = ⌈DV4/KL⌉ of O's) for the TR
// rows of its row group (packed rows rg·TR …, BR = RG·TR). Each step of the
// key loop takes KG keys, key j0 + g to key group g: a lane loads its QC
// vec4s of the key's K row (KL consecutive lanes read KL consecutive vec4s;
// the row groups of a warp read the same addresses) and each feeds TR fused
// multiply-adds; the KL lanes sum their partial dot products (a butterfly of
// subgroupShuffleXor, or workgroup memory), so every lane of the group holds
// the same score, running max m and sum l for each row; then each lane adds
// P·V to its own columns. One key at a time: the online softmax rescales
// only when a row's max grows, and no score block is kept.
//
// Two shapes, chosen by the planner (src/plan/lanes.rs):
// - decode (RG = 1): few rows, every lane holds all BR (= TR) of them, and
//   the KG key groups stream different keys; at the end their states are
//   merged per row with the formula of softmax_state.wgsl: the max M over
//   the workgroup (subgroupMax, then one value per subgroup through
//   workgroup memory; or a workgroup-memory reduction), each lane scales l
//   and O by exp2(m − M), and the groups' sums per column are added
//   (subgroupShuffleXor across groups, then across subgroups through
//   workgroup memory). The first KL lanes write O and LSE, or the split's
//   partial state for split_combine.wgsl.
// - rows (KG = 1): many rows, RG row groups of TR rows each go through every
//   key of the range; no merge, each lane writes its columns.
//
// The key loop runs the same number of steps in every lane (keys past the
// range are masked, not skipped), so the workgroup-memory reductions of
// adapters without subgroups (GL, WebGPU without the feature) sit in uniform
// control flow. Host-prepended constants: D, DV, D4, DV4, MASK, WIN, SKIP,
// BR, ROWS = TR, WG, RG, KG, KL, QC, OC and FULLC (1 when KL divides both
// D4 and DV4: no lane has a column past the row). The host appends one of
// the two sections below: `subgroups` or `workgroup` (the reductions and the
// entry point).

var<private> Q: array<vec4<f32>, TR * QC>;
// This lane's partial dot products of the current key, one per row.
var<private> part: array<f32, TR>;
// Reductions (see the sections): one float per lane and row, one vec4 per
// lane.
var<workgroup> red_f: array<f32, WG * TR>;
var<workgroup> red_v: array<vec4<f32>, WG>;

// Vec4 column i of this lane (`col`), and whether it lies in a row of n4.
fn lane_col(col: u32, i: u32) -> u32 {
    return col + KL * i;
}

fn in_row(c: u32, n4: u32) -> bool {
    return FULLC != 0u || c < n4;
}

fn flash_lanes(wid: vec3<u32>, lid: u32, lane: u32) {
    let t = grid_tile(wid, params.kv_heads);
    if (!t.live) {
        return;
    }
    let col = lane % KL;
    let g = (lane / KL) % KG;
    let row0 = lane / (KL * KG) * TR;
    let sq = load_seq(t.b, lid);
    let first = (params.flags & LAUNCH_FIRST) != 0u;
    let used_rows = setup_rows(t, sq, row0);
    for (var r = 0u; r < TR; r++) {
        let hq = packed_row(t, sq, row0 + r);
        let used = row_used(sq, hq);
        for (var i = 0u; i < QC; i++) {
            let c = lane_col(col, i);
            Q[r * QC + i] = q_scaled4(t.b, sq.q0 + hq.y, hq.x, c, used && in_row(c, D4));
        }
        // A carried state continues in key group 0; the others start empty.
        state_reset(r);
        if (!first && used && g == 0u) {
            let sb = state_base(t.split, row_index(t.b, hq.x, sq.q0 + hq.y));
            m[r] = state[sb].x;
            l[r] = state[sb].y;
            for (var i = 0u; i < OC; i++) {
                let c = lane_col(col, i);
                if (in_row(c, DV4)) {
                    O[r * OC + i] = state[sb + 1u + c];
                }
            }
        }
    }

    let kb = k_base(t.b, sq.k0, t.hk);
    let vb = v_base(t.b, sq.k0, t.hk);
    let range = key_range(t.split, block_keys(sq, used_rows.x, used_rows.y + 1u));
    let checked = WIN != 0u || MASK != 0u || SKIP == 0u;
    for (var j0 = range.x; j0 < range.y; j0 += KG) {
        let j = j0 + g;
        var seen = j < range.y;
        if ((MASK & MASK_BOOL) != 0u) {
            // Keys none of the lane's rows sees are not loaded.
            seen = seen && any_row_sees(j);
        }
        var acc4: array<vec4<f32>, TR>;
        for (var r = 0u; r < TR; r++) {
            acc4[r] = vec4<f32>(0.0);
        }
        if (seen) {
            let kr = kb + j * params.k_stride_s;
            for (var i = 0u; i < QC; i++) {
                let c = lane_col(col, i);
                if (in_row(c, D4)) {
                    let kk = k_row4(kr, c, D);
                    for (var r = 0u; r < TR; r++) {
                        acc4[r] = fma(Q[r * QC + i], kk, acc4[r]);
                    }
                }
            }
        }
        for (var r = 0u; r < TR; r++) {
            part[r] = hsum4(acc4[r]);
        }
        key_sums(lane);
        // One key is a state of its own: m = S, l = 1, O = V; P is its
        // weight (0 for a key not seen).
        var P: array<f32, TR>;
        for (var r = 0u; r < TR; r++) {
            P[r] = state_merge(r, select(MASKED, row_score(part[r], r, j, checked), seen), 1.0);
        }
        if (seen) {
            let vr = vb + j * params.v_stride_s;
            for (var i = 0u; i < OC; i++) {
                let c = lane_col(col, i);
                if (in_row(c, DV4)) {
                    let vv = v_row4(vr, c, DV);
                    for (var r = 0u; r < TR; r++) {
                        O[r * OC + i] = fma(vec4<f32>(P[r]), vv, O[r * OC + i]);
                    }
                }
            }
        }
    }

    // Merge the key groups' states row by row (KG > 1: one row group), or
    // write each lane's columns (KG = 1). Every reduction is reached by the
    // whole workgroup: the loops' bounds and KG are constants.
    let out = writes_output();
    for (var r = 0u; r < TR; r++) {
        let hq = packed_row(t, sq, row0 + r);
        // Padded query rows leave an empty state: O = 0, LSE = −∞.
        if (!row_used(sq, hq)) {
            state_reset(r);
        }
        let row = row_index(t.b, hq.x, sq.q0 + hq.y);
        let sb = state_base(t.split, row);
        let ob = o_base(t.b, sq.q0 + hq.y, hq.x);
        var mx = m[r];
        var total = l[r];
        if (KG > 1u) {
            mx = workgroup_max(m[r], lane);
            // l is the same in every lane of a group, so each column lane
            // sums the groups' l.
            total = group_sum(vec4<f32>(l[r] * merge_weight(m[r], mx)), lane).x;
        }
        let w = merge_weight(m[r], mx);
        let writer = g == 0u && hq.z != 0u;
        for (var i = 0u; i < OC; i++) {
            var sum = O[r * OC + i];
            if (KG > 1u) {
                sum = group_sum(sum * w, lane);
            }
            let c = lane_col(col, i);
            if (writer && in_row(c, DV4)) {
                if (out) {
                    store_o4(ob, c, sum * inv_l(total));
                } else {
                    state[sb + 1u + c] = sum;
                }
            }
        }
        if (writer && col == 0u) {
            if (out) {
                lse[row] = lse_of(mx, total);
            } else {
                state[sb] = vec4<f32>(mx, total, 0.0, 0.0);
            }
        }
    }
}

//@ subgroups
// Reductions by subgroup operations. Lane index = subgroup_id·subgroup_size
// + subgroup_invocation_id, so a group of KL lanes (KL ≤ the subgroup size,
// both powers of two) lies inside one subgroup and, with one row group, the
// key groups' same columns are lanes KL, 2·KL, … apart in it.

var<private> sg_size: u32;
var<private> sg_id: u32;

// part[r] ← the sum of part[r] over the lane's key group (every lane of the
// group gets it).
fn key_sums(lane: u32) {
    for (var r = 0u; r < TR; r++) {
        var s = part[r];
        for (var o = 1u; o < KL; o <<= 1u) {
            s += subgroupShuffleXor(s, o);
        }
        part[r] = s;
    }
}

// The max of x over the workgroup, in every lane.
fn workgroup_max(x: f32, lane: u32) -> f32 {
    let s = subgroupMax(x);
    workgroupBarrier();
    if (lane % sg_size == 0u) {
        red_f[sg_id] = s;
    }
    workgroupBarrier();
    var mx = red_f[0];
    for (var i = 1u; i < WG / sg_size; i++) {
        mx = max(mx, red_f[i]);
    }
    return mx;
}

// The sum of x over the key groups, for each column lane: exact in the
// first KL lanes (group 0).
fn group_sum(x: vec4<f32>, lane: u32) -> vec4<f32> {
    var s = x;
    for (var o = KL; o < sg_size; o <<= 1u) {
        s += subgroupShuffleXor(s, o);
    }
    workgroupBarrier();
    if (lane % sg_size < KL) {
        red_v[sg_id * KL + lane % KL] = s;
    }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    if (lane < KL) {
        for (var i = 0u; i < WG / sg_size; i++) {
            total += red_v[i * KL + lane];
        }
    }
    return total;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_invocation_id) sinv: u32,
) {
    sg_size = size;
    sg_id = sid;
    flash_lanes(wid, lid, sid * size + sinv);
}

//@ workgroup
// Reductions through workgroup memory, for adapters without subgroups.
// Lane index = local_invocation_index.

fn key_sums(lane: u32) {
    workgroupBarrier();
    for (var r = 0u; r < TR; r++) {
        red_f[r * WG + lane] = part[r];
    }
    workgroupBarrier();
    let g0 = lane - lane % KL;
    for (var r = 0u; r < TR; r++) {
        var s = 0.0;
        for (var i = 0u; i < KL; i++) {
            s += red_f[r * WG + g0 + i];
        }
        part[r] = s;
    }
}

fn workgroup_max(x: f32, lane: u32) -> f32 {
    workgroupBarrier();
    red_f[lane] = x;
    workgroupBarrier();
    // x is the same in every lane of a group: one per group.
    var mx = red_f[0];
    for (var i = KL; i < WG; i += KL) {
        mx = max(mx, red_f[i]);
    }
    return mx;
}

fn group_sum(x: vec4<f32>, lane: u32) -> vec4<f32> {
    workgroupBarrier();
    red_v[lane] = x;
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    if (lane < KL) {
        for (var i = lane; i < WG; i += KL) {
            total += red_v[i];
        }
    }
    return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    flash_lanes(wid, lid, lid);
}
