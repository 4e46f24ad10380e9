// The packed query rows of the two decode kernels (flash_decode.wgsl,
// flash_lanes.wgsl): a workgroup owns BR query rows that read the
// same key/value head — row i of each of the G = H/H_kv query heads of kv
// head hk, packed as r = (h − hk·G)·n_q + i, so GQA/MQA heads share one pass
// over K and V — and one split of the key range. The host prepends it after
// softmax_state.wgsl for those kernels only (it needs BR).

// Each row's visible key range [x, y) (length and window) and the first
// word of its bias / mask row, computed once before the key loop.
var<private> row_lo: array<u32, BR>;
var<private> row_hi: array<u32, BR>;
var<private> row_mask: array<vec2<u32>, BR>;

// Query head and query row of packed row `r` of the workgroup; `x` is the
// head, `y` the row, `z` 1 when the packed row exists in this batch entry's
// sequence.
fn packed_row(t: Tile, sq: Seq, r: u32) -> vec3<u32> {
    let pr = t.qb * BR + r;
    let i = pr % params.n_q;
    return vec3<u32>(t.hk * params.group + pr / params.n_q, i, u32(pr < params.group * params.n_q && i < sq.nq));
}

// Whether packed row `hq` (packed_row) is a used query row (not padding).
fn row_used(sq: Seq, hq: vec3<u32>) -> bool {
    return hq.z != 0u && hq.y < sq.nq_used;
}

// Fills row_lo, row_hi and row_mask for the invocation's ROWS rows from
// packed row row0, and returns the lowest and highest query index of the
// workgroup's BR used rows (x > y when none is used), from which the
// workgroup's key range follows.
fn setup_rows(t: Tile, sq: Seq, row0: u32) -> vec2<u32> {
    var i_min = 0xffffffffu;
    var i_max = 0u;
    for (var r = 0u; r < BR; r++) {
        let hq = packed_row(t, sq, r);
        if (row_used(sq, hq)) {
            i_min = min(i_min, hq.y);
            i_max = max(i_max, hq.y);
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        let hq = packed_row(t, sq, row0 + r);
        let used = row_used(sq, hq);
        let keys = row_keys(sq, hq.y);
        row_lo[r] = select(1u, keys.x, used);
        row_hi[r] = select(0u, keys.y, used);
        row_mask[r] = mask_row(t.b, hq.x, hq.y);
    }
    return vec2<u32>(i_min, i_max);
}

// Whether any of the invocation's rows sees key j through the boolean mask
// and its key range (keys no row sees are not loaded).
fn any_row_sees(j: u32) -> bool {
    var seen = false;
    for (var r = 0u; r < ROWS; r++) {
        seen = seen || ((mask_bits(row_mask[r].y, j) & 1u) != 0u && j >= row_lo[r] && j < row_hi[r]);
    }
    return seen;
}

// Score S of key j for the invocation's row r with the bias, the mask and the row's key
// range applied (`checked`: a window, mask or bias applies, or skipping is
// off; otherwise every key of the range is visible).
fn row_score(S: f32, r: u32, j: u32, checked: bool) -> f32 {
    if (!checked) {
        return S;
    }
    let x = mask_score(S, row_mask[r], j);
    return select(x, MASKED, j < row_lo[r] || j >= row_hi[r]);
}
