// The layer's projections where the inner dimension K is a multiple of 4
// (every model width in practice): Y = X·Wᵀ + b, optionally
// Y = R + tanh(α)·(X·Wᵀ + b), as linear.wgsl. Register blocking instead of
// workgroup tiles: each invocation computes a 4 × 4 block of Y from vec4s
// of four X rows and four W rows (8 vec4 loads feed 16 vec4 FMAs), with no
// workgroup memory and no barrier, so a CPU driver runs a workgroup as
// straight SIMD code (the 16 × 16 tiled kernel's barriers cost lavapipe a
// coroutine switch per 8 lanes: 0.17 GFLOP/s on Whisper's projections).
// X and W come through x4 / w4 (vec4 i of the flat tensor), from the
// storage buffers or, on CPU adapters, from texture mirrors of them (one of
// the two sections at the end, appended by the host).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    gate: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r0 = (wid.y * 8u + lid.y) * 4u;
    let c0 = (wid.x * 8u + lid.x) * 4u;
    let k4 = params.k / 4u;
    // Rows past the end read the last row (a real one); not written.
    var xr: array<u32, 4>;
    var wr: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        xr[i] = min(r0 + i, params.m - 1u) * k4;
        wr[i] = min(c0 + i, params.n - 1u) * k4;
    }
    var acc: array<vec4<f32>, 16>;
    for (var kk = 0u; kk < k4; kk++) {
        var xv: array<vec4<f32>, 4>;
        var wv: array<vec4<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            xv[i] = x4(xr[i] + kk);
            wv[i] = w4(wr[i] + kk);
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                acc[i * 4u + j] = fma(xv[i], wv[j], acc[i * 4u + j]);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let row = r0 + i;
            let col = c0 + j;
            if (row < params.m && col < params.n) {
                let a = acc[i * 4u + j];
                var v = (a.x + a.y) + (a.z + a.w);
                if ((params.flags & 1u) != 0u) {
                    v += bias[col];
                }
                if ((params.flags & 2u) != 0u) {
                    v = fma(params.gate, v, residual[row * params.n + col]);
                }
                y[row * params.n + col] = v;
            }
        }
    }
}

//@ storage
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

fn x4(i: u32) -> vec4<f32> {
    return x[i];
}

fn w4(i: u32) -> vec4<f32> {
    return w[i];
}

//@ texture
// Texture mirrors, TEXW texels per row: a texel fetch is a straight-line
// gather on a CPU driver, a storage load a per-lane loop.
@group(0) @binding(1) var x_tex: texture_2d<f32>;
@group(0) @binding(2) var w_tex: texture_2d<f32>;

fn x4(i: u32) -> vec4<f32> {
    return textureLoad(x_tex, vec2<u32>(i & (TEXW - 1u), i >> TEXW_LOG2), 0);
}

fn w4(i: u32) -> vec4<f32> {
    return textureLoad(w_tex, vec2<u32>(i & (TEXW - 1u), i >> TEXW_LOG2), 0);
}
