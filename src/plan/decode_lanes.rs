//! Plan of the GPU decode kernel, `flash_decode_lanes.wgsl`: a few query rows
//! of one key/value head per workgroup, each key's head dim spread across a
//! group of KL lanes.

use super::{
    budget_keys, decode_rows_max, unplannable, FlashPlan, FlashVariant, TileOverride, Tiles,
    GPU_LIVE_FLOATS,
};
use crate::caps::DeviceCaps;
use crate::error::Result;
use crate::problem::AttentionProblem;

/// Keys a split of this kernel covers at least: below that the workgroup's
/// setup and merge outweigh its keys (flash-decoding's rule of thumb).
pub(super) const MIN_SPLIT_KEYS: u32 = 128;

/// Lanes per key: the largest power of two ≤ ⌈max(⌈d/4⌉, ⌈d_v/4⌉)/2⌉, so a
/// lane holds about two vec4 columns of each row (d 64: 8 lanes × 2 vec4s;
/// each K/V load of a group is 128 contiguous bytes), at most the adapter's
/// smallest subgroup (the group's butterfly stays inside one subgroup) and
/// 32; 4 at most with workgroup-memory reductions, whose per-key sum reads
/// KL values per lane (unless one row would pass the register budget).
fn lanes_per_key(p: &AttentionProblem, subgroups: Option<u32>) -> u32 {
    let cols = p.head_dim.div_ceil(4).max(p.head_dim_v.div_ceil(4)) as u32;
    let want = 1u32 << cols.div_ceil(2).max(1).ilog2();
    want.min(subgroups.map_or(4, |sg| sg.min(32)))
}

/// Live floats per invocation: per row its QC + OC vec4s of Q and O, m, l,
/// the key's partial sums (a vec4 and a float) and P.
fn live_floats(p: &AttentionProblem, br: u32, kl: u32) -> u32 {
    let cols = (p.head_dim.div_ceil(4) as u32).div_ceil(kl)
        + (p.head_dim_v.div_ceil(4) as u32).div_ceil(kl);
    br * (4 * cols + 2 + 4 + 2) + 16
}

fn workgroup_bytes(wg: u32, br: u32) -> u32 {
    wg * br * 4 + wg * 16 + 32
}

/// The GPU decode plan: Br query rows of one key/value head per workgroup,
/// 128 invocations (at least the largest subgroup) in groups of KL lanes.
pub(super) fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<Tiles> {
    let fail = |reason: String| unplannable("flash_decode_lanes", reason);
    let sg_size = caps.subgroup_min_size;
    let subgroups = caps.subgroups && sg_size > 0 && force.subgroups != Some(false);
    if force.subgroups == Some(true) && !subgroups {
        return Err(fail("the adapter has no subgroup operations".into()));
    }
    let mut kl = lanes_per_key(problem, subgroups.then_some(sg_size));
    // Register budget first: more lanes per key where one row's columns do
    // not fit (d 256 without subgroups).
    let kl_max = if subgroups { sg_size.min(32) } else { 32 };
    while !caps.cpu_plans() && kl < kl_max && live_floats(problem, 1, kl) > GPU_LIVE_FLOATS {
        kl *= 2;
    }
    // 128 invocations on GPUs: four NVIDIA warps, two AMD waves, each
    // workgroup streaming 128 / KL keys at once; at least the largest
    // subgroup, so that no subgroup is partly filled.
    let wg_default = if caps.cpu_plans() { 8 } else { 128 }
        .max(caps.subgroup_max_size)
        .max(kl);
    let wg = force.wg.unwrap_or(wg_default).min(caps.max_invocations);
    let whole = |n: u32| n > 0 && wg.is_multiple_of(n);
    if !wg.is_power_of_two() || !whole(kl) || (subgroups && !whole(caps.subgroup_max_size)) {
        return Err(fail(format!(
            "{wg} invocations: a power of two and a multiple of the {kl} lanes per key{} \
             is needed",
            if subgroups {
                format!(" and of the {} lanes of a subgroup", caps.subgroup_max_size)
            } else {
                String::new()
            }
        )));
    }
    let rows = problem.heads / problem.kv_heads * problem.n_q;
    let mut br = force
        .tr
        .unwrap_or_else(|| (rows.next_power_of_two() as u32).min(decode_rows_max(caps)))
        .max(1);
    // Register budget: fewer rows per workgroup until a lane's Q and O
    // columns fit.
    let budget_why = if force.tr.is_none() && !caps.cpu_plans() {
        let want = br;
        while br > 1 && live_floats(problem, br, kl) > GPU_LIVE_FLOATS {
            br /= 2;
        }
        if br < want {
            format!(" ({want} would pass the {GPU_LIVE_FLOATS}-float register budget)")
        } else {
            String::new()
        }
    } else {
        String::new()
    };
    let bytes = workgroup_bytes(wg, br);
    if bytes > caps.max_workgroup_storage {
        return Err(fail(format!(
            "{wg} invocations × {br} rows need {bytes} bytes of workgroup memory, the device \
             has {}",
            caps.max_workgroup_storage
        )));
    }
    let keys_per_step = wg / kl;
    let q_blocks = rows.div_ceil(br as usize);
    // Loop iterations per step of one lane if nothing is unrolled: its
    // columns of the dot products, the group sum, the softmax update with its
    // (worst case) rescale, P·V.
    let (d4, dv4, br64) = (
        problem.head_dim.div_ceil(4) as u64,
        problem.head_dim_v.div_ceil(4) as u64,
        br as u64,
    );
    let (qc, oc) = (d4.div_ceil(kl as u64), dv4.div_ceil(kl as u64));
    let per_step = qc * (1 + br64) + br64 * (4 + kl as u64 + oc) + oc * (1 + br64) + 4;
    let fixed = br64 * (qc + 3 * oc + 10) + 4 * br64 * (wg as u64 + oc * 2) + 100;
    let loop_keys = if caps.is_cpu() {
        budget_keys(fixed, per_step, keys_per_step as u64)
    } else {
        u32::MAX
    };
    let reductions = if subgroups {
        "subgroup shuffles"
    } else {
        "workgroup memory (no subgroups)"
    };
    let plan = FlashPlan {
        live_floats: live_floats(problem, br, kl),
        variant: FlashVariant::DecodeLanes,
        br,
        bc: keys_per_step,
        tr: br,
        wg,
        subgroups,
        workgroup_bytes: bytes,
        q_blocks: q_blocks as u32,
        why: format!(
            "GPU decode kernel: {rows} query rows per key/value head, {br} per workgroup{budget_why}, \
             {wg} invocations as {keys_per_step} keys × {kl} lanes across the head dim \
             (coalesced K/V rows), sums by {reductions}"
        ),
        ..FlashPlan::before_splits()
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.kv_heads,
        loop_keys,
        1,
    )
    .with_min_split_keys(MIN_SPLIT_KEYS.max(4 * keys_per_step)))
}
