// The layer's projections where the inner dimension K is a multiple of 4
// (every model width in practice), as linear.wgsl (params, bindings and
// epilogue: linear_common.wgsl, prepended by the host). Register blocking instead of
// workgroup tiles: each invocation computes a 4 × 4 block of Y from vec4s
// of four X rows and four W rows (8 vec4 loads feed 16 vec4 FMAs), with no
// workgroup memory and no barrier, so a CPU driver runs a workgroup as
// straight SIMD code (the 16 × 16 tiled kernel's barriers cost lavapipe a
// coroutine switch per 8 lanes: 0.17 GFLOP/s on Whisper's projections).
// X and W come through x4 / w4 (vec4 i of the flat tensor), from the
// storage buffers or, on CPU adapters, from texture mirrors of them (one of
// the two sections at the end, appended by the host).

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
            let a = acc[i * 4u + j];
            finish(r0 + i, c0 + j, (a.x + a.y) + (a.z + a.w));
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
