// Tensor access for the fused kernels, one template per storage form. The
// host instantiates a template for each of q, k, v (and the output template
// for o) with $NAME and $BINDING filled in: the vec4 form where the tensor's
// head dim (hence every row start) is a multiple of 4, the scalar form
// otherwise. Typed vec4 loads matter: on lavapipe a lane's vec4 load from an
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
