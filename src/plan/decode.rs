//! Plan of the decode kernel, `flash_decode.wgsl`: a few query rows of one
//! key/value head per workgroup, each lane streaming its own keys.

use super::{
    budget_keys, decode_rows_max, kv_texture, unplannable, FlashPlan, FlashVariant, TileOverride,
    Tiles,
};
use crate::caps::DeviceCaps;
use crate::error::Result;
use crate::problem::AttentionProblem;
use crate::source::KvAccess;

/// Vec4 columns of O merged per step in `flash_decode.wgsl` (its workgroup
/// memory holds WG × DVC vec4s).
pub(super) fn merge_columns(p: &AttentionProblem, wg: u32) -> u32 {
    (p.head_dim_v.div_ceil(4) as u32).min(8).min(wg)
}

fn workgroup_bytes(p: &AttentionProblem, wg: u32) -> u32 {
    wg * 8 + wg * merge_columns(p, wg) * 16 + 32
}

/// The decode plan: Br query rows of one key/value head per workgroup (the
/// GQA heads of that kv head packed together), 64 invocations each streaming
/// its own keys (8 on CPU adapters; fewer if the merge buffer does not fit).
pub(super) fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<Tiles> {
    let rows = problem.heads / problem.kv_heads * problem.n_q;
    let br = force
        .tr
        .unwrap_or_else(|| (rows.next_power_of_two() as u32).min(decode_rows_max(caps)))
        .max(1);
    // 64 invocations on GPUs (two NVIDIA warps, one AMD wave) so K/V streams
    // from many keys at once; 8 on CPU adapters, one SIMD vector of lavapipe,
    // where a workgroup needs no barrier coroutines: Whisper's decode step ran
    // in 1.7 ms with 8 (min of 31), 1.9 with 16, 3.5 with 32 and 64.
    let wg_default = if caps.cpu_plans() { 8 } else { 64 };
    let mut wg = force.wg.unwrap_or(wg_default).min(caps.max_invocations);
    while force.wg.is_none() && wg > 1 && workgroup_bytes(problem, wg) > caps.max_workgroup_storage
    {
        wg /= 2;
    }
    if wg == 0 || workgroup_bytes(problem, wg) > caps.max_workgroup_storage {
        return Err(unplannable(
            "flash_decode",
            format!(
                "{wg} invocations need {} bytes of workgroup memory, the device has {}",
                workgroup_bytes(problem, wg),
                caps.max_workgroup_storage
            ),
        ));
    }
    // Keys per lane per step: KU keys make one block of the online softmax,
    // so O is rescaled and written once per KU keys instead of per key. On
    // a CPU driver every write of O inside the key loop is a masked blend
    // and store of each of its vec4s. On lavapipe, the Whisper step (1×20,
    // 1×1 500, d 64, K/V bound) with the plans interleaved in one process,
    // 30 pairs of 50 launches: KU 4 / KU 1 median 0.88 (0.66 against 0.77
    // ms), 0.89 at 4 heads; KU 2 / KU 1 0.92; KU 8 / KU 4 1.06. The first
    // call grows from 0.49–0.55 to 0.70–0.73 s. GPUs keep one key per step:
    // their registers hold O.
    let ku = match force.bc {
        Some(bc) => (bc / wg).max(1),
        None if caps.cpu_plans() => 4,
        None => 1,
    };
    let q_blocks = rows.div_ceil(br as usize);
    let (d4, dv4, br64) = (
        problem.head_dim.div_ceil(4) as u64,
        problem.head_dim_v.div_ceil(4) as u64,
        br as u64,
    );
    // Loop iterations per key of one lane if nothing is unrolled: the dot
    // products, the softmax update with its (worst case) rescale, P·V.
    let p = problem;
    let per_key = d4 * (1 + br64)
        + br64 * (3 + dv4)
        + dv4 * (1 + br64)
        + 2
        + u64::from(p.bias.is_some() || p.bool_mask.is_some()) * br64;
    let fixed = br64 * (2 * d4 + 3 * dv4 + 10) + 4 * br64 * (wg as u64 + dv4 * 2) + 100;
    // Each step is KU keys per lane, wg·KU keys in all.
    let loop_keys = if caps.is_cpu() {
        budget_keys(fixed, per_key * ku as u64, (wg * ku) as u64)
    } else {
        u32::MAX
    };
    // K/V texture mirrors on CPU adapters (see simd.rs); GPUs read the
    // storage buffers, coalesced.
    let texture = caps
        .cpu_plans()
        .then(|| kv_texture(problem, caps, force))
        .flatten();
    let (kv, kv_why) = match texture {
        Some(width_log2) => (
            KvAccess::Texture {
                width_log2,
                q: false,
            },
            format!(
                ", K/V read from texture mirrors {} texels wide",
                1u32 << width_log2
            ),
        ),
        None => (KvAccess::Storage, String::new()),
    };
    let plan = FlashPlan {
        // Per row: P, the partial sums, its key range and mask row.
        live_floats: super::live_floats(problem, br, 1 + 4 + 4, 0),
        variant: FlashVariant::Decode,
        kv,
        br,
        bc: wg * ku,
        tr: br,
        wg,
        workgroup_bytes: workgroup_bytes(problem, wg),
        q_blocks: q_blocks as u32,
        why: format!(
            "decode kernel: {rows} query rows per key/value head, {br} per workgroup, \
             {wg} invocations each streaming its own keys, {ku} per step{kv_why}"
        ),
        ..FlashPlan::before_splits()
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.kv_heads,
        loop_keys,
        1,
    ))
}
