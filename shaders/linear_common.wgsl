// Shared by the layer's projection kernels (linear.wgsl, linear4.wgsl):
// params and the bias binding. Y = X·Wᵀ + b, X [M, K], W [N, K] (PyTorch's
// nn.Linear layout), Y [M, N], row-major, f32 arithmetic whatever the
// storage; with the gate bit, Y = R + tanh(α)·(X·Wᵀ + b) (Flamingo's gated
// residual, R [M, N]). The bias is f32 in every storage form.

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
