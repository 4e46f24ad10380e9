// The layer's projections where K and N are multiples of 4 (every model
// width in practice), in f32, f16 or bf16 storage with f32 arithmetic
// (params and bias: linear_common.wgsl, prepended by the host). Register
// blocking instead of workgroup tiles: each invocation computes a 4 × 4
// block of Y from vec4s of four X rows and four W rows (8 vec4 loads feed
// 16 vec4 FMAs), with no workgroup memory and no barrier, so a CPU driver
// runs a workgroup as straight SIMD code (the 16 × 16 tiled kernel's
// barriers cost lavapipe a coroutine switch per 8 lanes: 0.17 GFLOP/s on
// Whisper's projections).
// The workgroup is WG_X × WG_Y invocations (8 × 8; 64 × 1 for a few rows,
// a decode step's). The host appends the sections below, shared with
// linear_simd.wgsl: the epilogue (`finish4`), the storage form of R and Y
// (`f32`, or `half` with flash_io.wgsl's unpack2 / pack2 for f16 or bf16),
// and where X and W come from: x4 / w4 (vec4 i of the flat tensor) from the
// storage buffers, or on CPU adapters from texture mirrors of them.

@compute @workgroup_size(WG_X, WG_Y)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r0 = (wid.y * WG_Y + lid.y) * 4u;
    let c0 = (wid.x * WG_X + lid.x) * 4u;
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
        let b = i * 4u;
        finish4(r0 + i, c0, vec4<f32>(hsum(acc[b]), hsum(acc[b + 1u]), hsum(acc[b + 2u]), hsum(acc[b + 3u])));
    }
}

fn hsum(a: vec4<f32>) -> f32 {
    return (a.x + a.y) + (a.z + a.w);
}

//@ finish4
// Y[row, c0 .. c0 + 3] from their dot products: the bias, the gate, the
// store (rows and column blocks past the end are not written).
fn finish4(row: u32, c0: u32, dots: vec4<f32>) {
    if (row >= params.m || c0 >= params.n) {
        return;
    }
    var v = dots;
    if ((params.flags & 1u) != 0u) {
        v += vec4<f32>(bias[c0], bias[c0 + 1u], bias[c0 + 2u], bias[c0 + 3u]);
    }
    let i = (row * params.n + c0) / 4u;
    if ((params.flags & 2u) != 0u) {
        v = fma(vec4<f32>(params.gate), v, res4(i));
    }
    put4(i, v);
}

//@ f32
@group(0) @binding(4) var<storage, read> residual: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>;

fn res4(i: u32) -> vec4<f32> {
    return residual[i];
}

fn put4(i: u32, v: vec4<f32>) {
    y[i] = v;
}

//@ half
// f16 or bf16, two per u32 word (unpack2 / pack2: flash_io.wgsl).
@group(0) @binding(4) var<storage, read> residual: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec2<u32>>;

fn load4(p: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2(p.x), unpack2(p.y));
}

fn res4(i: u32) -> vec4<f32> {
    return load4(residual[i]);
}

fn put4(i: u32, v: vec4<f32>) {
    y[i] = vec2<u32>(pack2(v.xy), pack2(v.zw));
}

//@ storage_f32
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

fn x4(i: u32) -> vec4<f32> {
    return x[i];
}

fn w4(i: u32) -> vec4<f32> {
    return w[i];
}

//@ storage_half
@group(0) @binding(1) var<storage, read> x: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;

fn x4(i: u32) -> vec4<f32> {
    return load4(x[i]);
}

fn w4(i: u32) -> vec4<f32> {
    return load4(w[i]);
}

//@ texture
// Texture mirrors (rgba32float for f32, rgba16float for f16), TEXW texels
// per row, bound as read-only storage textures: a texel read is a
// straight-line gather on a CPU driver, a storage load a per-lane loop.
@group(0) @binding(1) var x_tex: texture_storage_2d<$TEXFMT, read>;
@group(0) @binding(2) var w_tex: texture_storage_2d<$TEXFMT, read>;

fn x4(i: u32) -> vec4<f32> {
    return textureLoad(x_tex, vec2<u32>(i & (TEXW - 1u), i >> TEXW_LOG2));
}

fn w4(i: u32) -> vec4<f32> {
    return textureLoad(w_tex, vec2<u32>(i & (TEXW - 1u), i >> TEXW_LOG2));
}

//@ texture_bf16
// As `texture`, from rgba16uint mirrors: bfloat16 is the top half of an f32.
@group(0) @binding(1) var x_tex: texture_storage_2d<rgba16uint, read>;
@group(0) @binding(2) var w_tex: texture_storage_2d<rgba16uint, read>;

fn x4(i: u32) -> vec4<f32> {
    let h = textureLoad(x_tex, vec2<u32>(i & (TEXW - 1u), i >> TEXW_LOG2));
    return bitcast<vec4<f32>>(h << vec4<u32>(16u));
}

fn w4(i: u32) -> vec4<f32> {
    let h = textureLoad(w_tex, vec2<u32>(i & (TEXW - 1u), i >> TEXW_LOG2));
    return bitcast<vec4<f32>>(h << vec4<u32>(16u));
}
