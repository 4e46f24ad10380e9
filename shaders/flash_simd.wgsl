// Fused attention for CPU adapters (lavapipe, llvmpipe): straight-line code
// for an 8-wide SIMD lane. Same algorithm, state, bindings and semantics as
// flash_forward.wgsl; a different shape, chosen from how a CPU driver
// compiles a shader (shaders/README.md "CPU adapters"):
//
// - The workgroup is one subgroup (SG lanes): one SIMD vector, no barriers
//   in the key loop and no coroutine switches.
// - Lane ℓ owns TR query rows, i0 + ℓ + SG·t for t < TR, and keeps their Q
//   (scaled by scale·log2 e), m, l and O. Inside the key loop no private
//   array is indexed by anything but a constant.
// - Keys come in blocks of SG: lane ℓ loads key kv0 + ℓ's K and V rows once
//   (k{c}, v{c}); every lane then reads key kv0 + n's values from lane n by
//   subgroupBroadcast at a literal lane index, so each loaded float feeds
//   TR·SG fused multiply-adds and no load sits in an inner loop.
// - The host generates the key block (the BLOCK marker below) fully unrolled
//   over the lane's rows, the block's keys and the head dims' vec4s, and each
//   row's window and mask rows (the ROWS marker): WGSL has no unroll
//   attribute (src/source/simd.rs). Q, O, m and l live in private arrays
//   that the block indexes by constants only. Past 64 vec4s of K and V per
//   row (d = d_v ≥ 132) Q·Kᵀ is instead a loop over chunks of the head dim
//   that reads Q from its mirror, which halves the compile
//   (`rolled_scores`). The key loop runs once per SG keys, so a launch may
//   cover about SG·65 000 keys under the CPU drivers' loop limit.
// - Keys past the launch's range (the last block) are loaded clamped to the
//   last key in range, a real row, and their scores masked: no branch in
//   the block.
//
// The host prepends the specialisation (D, DV, D4, DV4, MASK, WIN, SKIP,
// BR = SG·TR, SG, TR), the tensor access (flash_io.wgsl), flash_common.wgsl
// and softmax_state.wgsl (its merge_weight, inv_l, lse_of, state_base and
// writes_output; the state lives in the registers above).

// Score s of key j for a row: MASKED past the launch's keys (j ≥ end),
// outside the row's window keys [win.x, win.y), or where the bias or mask
// hides it (mask rows at `at`). The mask is read at a clamped key so the
// masked-off last block never reads past a row.
fn keep(s: f32, j: u32, end: u32, win: vec2<u32>, at: vec2<u32>) -> f32 {
    var x = select(MASKED, s, j < end);
    if (WIN != 0u) {
        x = select(MASKED, x, j >= win.x && j < win.y);
    }
    if (MASK != 0u) {
        x = mask_score(x, at, min(j, end - 1u));
    }
    return x;
}

@compute @workgroup_size(SG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let tile = workgroup_tile(wid);
    if (!tile.live) {
        return;
    }
    let b = tile.b;
    let h = tile.h;
    // The workgroup is one subgroup: every lane reads the same lengths, no
    // barrier needed to make them uniform.
    let sq = seq_of(b);
    let i0 = tile.qb * BR;
    if (i0 >= sq.nq) {
        return;
    }
    let i_end = max(min(i0 + BR, sq.nq_used), i0);
    let kb = k_base(b, sq.k0, tile.hk);
    let vb = v_base(b, sq.k0, tile.hk);
    let range = key_range(tile.split, block_keys(sq, i0, i_end));
    let end = range.y;

    // Row t of this lane is query qi{t} = i0 + lane + SG·t. Its Q (scaled),
    // O and (m, l) live in private arrays indexed by constants only, in the
    // block and in the generated prologue and epilogue alike: the driver
    // unrolls no loop of more than 32 iterations (NIR's
    // max_unroll_iterations on lavapipe), and a loop over d/4 > 32 vec4s
    // left the arrays dynamically indexed, which at d 160 doubled both the
    // compile and the run time. These are function-scope arrays rather than
    // softmax_state.wgsl's module-scope m, l and O, so the reset, load,
    // store and finish are written out instead of calling its functions:
    // with the module-scope arrays (same code otherwise) a cold compile took
    // 12.7–13.7 s against 8.0–8.8 s at 2×512², d 64, TR 4.
    var qa: array<vec4<f32>, TR * D4>;
    var oa: array<vec4<f32>, TR * DV4>;
    var ml: array<vec2<f32>, TR>;
    let carried = (params.flags & LAUNCH_FIRST) == 0u;
    // Row t's query index, window keys and mask rows; its Q, and its O and
    // (m, l) reset or carried in.
$ROWS
$PROLOGUE
    for (var kv0 = range.x; kv0 < end; kv0 += BC) {
        let j = min(kv0 + lane, end - 1u);
        let kr = kb + j * params.k_stride_s;
        let vr = vb + j * params.v_stride_s;
$BLOCK
    }

    // O/l and LSE, or the state for the next launch or the split-KV
    // combine; padded query rows (qi ≥ i_end) get O = 0, LSE = −∞.
    let out = writes_output();
$EPILOGUE
}
