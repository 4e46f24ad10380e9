//! Plan of the straight-line kernel for CPU adapters, `flash_simd.wgsl`: one
//! subgroup per workgroup, TR query rows per lane, K/V shared by subgroup
//! broadcast, the block unrolled by the source generator.

use super::split::cache_chunk_keys;
use super::{
    budget_keys, kv_texture, mirror_fits, row_vec4s, unplannable, FlashPlan, FlashVariant,
    TileOverride, Tiles,
};
use crate::caps::DeviceCaps;
use crate::error::Result;
use crate::problem::AttentionProblem;
use crate::source::{rolls_scores, KvAccess};

/// Whether the adapter runs the simd kernel: subgroups of one fixed size (the
/// kernel's workgroup is exactly one subgroup, and it broadcasts from literal
/// lane indices), at most the workgroup size limit.
pub(crate) fn fits(caps: &DeviceCaps) -> bool {
    caps.subgroups
        && caps.subgroup_min_size == caps.subgroup_max_size
        && (4..=caps.max_invocations.min(64)).contains(&caps.subgroup_min_size)
}

/// Most TR·(⌈d/4⌉ + ⌈d_v/4⌉) with K/V in storage buffers: the vec4s of Q
/// and O one lane holds, and the size of the unrolled block (TR·SG·(⌈d/4⌉ +
/// ⌈d_v/4⌉) vec4 FMAs), hence its compile time. Measured on lavapipe, empty
/// shader cache, SG 8 (first call s at TR 1 / 2 / 4): d 64 1.6 / 4.0 / 8.2,
/// d 128 3.9 / 10 / 31, d 160 7.4 / 15 / 42, d 256 15 / 33 / 97.
const ROW_VEC4S: u32 = 128;

/// Rows per lane with K/V in texture mirrors. With the loads cheap, TR 1
/// ran within 1.3× of TR 4 and compiled up to 5× faster when the mirrors
/// were sampled textures (1×8 heads, 1 024², TR 1, first call s, ms: d 40
/// 1.0 s, 82 ms; d 80 2.0, 181; d 128 2.8, 297 (TR 2: 11.5, 230); d 160
/// 10.4, 398 (TR 2: 33, 570)). With storage-texture mirrors and the
/// generated prologue and epilogue (2026-12-02, alternated, empty shader
/// cache), TR 2 pays where a row is 21 to 40 vec4s (d = d_v 44 … 80): each
/// broadcast K/V value then feeds two rows' FMAs. d 64: SDXL 4096×77
/// 39–40.5 against 44–45 ms, SDXL 1024×77 18.3–19.0 against 20.3–20.9,
/// square 2k 140–142 against 149–157, BLIP-2 2.0 against 2.2–2.3, T5 mixed
/// (14.9–17.0 against 16.6–16.7), first call 0.77–0.97 against 0.37–0.58
/// s; d 80 (SD 32²): 8.3–8.5 against 9.3–9.4 ms, 0.96 against 0.45 s. At
/// d 40 (SD 64²) no gain (20.9–22.8 against 20.2–21.5 ms) for twice the
/// compile; at d 128, 3–8 % for a first call of 2.0–2.1 s, past the 2 s
/// bar. Fewer keys per block (Bc 4, 2) did not shorten the compile (d 160:
/// 9.6, 10.8 s) and ran 2.2 and 3.7× slower.
///
/// Since the block sums scores as scalars (2026-12-02, fourth session; both
/// plans in one process, alternated, median of 8–10 pairs, TR 1 / TR 2
/// time, and cold first calls on a host whose FMA probe read 80–100
/// GFLOP/s), TR 2 keeps its lead only at d 64 and below: d 64 SDXL 4096×77
/// 1.095, square 2k 1.034 (first call 0.81–1.15 against 1.95–1.97 s); d 80
/// SD 32² 1.03 and 1.05, 2×8×4096×77 1.05, 1×8×1024² 1.01 (1.02–1.08
/// against 2.12–2.57 s). And where launches carry the softmax state (one
/// kv head's K/V past `split::CHUNK_KV_BYTES`), TR 2's
/// bigger kernel compiled in 2.05–2.18 s, over the 2 s bar: Flamingo 0.985,
/// Perceiver IO 1.056 (0.97–1.03 against 2.05–2.18 s).
///
/// Below d 44 the scalar sums made TR 2 pay too (2026-12-02, fifth
/// session, TR 2 / TR 1 time, 10 pairs): SD 64² (d 40) 0.91, 0.935 and
/// 0.97 in three runs, first call 0.66–0.99 against 0.34–0.51 s; 1×8×1024²
/// d 40 0.976; d 32 0.907 (0.57 against 0.39 s). TR 4 ran faster still
/// (SD 64² 0.88× TR 2, d 32 0.86×) but compiled in 1.28 s and 1.77 s: a
/// block as large as d 64's at TR 2, the largest kernel already and near
/// the 2 s bar on a slow host, so not taken.
///
/// Where the block's Q·Kᵀ half is a loop (`source::rolls_scores`: past 64
/// vec4s of K and V per row, Q from its mirror) only P·V is unrolled, so
/// TR 2 compiles in about d 64's time at TR 2 up to d_v 160 and each
/// broadcast K and V value feeds two rows (2026-12-02, fifth session, TR 2
/// / TR 1 time, 10 pairs): SD 16² (d 160) 0.761 and 0.828, first call
/// 1.11–1.29 against 0.55–0.63 s; SD 8² 0.779 (1.01 against 0.57 s);
/// 1×8×1024² d 160 (launches carrying the state) 0.792 (1.35 against 0.82
/// s; such launches keep TR 1 all the same, as at d 64). At d 256 TR 1
/// alone compiles in 1.9 s.
///
/// So TR 2 where a row is at most 32 vec4s (d = d_v ≤ 64), or the scores
/// loop and d_v ≤ 160, and the cache rule (`split::cache_chunk_keys`)
/// leaves the keys in one launch; forced splits or launch lengths, and the
/// driver's loop limit, do not change TR.
fn texture_rows(p: &AttentionProblem, caps: &DeviceCaps, sg: u32, q_mirror: bool) -> u32 {
    let carried = cache_chunk_keys(p, caps, FlashVariant::Simd, p.n_kv, 1).is_some();
    let (d4, dv4) = (
        p.head_dim.div_ceil(4) as u32,
        p.head_dim_v.div_ceil(4) as u32,
    );
    let rolled = rolls_scores(d4, dv4, q_mirror) && dv4 <= 40;
    let tr = if (row_vec4s(p) <= 32 || rolled) && !carried {
        2
    } else {
        1
    };
    tr.min(p.n_q.div_ceil(sg as usize).max(1) as u32)
}

/// Rows per lane with storage K/V: as many as n_q fills, up to 4 (square
/// 2k, d 64: TR 1 / 2 / 4 ran 2 070 / 1 130 / 716 ms), within
/// [`ROW_VEC4S`].
fn default_rows(p: &AttentionProblem, sg: u32) -> u32 {
    let fill = p.n_q.div_ceil(sg as usize).min(4) as u32;
    (ROW_VEC4S / row_vec4s(p)).clamp(1, 4).min(fill.max(1))
}

/// The simd plan: Br = SG·TR query rows per workgroup, Bc = SG keys per block.
pub(super) fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<Tiles> {
    if !fits(caps) {
        return Err(unplannable(
            "flash_simd",
            format!(
                "needs subgroups of one fixed size, 4 to 64 (adapter: subgroups {}, sizes {}..{})",
                caps.subgroups, caps.subgroup_min_size, caps.subgroup_max_size
            ),
        ));
    }
    let sg = caps.subgroup_min_size;
    let texture = kv_texture(problem, caps, force);
    // Q gets a mirror too where it fits the adapter's textures.
    let q_mirror = texture.is_some_and(|w| mirror_fits(caps, w, problem.q_len()));
    let tr = match (force.tr, texture) {
        (Some(tr), _) => tr,
        (None, Some(_)) => texture_rows(problem, caps, sg, q_mirror),
        (None, None) => default_rows(problem, sg),
    }
    .clamp(1, 16);
    let bc = force.bc.map_or(sg, |bc| bc.clamp(1, sg));
    let br = sg * tr;
    let q_blocks = problem.n_q.div_ceil(br as usize);
    // The key loop is the only loop the driver counts: one iteration per
    // block, plus the 4-element tail loops of odd head dims' loads and the
    // epilogue's stores where the driver does not unroll them.
    let odd = |d: usize| u64::from(!d.is_multiple_of(4)) * 4;
    let per_block = 1 + odd(problem.head_dim) + odd(problem.head_dim_v);
    let fixed = tr as u64 * (problem.head_dim_v.div_ceil(4) as u64 * 4 + 8) + 100;
    let loop_keys = budget_keys(fixed, per_block, bc as u64);
    let (kv, why) = match texture {
        Some(width_log2) => (
            KvAccess::Texture {
                width_log2,
                q: q_mirror,
            },
            format!(
                "TR = {tr} query rows per lane, Bc = {bc} keys per block shared by subgroup \
                 broadcast, K/V{} read from texture mirrors {} texels wide, bound as read-only \
                 storage textures (an image load is a straight-line gather on a CPU driver, a \
                 storage load a per-lane loop)",
                if q_mirror { " and Q" } else { "" },
                1u32 << width_log2
            ),
        ),
        None => (
            KvAccess::Storage,
            format!(
                "TR = {tr} query rows per lane (TR·(⌈d/4⌉+⌈d_v/4⌉) ≤ {ROW_VEC4S}), Bc = {bc} \
                 keys per block shared by subgroup broadcast, K/V from the storage buffers"
            ),
        ),
    };
    let plan = FlashPlan {
        // Bc scores per row, and the lane's loaded K and V row.
        live_floats: super::live_floats(problem, tr, bc, 4 * row_vec4s(problem)),
        variant: FlashVariant::Simd,
        br,
        bc,
        tr,
        wg: sg,
        workgroup_bytes: 24,
        q_blocks: q_blocks as u32,
        kv,
        why: format!(
            "CPU adapter with fixed subgroups of {sg}: straight-line simd kernel, one subgroup \
             per workgroup, {why}"
        ),
        ..FlashPlan::before_splits()
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.heads,
        loop_keys,
        bc,
    ))
}
