// Naive, unfused attention: three kernels with the n_q × n_kv score matrix
// materialised in global memory between them.
//
//   scores:  S[bh, i, j] = scale · q_i · k_j          one invocation per score
//   softmax: P[bh, i, j] = exp(S − max) / Σ exp(S − max), LSE   one per row
//   pv:      O[b, i, h, c] = Σ_j P[bh, i, j] · v[b, j, hk, c]   one per output
//
// It is the baseline the fused kernel is measured against and the
// "same storage precision, no tiling" implementation whose error against the
// f64 reference sets the tolerance in the tests. Plain f32 arithmetic in
// sequential order, no tricks.

// Mirrors `NaiveParams` in src/naive.rs.
struct Params {
    batch: u32,
    heads: u32,
    // Query heads per key/value head.
    group: u32,
    n_q: u32,
    n_kv: u32,
    has_kv_len: u32,
    d: u32,
    dv: u32,
    scale: f32,
    // Invocations along x of the (folded) grid, per kernel.
    grid_x_scores: u32,
    grid_x_rows: u32,
    grid_x_out: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> kv_len: array<u32>;
@group(0) @binding(5) var<storage, read_write> s: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;

const WG: u32 = 64u;

fn n_valid(b: u32) -> u32 {
    if (p.has_kv_len != 0u) {
        return min(kv_len[b], p.n_kv);
    }
    return p.n_kv;
}

fn flat(wid: vec3<u32>, lid: u32, grid_x: u32) -> u32 {
    return (wid.x + wid.y * grid_x) * WG + lid;
}

@compute @workgroup_size(64)
fn scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, lid, p.grid_x_scores);
    if (idx >= p.batch * p.heads * p.n_q * p.n_kv) {
        return;
    }
    let j = idx % p.n_kv;
    let i = (idx / p.n_kv) % p.n_q;
    let bh = idx / (p.n_kv * p.n_q);
    let b = bh / p.heads;
    let h = bh % p.heads;
    let kv_heads = p.heads / p.group;
    let hk = h / p.group;
    let qb = ((b * p.n_q + i) * p.heads + h) * p.d;
    let kb = ((b * p.n_kv + j) * kv_heads + hk) * p.d;
    var acc = 0.0;
    // Keys past the batch entry's length are never read.
    if (j < n_valid(b)) {
        for (var c = 0u; c < p.d; c++) {
            acc += q[qb + c] * k[kb + c];
        }
    }
    s[idx] = acc * p.scale;
}

@compute @workgroup_size(64)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat(wid, lid, p.grid_x_rows);
    if (row >= p.batch * p.heads * p.n_q) {
        return;
    }
    let b = row / (p.heads * p.n_q);
    let n = n_valid(b);
    let base = row * p.n_kv;
    var mx = -3.0e38;
    for (var j = 0u; j < n; j++) {
        mx = max(mx, s[base + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j < n; j++) {
        sum += exp(s[base + j] - mx);
    }
    for (var j = 0u; j < p.n_kv; j++) {
        var pj = 0.0;
        if (j < n) {
            pj = exp(s[base + j] - mx) / sum;
        }
        s[base + j] = pj;
    }
    // row = (b·H + h)·n_q + i, the LSE layout.
    lse[row] = select(mx + log(sum), bitcast<f32>(0xff800000u), n == 0u);
}

@compute @workgroup_size(64)
fn pv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, lid, p.grid_x_out);
    if (idx >= p.batch * p.n_q * p.heads * p.dv) {
        return;
    }
    // o is [B, n_q, H, d_v].
    let c = idx % p.dv;
    let h = (idx / p.dv) % p.heads;
    let i = (idx / (p.dv * p.heads)) % p.n_q;
    let b = idx / (p.dv * p.heads * p.n_q);
    let kv_heads = p.heads / p.group;
    let hk = h / p.group;
    let n = n_valid(b);
    let sb = ((b * p.heads + h) * p.n_q + i) * p.n_kv;
    var acc = 0.0;
    for (var j = 0u; j < n; j++) {
        acc += s[sb + j] * v[((b * p.n_kv + j) * kv_heads + hk) * p.dv + c];
    }
    o[idx] = acc;
}
