// Shared by the layer's projection kernels (linear.wgsl, linear4.wgsl):
// params, the bias / residual / output bindings and the epilogue. Y = X·Wᵀ +
// b, X [M, K], W [N, K] (PyTorch's nn.Linear layout), Y [M, N], f32,
// row-major; with the gate bit, Y = R + tanh(α)·(X·Wᵀ + b) (Flamingo's gated
// residual, R [M, N]).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Bit 0: add the bias; bit 1: gated residual.
    flags: u32,
    // tanh(α) for the gated residual.
    gate: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

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
