//! The split-KV heuristic: how many parts the key range is cut into, and
//! how many keys each launch covers.

use super::{kv_key_bytes, unplannable, FlashVariant, TileOverride, Tiles};
use crate::caps::DeviceCaps;
use crate::error::Result;
use crate::problem::AttentionProblem;

/// Most key splits: the combine kernel loops over them once per row.
pub const MAX_SPLITS: u32 = 256;

/// Workgroups the split heuristic aims for on a GPU: about four per
/// streaming multiprocessor / compute unit of the largest current parts
/// (132 on an H100), which wgpu does not report.
const GPU_TARGET_WORKGROUPS: usize = 512;

/// Most bytes of one kv head's K and V that a launch of the simd kernel
/// streams on a CPU adapter: past it the key range is cut into launches of
/// about this much (see [`cache_chunk_keys`]).
pub const CHUNK_KV_BYTES: u64 = 1 << 20;

/// Keys per launch that keep each kv head's K/V chunk within
/// [`CHUNK_KV_BYTES`], for the simd kernel on CPU adapters where one head's
/// K/V of a split (`split_keys` keys) is larger; `None` elsewhere.
///
/// A CPU driver runs a launch's workgroups in order, a head's query blocks
/// one after another, and each streams the head's whole key range: past the
/// core's caches every query block reads it from memory again. Cut into
/// launches that carry the softmax state, every query block streams the
/// same chunk, which stays in cache. Measured on lavapipe (2026-12-02, one
/// process, alternated, median of 6 pairs, chunked / one launch time, keys
/// per launch): Perceiver IO (25.7 MB of K/V, one head) 0.73 at 2 048 and
/// 4 096 keys, 0.80 at 1 024, 0.95 at 16 384; Flamingo (2 MiB per head)
/// 0.85–0.89 at 1 024–2 048; 1×8×1024×4096 d 64 (2 MiB) 0.86 at 2 048, 0.91
/// at 1 024. At 1 MiB per head or less it lost: square 2k 1.08 at 512 and
/// 1 024, Whisper teacher-forced (768 KiB) 1.07–1.09, since each launch
/// writes and reads back every row's state. The rule as planned against one
/// launch, 8–10 pairs: Perceiver IO (25 launches of 2 008 keys) 0.76 and
/// 0.82, Flamingo (2 of 2 048) 0.91 and 0.96.
pub(crate) fn cache_chunk_keys(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    variant: FlashVariant,
    split_keys: usize,
    align: usize,
) -> Option<usize> {
    let head_bytes = (split_keys * kv_key_bytes(problem)) as u64;
    if !caps.cpu_plans() || variant != FlashVariant::Simd || head_bytes <= CHUNK_KV_BYTES {
        return None;
    }
    let launches = head_bytes.div_ceil(CHUNK_KV_BYTES) as usize;
    let align = align.max(1);
    Some(split_keys.div_ceil(launches).div_ceil(align) * align)
}

/// Bytes of one query row's softmax state: a vec4 (m, l, 0, 0) and ⌈d_v/4⌉
/// vec4s of unnormalised O (`STATE_VEC4S` in softmax_state.wgsl).
pub(crate) fn state_row_bytes(p: &AttentionProblem) -> u64 {
    16 * (1 + p.head_dim_v.div_ceil(4)) as u64
}

/// How a key range is cut: [`choose`]'s answer.
pub(super) struct KeySplits {
    pub splits: u32,
    /// Keys per split.
    pub split_keys: u32,
    /// Keys per launch within a split.
    pub chunk_keys: u32,
    /// Whether the launch length is [`cache_chunk_keys`]'s rather than the
    /// whole split or the driver's loop budget.
    pub chunk_for_cache: bool,
}

/// Chooses split-KV for a variant's tiles: the splits, keys per split and
/// keys per launch.
///
/// - Parallelism: a problem whose workgroups (B·H·⌈n_q/Br⌉, or B·H_kv·⌈G·n_q/Br⌉
///   for the decode and lanes kernels) would leave the device idle — fewer
///   than about 512 on a GPU (four per SM of a 132-SM part), fewer than half
///   of 4 per thread on a CPU adapter — is split until it has about that
///   many, but
///   never into splits of fewer than 4 key blocks (4·Bc keys; 4 keys per lane
///   for the decode kernel; 128 keys for the GPU decode kernel), which would
///   spend more on the merge than they save.
/// - Loop limit: on CPU adapters (lavapipe end a shader's loops after 65 535
///   iterations, see [`loop_safe_keys`]) a key range too long for one launch
///   is cut into splits, which run in parallel and need one combine, rather
///   than into launches that carry the state one after the other. Measured
///   here on 1×8×2048², d = 64: see shaders/README.md "Decoding".
/// - Memory: the partial states, splits × B·H·n_q × (4 + 4·⌈d_v/4⌉) floats,
///   must fit one storage binding; past that the splits are capped and the
///   remaining length is cut into carried launches.
/// - Cache: the simd kernel on CPU adapters streams at most
///   [`CHUNK_KV_BYTES`] of one kv head's K/V per launch
///   ([`cache_chunk_keys`]).
/// - At most [`MAX_SPLITS`]. `force.splits` overrides the heuristic (clamped
///   to n_kv keys); `force.chunk_keys` the launch length.
pub(super) fn choose(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    tiles: &Tiles,
    force: TileOverride,
) -> Result<KeySplits> {
    let kernel = tiles.plan.variant.name();
    let n_kv = problem.n_kv.max(1);
    let row_bytes = state_row_bytes(problem);
    let state_limit = caps.binding_limit();
    let per_split_bytes = row_bytes * problem.lse_len() as u64;
    let mem_splits = (state_limit / per_split_bytes.max(1)).min(MAX_SPLITS as u64) as usize;
    let loop_keys = tiles.loop_keys.max(1) as usize;
    let splits = match force.splits {
        Some(s) => s.max(1) as usize,
        None => {
            let target = if caps.cpu_plans() {
                4 * caps.host_threads.max(1)
            } else {
                GPU_TARGET_WORKGROUPS
            };
            let min_keys = tiles.min_split_keys.max(1) as usize;
            // GPUs: fewer workgroups than the target (about four per
            // compute unit) leave units idle or in a half-filled last wave, so
            // split; CPU adapters split only grids under half their target.
            let enough = if caps.cpu_plans() {
                2 * tiles.base_workgroups
            } else {
                tiles.base_workgroups
            };
            let by_parallelism = if enough >= target {
                1
            } else {
                target
                    .div_ceil(tiles.base_workgroups)
                    .min(n_kv / min_keys)
                    .max(1)
            };
            let by_loops = if caps.is_cpu() {
                n_kv.div_ceil(loop_keys)
            } else {
                1
            };
            by_parallelism.max(by_loops).min(mem_splits.max(1))
        }
    }
    .min(n_kv)
    .min(MAX_SPLITS as usize);
    // Split boundaries on whole key blocks so the kernels' aligned path
    // covers every block but each split's last.
    let align = tiles.align.max(1) as usize;
    let split_keys = n_kv.div_ceil(splits).div_ceil(align) * align;
    let splits = n_kv.div_ceil(split_keys);
    let (chunk_keys, chunk_for_cache) = match force.chunk_keys {
        Some(c) => (c.max(1) as usize, false),
        None => {
            let by_loops = if loop_keys >= split_keys {
                split_keys
            } else {
                (loop_keys / align * align).max(align).min(loop_keys)
            };
            match cache_chunk_keys(problem, caps, tiles.plan.variant, split_keys, align) {
                Some(c) if c <= by_loops => (c, true),
                _ => (by_loops, false),
            }
        }
    };
    let launches = split_keys.div_ceil(chunk_keys);
    if (splits > 1 || launches > 1) && per_split_bytes * splits as u64 > state_limit {
        return Err(unplannable(
            kernel,
            format!(
                "{splits} key splits need {} bytes of partial state, past the device's {} \
                 byte binding limit",
                per_split_bytes * splits as u64,
                state_limit
            ),
        ));
    }
    Ok(KeySplits {
        splits: splits as u32,
        split_keys: split_keys as u32,
        chunk_keys: chunk_keys as u32,
        chunk_for_cache,
    })
}
