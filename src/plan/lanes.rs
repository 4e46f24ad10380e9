//! Plan of the lane-per-key kernel, `flash_lanes.wgsl`: one subgroup per
//! workgroup, every lane holding all Br query rows and one key per block.
//! Opt-in, for CPU adapters with a fixed subgroup size.

use super::{unplannable, FlashPlan, FlashVariant, TileOverride, Tiles, LOOP_BUDGET};
use crate::caps::DeviceCaps;
use crate::error::{Error, Result};
use crate::problem::AttentionProblem;

/// Query rows per workgroup for the lanes kernel: 8, or fewer so that
/// Br·(⌈d/4⌉+⌈d_v/4⌉) ≤ 256 vec4s of registers per lane.
fn lanes_rows(p: &AttentionProblem) -> u32 {
    let width = (p.head_dim.div_ceil(4) + p.head_dim_v.div_ceil(4)) as u32;
    let rows = (256 / width).min(8);
    if rows == 0 {
        0
    } else {
        1 << (31 - rows.leading_zeros())
    }
}

/// The lane-per-key plan: one subgroup per workgroup, every lane holding all
/// Br query rows (TR = Br) and one key of each block (Bc = subgroup size).
pub(super) fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<Tiles> {
    if problem.has_masking() {
        return Err(Error::Unsupported {
            kernel: "flash_lanes",
            feature: "query lengths, packed batches, windows, bias or masks".into(),
            hint: "use the default (tiled or decode) kernel",
        });
    }
    let fixed_subgroup = caps.subgroups
        && caps.subgroup_min_size == caps.subgroup_max_size
        && (4..=caps.max_invocations).contains(&caps.subgroup_min_size);
    if !fixed_subgroup {
        return Err(unplannable(
            "flash_lanes",
            format!(
                "needs subgroups of one fixed size (adapter: subgroups {}, sizes {}..{})",
                caps.subgroups, caps.subgroup_min_size, caps.subgroup_max_size
            ),
        ));
    }
    let sg = caps.subgroup_min_size;
    let br = force
        .tr
        .unwrap_or(lanes_rows(problem).max(1))
        .min(problem.n_q.next_power_of_two() as u32)
        .max(1);
    // Keys per lane per block: 1 by default. With 4 (one rescale of O per 32
    // keys) and the loops unrolled it ran 9.0 GFLOP/s against 8.7 at 8×1024²,
    // d = 64, but a cold compile took 95 s instead of seconds.
    let kpl = force.bc.map_or(1, |bc| (bc / sg).max(1));
    let q_blocks = problem.n_q.div_ceil(br as usize);
    let (d4, dv4) = (
        problem.head_dim.div_ceil(4) as u64,
        problem.head_dim_v.div_ceil(4) as u64,
    );
    // Loop iterations per SG-key block if nothing is unrolled: the K and V
    // row loads, then per row the dot product and the P·V update.
    let kpl64 = kpl as u64;
    let per_block = kpl64 * (d4 + dv4) + 1 + br as u64 * (kpl64 * (d4 + 3) + dv4 * (1 + kpl64) + 2);
    let fixed = br as u64 * (2 * d4 + 3 * dv4 + 4) + 100;
    let blocks = (LOOP_BUDGET.saturating_sub(fixed) / per_block).max(1);
    let loop_keys = (blocks * (sg * kpl) as u64).min(u32::MAX as u64) as u32;
    let plan = FlashPlan {
        variant: FlashVariant::Lanes,
        br,
        bc: sg * kpl,
        tr: br,
        wg: sg,
        workgroup_bytes: 4,
        q_blocks: q_blocks as u32,
        why: format!(
            "CPU adapter with fixed subgroups of {sg}: lane-per-key kernel, {br} query rows per \
             workgroup in every lane"
        ),
        ..FlashPlan::before_splits()
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.heads,
        loop_keys,
        sg * kpl,
    ))
}
