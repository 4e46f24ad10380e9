// The layer's projections on CPU adapters with subgroups of a fixed size
// (lavapipe): straight-line code for one SIMD vector, as flash_simd.wgsl
// does for attention (shaders/README.md, "CPU adapters"). K and N are
// multiples of 4; params and bias: linear_common.wgsl; the epilogue, the
// storage forms and X/W access: linear4.wgsl's sections, appended by the
// host.
//
// - The workgroup is one subgroup of SG lanes: no barriers, no coroutine
//   switches.
// - It computes SG·TR rows × SG columns of Y. Lane ℓ owns rows
//   r0 + ℓ + SG·t (t < TR) and loads W row c0 + ℓ, one vec4 per step of
//   the K loop; every lane then reads W row c0 + n from lane n by
//   subgroupBroadcast at a literal lane index, so each loaded W vec4 feeds
//   4·TR·SG fused multiply-adds and each X vec4 4·SG.
// - The TR·SG accumulators are named scalars (a{t}_{n}), the step body is
//   generated unrolled by the host (the BLOCK marker): no private array is
//   indexed by a loop counter, no load sits in an inner loop.
// - Rows and columns past the end load the last row (a real one) and are
//   not written.

@compute @workgroup_size(SG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let r0 = wid.y * (SG * TR);
    let c0 = wid.x * SG;
    let k4 = params.k / 4u;
    let wr = min(c0 + lane, params.n - 1u) * k4;
$SETUP
    for (var kk = 0u; kk < k4; kk++) {
        let w = w4(wr + kk);
$BLOCK
    }
$STORE
}
