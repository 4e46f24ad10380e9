//! Plan of the GPU kernel `flash_lanes.wgsl`: each key's head dim spread
//! across a group of KL lanes; a workgroup owns BR packed query rows of one
//! key/value head, either as one row group whose key groups stream different
//! keys (decode: few rows) or as RG row groups of TR rows that all stream
//! every key (rows: many rows).

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

/// Query rows per lane in the rows shape: each vec4 of K or V a lane loads
/// then feeds 4 vec4 fused multiply-adds (16 FMAs, 4 per loaded float: what
/// an SM's L1/shared bandwidth of 32 floats per clock needs to keep its 128
/// FMA lanes busy).
const ROWS_PER_LANE: u32 = 4;

/// Live floats per invocation: per row its QC + OC vec4s of Q and O, m, l,
/// the key's partial sums (a vec4 and a float) and P; plus indices.
fn live_floats(p: &AttentionProblem, rows: u32, kl: u32) -> u32 {
    let cols = (p.head_dim.div_ceil(4) as u32).div_ceil(kl)
        + (p.head_dim_v.div_ceil(4) as u32).div_ceil(kl);
    rows * (4 * cols + 8) + 16
}

fn workgroup_bytes(wg: u32, tr: u32) -> u32 {
    wg * tr * 4 + wg * 16 + 32
}

/// The plan. Lanes per key KL: the largest power of two ≤ half the row's
/// vec4s, so a lane holds about two vec4s of each row of Q and O (d 64: 8
/// lanes; each K/V load of a group is 128 contiguous bytes), at most the
/// adapter's smallest subgroup (a group's butterfly stays inside one
/// subgroup) and 32; without subgroups at most 4, since each key's sum then
/// reads KL values from workgroup memory. Then the register budget: more
/// lanes per key, then fewer rows per lane, until the estimate is within
/// [`GPU_LIVE_FLOATS`]. Workgroup: 128 invocations (four NVIDIA warps, two
/// AMD waves; at least the largest subgroup), fewer for short query sets.
pub(super) fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<Tiles> {
    let fail = |reason: String| unplannable("flash_lanes", reason);
    let sg_min = caps.subgroup_min_size;
    let subgroups = caps.subgroups && sg_min > 0 && force.subgroups != Some(false);
    if force.subgroups == Some(true) && !subgroups {
        return Err(fail("the adapter has no subgroup operations".into()));
    }
    let rows = problem.heads / problem.kv_heads * problem.n_q;
    let decode = rows <= 2 * decode_rows_max(caps) as usize;
    let cols = problem
        .head_dim
        .div_ceil(4)
        .max(problem.head_dim_v.div_ceil(4)) as u32;
    let kl_max = if subgroups { sg_min.min(32) } else { 32 };
    let mut kl = (1u32 << cols.div_ceil(2).max(1).ilog2()).min(if subgroups { kl_max } else { 4 });
    let want_tr = if decode {
        (rows.next_power_of_two() as u32).min(decode_rows_max(caps))
    } else {
        ROWS_PER_LANE
    };
    let mut tr = force.tr.unwrap_or(want_tr).max(1);
    let gpu_budget = !caps.cpu_plans();
    while gpu_budget
        && kl < kl_max.min(cols.next_power_of_two())
        && live_floats(problem, if decode { 1 } else { tr }, kl) > GPU_LIVE_FLOATS
    {
        kl *= 2;
    }
    if force.tr.is_none() && gpu_budget {
        while tr > 1 && live_floats(problem, tr, kl) > GPU_LIVE_FLOATS {
            tr /= 2;
        }
    }
    let budget_why = if tr < want_tr && force.tr.is_none() {
        format!(" ({want_tr} would pass the {GPU_LIVE_FLOATS}-float register budget)")
    } else {
        String::new()
    };
    let wg_default = if caps.cpu_plans() { 8 } else { 128 }
        .max(caps.subgroup_max_size)
        .max(kl);
    let mut wg = force.wg.unwrap_or(wg_default).min(caps.max_invocations);
    // Short query sets: fewer row groups rather than idle ones.
    if !decode && force.wg.is_none() {
        while wg / 2 >= caps.subgroup_max_size.max(kl) && (wg / 2 / kl * tr) as usize >= rows {
            wg /= 2;
        }
    }
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
    let (rg, kg) = if decode { (1, wg / kl) } else { (wg / kl, 1) };
    let br = rg * tr;
    let bytes = workgroup_bytes(wg, tr);
    if bytes > caps.max_workgroup_storage {
        return Err(fail(format!(
            "{wg} invocations × {tr} rows need {bytes} bytes of workgroup memory, the device \
             has {}",
            caps.max_workgroup_storage
        )));
    }
    let q_blocks = rows.div_ceil(br as usize);
    // Loop iterations per step of one lane if nothing is unrolled: its
    // columns of the dot products, the key sum, the softmax update with its
    // (worst case) rescale, P·V.
    let (d4, dv4, tr64) = (
        problem.head_dim.div_ceil(4) as u64,
        problem.head_dim_v.div_ceil(4) as u64,
        tr as u64,
    );
    let (qc, oc) = (d4.div_ceil(kl as u64), dv4.div_ceil(kl as u64));
    let per_step = qc * (1 + tr64) + tr64 * (4 + kl as u64 + oc) + oc * (1 + tr64) + 4;
    let fixed = (br as u64) * 4 + tr64 * (qc + 3 * oc + 10) + 4 * tr64 * (wg as u64 + oc * 2) + 100;
    let loop_keys = if caps.is_cpu() {
        budget_keys(fixed, per_step, kg as u64)
    } else {
        u32::MAX
    };
    let reductions = if subgroups {
        "subgroup shuffles"
    } else {
        "workgroup memory (no subgroups)"
    };
    let shape = if decode {
        format!("{kg} key groups stream different keys, merged at the end")
    } else {
        format!("{rg} row groups of {tr} rows, every K/V vec4 a lane loads feeds {tr} rows")
    };
    let plan = FlashPlan {
        live_floats: live_floats(problem, tr, kl),
        variant: FlashVariant::Lanes,
        br,
        bc: kg,
        tr,
        wg,
        subgroups,
        workgroup_bytes: bytes,
        q_blocks: q_blocks as u32,
        why: format!(
            "lanes kernel ({}): {rows} query rows per key/value head, {br} per workgroup{budget_why}; \
             {wg} invocations, {kl} lanes across each key's head dim (coalesced K/V rows), \
             {shape}; sums by {reductions}",
            if decode { "decode shape" } else { "rows shape" }
        ),
        ..FlashPlan::before_splits()
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.kv_heads,
        loop_keys,
        1,
    )
    .with_min_split_keys(MIN_SPLIT_KEYS.max(4 * kg)))
}
