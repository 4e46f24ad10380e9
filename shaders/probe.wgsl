// Device probes for the bench harness: a peak-FMA loop and a copy, so kernel
// figures can be read as a fraction of what this adapter can do at all.
//
// fma:  each invocation runs ITERS rounds over 8 independent vec4 chains
//       (enough to hide FMA latency on GPUs and on a CPU's SIMD units):
//       8 · 4 · 2 · ITERS flops per invocation.
// copy: dst[i] = src[i] over vec4s, one element per invocation.

const ITERS: u32 = 1024u;

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(64)
fn fma_peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let seed = src[i % arrayLength(&src)];
    var a0 = seed;
    var a1 = seed + 1.0;
    var a2 = seed + 2.0;
    var a3 = seed + 3.0;
    var a4 = seed + 4.0;
    var a5 = seed + 5.0;
    var a6 = seed + 6.0;
    var a7 = seed + 7.0;
    let m = vec4<f32>(0.9999);
    let c = vec4<f32>(0.0001);
    for (var it = 0u; it < ITERS; it++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    // Written so the chains are live; the host never reads it.
    dst[i % arrayLength(&dst)] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}
