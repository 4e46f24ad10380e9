// The projections of the cross-attention layer for any width, f32 storage
// (params and bias: linear_common.wgsl, prepended by the host).
// 16 × 16 tiles of X and W through workgroup memory, one output per
// invocation. Heads need no transposes: Q = X·W_Qᵀ is [B·n_q, H·d], which is
// BSHD [B, n_q, H, d] as the attention kernels read it, and O [B, n_q, H,
// d_v] is the [B·n_q, H·d_v] input of the output projection.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const T: u32 = 16u;
var<workgroup> xs: array<f32, 256>;
var<workgroup> ws: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * T + lid.y;
    let col = wid.x * T + lid.x;
    // The W row this invocation loads (its tile's column block).
    let wrow = wid.x * T + lid.y;
    var acc = 0.0;
    for (var k0 = 0u; k0 < params.k; k0 += T) {
        let kk = k0 + lid.x;
        xs[lid.y * T + lid.x] = select(0.0, x[min(row * params.k + kk, arrayLength(&x) - 1u)], row < params.m && kk < params.k);
        ws[lid.y * T + lid.x] = select(0.0, w[min(wrow * params.k + kk, arrayLength(&w) - 1u)], wrow < params.n && kk < params.k);
        workgroupBarrier();
        for (var i = 0u; i < T; i++) {
            acc = fma(xs[lid.y * T + i], ws[lid.x * T + i], acc);
        }
        workgroupBarrier();
    }
    finish(row, col, acc);
}

// Y[row, col] from its dot product: the bias, the gate, the store (rows and
// columns past the end are not written).
fn finish(row: u32, col: u32, dot: f32) {
    if (row >= params.m || col >= params.n) {
        return;
    }
    var v = dot;
    if ((params.flags & 1u) != 0u) {
        v += bias[col];
    }
    if ((params.flags & 2u) != 0u) {
        v = fma(params.gate, v, residual[row * params.n + col]);
    }
    y[row * params.n + col] = v;
}
