// Tensor access for the fused kernels, one template per storage form. The
// host instantiates a template for each of q, k, v (and the output template
// for o) with $NAME and $BINDING filled in: the vec4 form where the tensor's
// head dim (hence every row start) is a multiple of 4, the scalar form
// otherwise; f16 and bf16 forms below. Typed vec4 loads matter: on lavapipe a lane's vec4 load from an
// array<vec4<f32>> ran 3.8× the rate of four f32 loads (2.85 vs 0.75
// G floats/s, each lane reading its own 256-byte row).

//@ scalar
@group(0) @binding($BINDING) var<storage, read> $NAME: array<f32>;

// Elements 4c … 4c+3 of a row of `len` elements starting at `base`,
// zero-filling past the row's end: no element of the next row is ever read.
fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    let e = base + c * 4u;
    if (c * 4u + 3u < len) {
        return vec4<f32>($NAME[e], $NAME[e + 1u], $NAME[e + 2u], $NAME[e + 3u]);
    }
    var r = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (c * 4u + i < len) {
            r[i] = $NAME[e + i];
        }
    }
    return r;
}

//@ vec4
@group(0) @binding($BINDING) var<storage, read> $NAME: array<vec4<f32>>;

// Elements 4c … 4c+3 of the row starting at `base` (a multiple of 4).
fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    return $NAME[(base >> 2u) + c];
}

//@ texel_at
// The coordinates of texel c of the row whose first element is `base` (a
// multiple of 4) in a mirror TEXW texels wide: flat texel base / 4 + c.
// `aligned`: the row lies in one texture row (see `tex`).
fn texel_at(base: u32, c: u32, aligned: bool) -> vec2<u32> {
    let t0 = base >> 2u;
    if (aligned) {
        return vec2<u32>((t0 & (TEXW - 1u)) + c, t0 >> TEXW_LOG2);
    }
    let t = t0 + c;
    return vec2<u32>(t & (TEXW - 1u), t >> TEXW_LOG2);
}

//@ tex
// K or V from its texture mirror (KvAccess::Texture): element e of the
// buffer is component e % 4 of flat texel e / 4, TEXW texels per texture
// row. Rows start at multiples of 4 elements. A float format (rgba32float
// for f32, rgba16float for f16), bound as a read-only storage texture: a
// CPU driver reads one without the sampler's per-lane mip-level work.
// $ALIGNED (the host's `true` or `false`): a row's texels are a power of two
// dividing TEXW, so no row straddles two texture rows and every texel of a
// row shares the row's y, which the driver then computes (and bounds-checks)
// once per row rather than once per texel.
@group(0) @binding($BINDING) var $NAME_tex: texture_storage_2d<$TEXFMT, read>;

fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    return textureLoad($NAME_tex, texel_at(base, c, $ALIGNED));
}

//@ tex_bf16
// As `tex`, from an rgba16uint mirror of bf16 storage: bfloat16 is the top
// half of an f32.
@group(0) @binding($BINDING) var $NAME_tex: texture_storage_2d<rgba16uint, read>;

fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    let h = textureLoad($NAME_tex, texel_at(base, c, $ALIGNED));
    return bitcast<vec4<f32>>(h << vec4<u32>(16u));
}

//@ out_scalar
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

// Elements 4c … 4c+3 of an output row at `base`, dropping the vec4's padding
// lanes past DV.
fn store_o4(base: u32, c: u32, val: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        if (c * 4u + e < DV) {
            o[base + c * 4u + e] = val[e];
        }
    }
}

//@ out_vec4
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;

// Elements 4c … 4c+3 of the output row starting at `base` (a multiple of 4).
fn store_o4(base: u32, c: u32, val: vec4<f32>) {
    o[(base >> 2u) + c] = val;
}

//@ f16_scalar
@group(0) @binding($BINDING) var<storage, read> $NAME: array<f16>;

// As the f32 scalar form, from f16 storage (needs SHADER_F16).
fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    let e = base + c * 4u;
    if (c * 4u + 3u < len) {
        return vec4<f32>(f32($NAME[e]), f32($NAME[e + 1u]), f32($NAME[e + 2u]), f32($NAME[e + 3u]));
    }
    var r = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (c * 4u + i < len) {
            r[i] = f32($NAME[e + i]);
        }
    }
    return r;
}

//@ f16_vec4
@group(0) @binding($BINDING) var<storage, read> $NAME: array<vec4<f16>>;

fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    return vec4<f32>($NAME[(base >> 2u) + c]);
}

//@ packed
// Two 16-bit values per u32 word, element i in half i & 1 (little-endian), so
// a word may hold the end of one row and the start of the next: loads take
// only their own half. unpack2 is the storage type's (sections below).
@group(0) @binding($BINDING) var<storage, read> $NAME: array<u32>;

fn $NAME_at(i: u32) -> f32 {
    return unpack2($NAME[i >> 1u])[i & 1u];
}

fn $NAME_row4(base: u32, c: u32, len: u32) -> vec4<f32> {
    let e = base + c * 4u;
    if (len % 4u == 0u) {
        // Rows start at multiples of 4 elements: two whole words.
        let w = e >> 1u;
        return vec4<f32>(unpack2($NAME[w]), unpack2($NAME[w + 1u]));
    }
    var r = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (c * 4u + i < len) {
            r[i] = $NAME_at(e + i);
        }
    }
    return r;
}

//@ unpack_f16
fn unpack2(w: u32) -> vec2<f32> {
    return unpack2x16float(w);
}

fn pack1(x: f32) -> u32 {
    return pack2x16float(vec2<f32>(x, 0.0)) & 0xffffu;
}

fn pack2(x: vec2<f32>) -> u32 {
    return pack2x16float(x);
}

//@ unpack_bf16
// bfloat16 is the top half of an f32.
fn unpack2(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

// Round to nearest even; NaN stays a (quiet) NaN.
fn pack1(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (x != x) {
        return 0x7fc0u;
    }
    return ((b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u) & 0xffffu;
}

fn pack2(x: vec2<f32>) -> u32 {
    return pack1(x.x) | (pack1(x.y) << 16u);
}

//@ out_f16_scalar
@group(0) @binding(5) var<storage, read_write> o: array<f16>;

fn store_o4(base: u32, c: u32, val: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        if (c * 4u + e < DV) {
            o[base + c * 4u + e] = f16(val[e]);
        }
    }
}

//@ out_f16_vec4
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f16>>;

fn store_o4(base: u32, c: u32, val: vec4<f32>) {
    o[(base >> 2u) + c] = vec4<f16>(val);
}

//@ out_packed
// A word may be shared with the next row (odd DV), which another invocation
// writes: each element clears and sets only its own half, atomically.
@group(0) @binding(5) var<storage, read_write> o: array<atomic<u32>>;

fn store_o_at(i: u32, x: f32) {
    let shift = (i & 1u) * 16u;
    atomicAnd(&o[i >> 1u], ~(0xffffu << shift));
    atomicOr(&o[i >> 1u], pack1(x) << shift);
}

fn store_o4(base: u32, c: u32, val: vec4<f32>) {
    let e = base + c * 4u;
    if (DV % 4u == 0u) {
        atomicStore(&o[e >> 1u], pack2(val.xy));
        atomicStore(&o[(e >> 1u) + 1u], pack2(val.zw));
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        if (c * 4u + i < DV) {
            store_o_at(e + i, val[i]);
        }
    }
}
