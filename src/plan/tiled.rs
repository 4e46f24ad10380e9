//! Plan of the tiled kernel, `flash_forward.wgsl`: K/V blocks of Bc rows in
//! workgroup memory, each invocation owning TR query rows.

use super::{budget_keys, unplannable, FlashPlan, FlashVariant, TileOverride, Tiles};
use crate::caps::DeviceCaps;
use crate::error::Result;
use crate::problem::AttentionProblem;

/// The tiled FlashAttention-2 plan (`flash_forward.wgsl`).
pub(super) fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<Tiles> {
    let cpu = caps.cpu_plans();
    let tr = force.tr.unwrap_or(if !cpu {
        1
    } else if problem.n_q >= 256 {
        4
    } else {
        2
    });
    let rows_per_tr = problem.n_q.div_ceil(tr.max(1) as usize).next_power_of_two() as u32;
    // Never under 16, nor under the adapter's largest subgroup, so no
    // subgroup is left partly empty.
    let floor = 16.max(caps.subgroup_max_size);
    let wg = force
        .wg
        .unwrap_or(rows_per_tr.clamp(floor, floor.max(if cpu { 32 } else { 64 })));
    if tr == 0 || wg == 0 || wg > caps.max_invocations {
        return Err(unplannable(
            "flash_forward",
            format!(
                "{wg} invocations × {tr} rows is not a usable workgroup (device allows {} invocations)",
                caps.max_invocations
            ),
        ));
    }
    // Largest first: 32 on GPUs (FA-2's 64×32-ish block), 16 on CPU
    // adapters (Bc 32 ran no faster on lavapipe: 535 against 521 ms at
    // 1×8×1024², d 64).
    let candidates: Vec<u32> = match force.bc {
        Some(bc) => vec![bc],
        None if cpu => vec![16, 8, 4],
        None => vec![32, 16, 8, 4],
    };
    let bc = candidates
        .iter()
        .copied()
        .find(|&bc| bc > 0 && workgroup_bytes(problem, bc) <= caps.max_workgroup_storage)
        .ok_or_else(|| {
            let bc = candidates.last().copied().unwrap_or(0);
            unplannable(
                "flash_forward",
                format!(
                    "K/V tiles of {bc} rows at d = {}, d_v = {} need {} bytes of workgroup \
                     memory, the device has {}",
                    problem.head_dim,
                    problem.head_dim_v,
                    workgroup_bytes(problem, bc),
                    caps.max_workgroup_storage
                ),
            )
        })?;
    let br = tr * wg;
    let q_blocks = problem.n_q.div_ceil(br as usize);
    let loop_keys = if caps.is_cpu() {
        loop_safe_keys(problem, bc, tr, wg)
    } else {
        u32::MAX
    };
    let why = format!(
        "tiled kernel, TR = {tr}, WG = {wg} for n_q = {}; Bc = {bc}, the largest \
         K/V block in {} B of workgroup memory",
        problem.n_q, caps.max_workgroup_storage,
    );
    let plan = FlashPlan {
        // S (Bc per row) and the vec4 of partial sums per row.
        live_floats: super::live_floats(problem, tr, bc + 4, 0),
        variant: FlashVariant::Tiled,
        br,
        bc,
        tr,
        wg,
        workgroup_bytes: workgroup_bytes(problem, bc),
        q_blocks: q_blocks as u32,
        why,
        ..FlashPlan::before_splits()
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.heads,
        loop_keys,
        bc,
    ))
}

/// Workgroup bytes the fused kernel needs for `bc` key rows.
pub(super) fn workgroup_bytes(p: &AttentionProblem, bc: u32) -> u32 {
    let d4 = p.head_dim.div_ceil(4) as u32;
    let dv4 = p.head_dim_v.div_ceil(4) as u32;
    bc * (d4 + dv4) * 16 + 16
}

/// lavapipe and llvmpipe end every loop of a shader once the loops together
/// have run 65 535 iterations in one invocation (gallivm's
/// `LP_MAX_TGSI_LOOP_ITERATIONS`, shared between all loops), silently. On such
/// CPU adapters the fused kernel is launched over key ranges short enough to
/// stay under that count, with the softmax state carried between launches.
/// Measured here before this existed: 2×64×4096, d = 64, TR = 4 gave errors
/// of 10 (every row wrong) from about 3 000 keys on.
///
/// The count assumes the driver unrolls nothing; it returns whole blocks.
pub fn loop_safe_keys(p: &AttentionProblem, bc: u32, tr: u32, wg: u32) -> u32 {
    let (d4, dv4) = (
        p.head_dim.div_ceil(4) as u64,
        p.head_dim_v.div_ceil(4) as u64,
    );
    let (bc, tr, wg) = (bc as u64, tr as u64, wg as u64);
    let per_block = (bc * d4).div_ceil(wg)
        + (bc * dv4).div_ceil(wg)
        + bc * (1 + d4 * (1 + tr))
        + tr * (2 * bc + dv4 + 3)
        + dv4 * (1 + bc * (1 + tr))
        // Per-score checks (window, bias, mask) and the mask's block test.
        + if p.key_window().is_some() || p.bias.is_some() || p.bool_mask.is_some() {
            tr * (bc + 2)
        } else {
            0
        };
    let fixed = tr * (2 * d4 + 3 * dv4 + 8) + 100;
    budget_keys(fixed, per_block, bc)
}
