//! The planner: problem + device caps (+ a caller's override) → the kernel
//! variant, its tiles, its key splits and its grid, with the reason for each
//! choice in [`FlashPlan::why`]. A pure function of its inputs, so tests plan
//! for any adapter ([`DeviceCaps::lavapipe`], [`DeviceCaps::discrete_gpu`],
//! [`DeviceCaps::webgpu_defaults`]). One file per kernel family, named like
//! its shader; `split.rs` holds the split-KV heuristic, `tests.rs` the unit
//! tests.

mod decode;
mod lanes;
mod simd;
mod split;
mod tiled;

use crate::caps::DeviceCaps;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::problem::AttentionProblem;
use crate::source::{FlashSpec, KernelTiles, KvAccess, Shader, TensorIo};

pub(crate) use simd::fits as simd_fits;
pub(crate) use split::state_row_bytes as split_state_row_bytes;
pub use split::MAX_SPLITS;
pub use tiled::loop_safe_keys;

/// Iterations one invocation may run in all its loops together before
/// lavapipe/llvmpipe stop them (65 535), with a margin.
pub(crate) const LOOP_BUDGET: u64 = 60_000;

/// Keys one launch may cover under [`LOOP_BUDGET`]: after `fixed` iterations
/// (prologue, epilogue), whole steps of `per_step` iterations, each covering
/// `keys_per_step` keys (at least one step).
pub(crate) fn budget_keys(fixed: u64, per_step: u64, keys_per_step: u64) -> u32 {
    let steps = (LOOP_BUDGET.saturating_sub(fixed) / per_step.max(1)).max(1);
    (steps * keys_per_step).min(u32::MAX as u64) as u32
}

/// Stride of the workgroup order on CPU adapters (see [`plan`]): 16 classes,
/// so each of up to 16 threads' contiguous shares samples the whole problem.
const CPU_GRID_STRIDE: usize = 16;

/// Most bytes of K and V, all kv heads of one batch entry, for which the
/// simd plan runs a query block's heads in consecutive workgroups
/// ([`FlashPlan::heads_inner`]): the L2 of one core of this project's
/// machine (AMD EPYC, 512 KiB).
pub const HEADS_INNER_KV_BYTES: usize = 512 * 1024;

/// Whether the plan runs heads fastest. A CPU driver gives each thread a
/// contiguous run of workgroups; in the plain order a run covers one head's
/// query blocks, whose Q and O rows lie H·d elements apart in BSHD (and at
/// d 40 share cache lines with the neighbouring heads' rows, read and
/// written again when those heads run), while K/V stay one head's. Heads
/// fastest, a run reads Q and writes O contiguously and cycles through every
/// head's K/V, which pays while those stay in the core's cache. Measured on
/// lavapipe (2026-12-02, both orders in one process, alternated, median of
/// 8–10 pairs, heads-fastest / plain time): SD 64² (all K/V heads 197 KiB)
/// 0.93 and 0.95, SDXL 4096×77 (394 KiB) 0.91 and 0.94, SD 32² (394 KiB)
/// 0.97, 2×20×1024×77 d 64 (788 KiB) 0.97, 8×4096×160 d 64 (655 KiB) 0.98,
/// 8×4096×256 d 64 (1 MiB) 1.05, T5-base (3 MiB) 1.34, Whisper
/// teacher-forced 1.36, square 2k 1.41.
pub fn heads_inner(problem: &AttentionProblem, variant: FlashVariant) -> bool {
    let kv_bytes = problem.kv_heads * problem.n_kv * kv_key_bytes(problem);
    variant == FlashVariant::Simd
        && problem.layout == Layout::Bshd
        && problem.heads > 1
        && kv_bytes <= HEADS_INNER_KV_BYTES
}

/// Bytes of one key's K and V rows in one kv head, as stored (and mirrored).
pub(crate) fn kv_key_bytes(problem: &AttentionProblem) -> usize {
    (problem.head_dim + problem.head_dim_v) * problem.dtype.bytes()
}

/// Tile sizes and grid of one fused-kernel launch, with the reason for each
/// choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashPlan {
    /// Which kernel of the family.
    pub variant: FlashVariant,
    /// Query rows per workgroup (Br).
    pub br: u32,
    /// Key rows per K/V block (Bc).
    pub bc: u32,
    /// Query rows per invocation.
    pub tr: u32,
    /// Invocations per workgroup.
    pub wg: u32,
    /// How q, k, v and o are stored and accessed.
    pub io: TensorIo,
    /// Whether key blocks that no query of a workgroup can see (lengths,
    /// window, boolean mask) are skipped rather than loaded and masked.
    pub block_skip: bool,
    /// Workgroup order: slot s of the grid runs tile
    /// (s % grid_stride)·grid_rows + s / grid_stride; 1 is the plain order.
    pub grid_stride: u32,
    /// Tiles per stride class, ⌈tiles / grid_stride⌉.
    pub grid_rows: u32,
    /// Workgroup order within a split: a query block's heads in consecutive
    /// tiles (heads fastest) rather than a head's query blocks (query blocks
    /// fastest, the plain order). The simd plan's choice where Q and O
    /// interleave the heads (BSHD) and all K/V heads of a batch entry fit in
    /// [`HEADS_INNER_KV_BYTES`]: see [`heads_inner`].
    pub heads_inner: bool,
    /// Workgroup memory used, bytes.
    pub workgroup_bytes: u32,
    /// ⌈n_q / Br⌉.
    pub q_blocks: u32,
    /// Dispatch grid (x, y); x·y ≥ q_blocks·B·H, the excess returns at once.
    pub grid: (u32, u32),
    /// Split-KV: the key range is cut into `splits` parts of `split_keys`
    /// keys, each owned by its own workgroups, which write partial softmax
    /// states that `shaders/split_combine.wgsl` merges. 1 = no split.
    pub splits: u32,
    /// Keys per split (the whole range when `splits` = 1).
    pub split_keys: u32,
    /// Keys per launch within a split: each split's range is cut into
    /// ⌈split_keys / chunk_keys⌉ dispatches that carry the softmax state
    /// between them (one dispatch unless the adapter bounds loop iterations;
    /// see [`loop_safe_keys`]).
    pub chunk_keys: u32,
    /// Where the kernel reads K and V: the storage buffers, or texture
    /// mirrors of them copied in before the launch (simd kernel, vec4 rows).
    pub kv: KvAccess,
    /// Whether the kernel's reductions use subgroup operations
    /// ([`FlashVariant::Lanes`]; the others decide by variant).
    pub subgroups: bool,
    /// Estimated f32 values one invocation keeps live in the key loop (its
    /// Q and O rows, m and l, the block's scores, loaded K/V): what a GPU
    /// would hold in registers. See [`GPU_LIVE_FLOATS`].
    pub live_floats: u32,
    /// Why these tiles, in words.
    pub why: String,
}

/// The two kernels of the fused family, sharing params, bindings and
/// semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlashVariant {
    /// `flash_forward.wgsl`: K/V tiles in workgroup memory, each invocation
    /// owns TR query rows. Every adapter.
    Tiled,
    /// `flash_simd.wgsl`: one subgroup per workgroup, each lane owns TR
    /// query rows, K/V shared by subgroup broadcast, straight-line generated
    /// code, no workgroup memory. CPU adapters with a fixed subgroup size
    /// (lavapipe).
    Simd,
    /// `flash_decode.wgsl`: for a few query rows against many keys. Each
    /// invocation streams its own keys for all Br rows of one key/value head
    /// (GQA heads packed together), the lanes' states are merged through
    /// workgroup memory. Every adapter; the default on CPU adapters when
    /// H/H_kv·n_q is small.
    Decode,
    /// `flash_lanes.wgsl`: the kernel shaped for GPUs. Each key's head dim
    /// is spread across a group of lanes (coalesced K/V rows, a share of Q
    /// and O per lane, scores summed by subgroup shuffles, or workgroup
    /// memory where the adapter has none). Decode shape (one row group, key
    /// groups merged) when H/H_kv·n_q is small, rows shape (row groups of
    /// `tr` rows, one key per step) otherwise. The default on GPUs with
    /// subgroups. `bc` is the keys one workgroup takes per step, `br / tr`
    /// the row groups, `wg / (bc · br / tr)` the lanes per key.
    Lanes,
}

impl FlashVariant {
    /// The shader of this variant.
    pub fn shader(self) -> Shader {
        match self {
            FlashVariant::Tiled => Shader::FlashForward,
            FlashVariant::Simd => Shader::FlashSimd,
            FlashVariant::Decode => Shader::FlashDecode,
            FlashVariant::Lanes => Shader::FlashLanes,
        }
    }

    /// The shader's name, for errors.
    pub fn name(self) -> &'static str {
        self.shader().name()
    }

    /// The variant's name on the command line and in bench tables:
    /// `tiled`, `decode`, `lanes` or `simd`.
    pub fn label(self) -> &'static str {
        match self {
            FlashVariant::Tiled => "tiled",
            FlashVariant::Simd => "simd",
            FlashVariant::Decode => "decode",
            FlashVariant::Lanes => "lanes",
        }
    }
}

impl FlashPlan {
    /// The fields a variant's planner leaves to [`plan`]: storage form, block
    /// skipping, workgroup order, grid and splits (filled in once the
    /// variant's tiles are known). A base for struct-update syntax.
    fn before_splits() -> Self {
        Self {
            variant: FlashVariant::Tiled,
            br: 0,
            bc: 0,
            tr: 0,
            wg: 0,
            io: TensorIo::F32,
            block_skip: true,
            grid_stride: 1,
            grid_rows: 0,
            heads_inner: false,
            workgroup_bytes: 0,
            q_blocks: 0,
            grid: (1, 1),
            splits: 1,
            split_keys: 0,
            chunk_keys: 0,
            kv: KvAccess::Storage,
            subgroups: false,
            live_floats: 0,
            why: String::new(),
        }
    }

    /// Launches per key split: the split's keys cut into chunks of
    /// `chunk_keys` (one unless the adapter bounds a shader's loops).
    pub fn launches(&self) -> usize {
        (self.split_keys as usize)
            .div_ceil(self.chunk_keys.max(1) as usize)
            .max(1)
    }

    /// Whether launches carry a softmax state between them or to the
    /// split-KV combine (more than one split or launch).
    pub fn carries_state(&self) -> bool {
        self.splits > 1 || self.launches() > 1
    }

    /// What the kernel is compiled with for `p`: the pipeline cache key.
    pub fn spec(&self, p: &AttentionProblem) -> FlashSpec {
        let tiles = match self.variant {
            FlashVariant::Tiled => KernelTiles::Tiled {
                br: self.br,
                bc: self.bc,
                tr: self.tr,
                wg: self.wg,
            },
            FlashVariant::Simd => KernelTiles::Simd {
                sg: self.wg,
                tr: self.tr,
                bc: self.bc,
                state: self.carries_state(),
            },
            FlashVariant::Decode => KernelTiles::Decode {
                br: self.br,
                wg: self.wg,
                dvc: decode::merge_columns(p, self.wg),
                ku: (self.bc / self.wg.max(1)).max(1),
            },
            FlashVariant::Lanes => {
                let rg = (self.br / self.tr.max(1)).max(1);
                KernelTiles::Lanes {
                    tr: self.tr,
                    rg,
                    kg: self.bc,
                    kl: self.wg / (rg * self.bc).max(1),
                    subgroups: self.subgroups,
                }
            }
        };
        FlashSpec {
            d: p.head_dim as u32,
            dv: p.head_dim_v as u32,
            io: self.io,
            kv: self.kv,
            bias: p.bias.is_some(),
            bool_mask: p.bool_mask.is_some(),
            window: p.key_window().is_some(),
            skip: self.block_skip,
            tiles,
        }
    }
}

/// Tiles a caller may force instead of the heuristic (benchmarks, tuning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TileOverride {
    /// Key rows per block (power of two).
    pub bc: Option<u32>,
    /// Query rows per invocation.
    pub tr: Option<u32>,
    /// Invocations per workgroup.
    pub wg: Option<u32>,
    /// Keys per launch (cuts the key range into several dispatches).
    pub chunk_keys: Option<u32>,
    /// Kernel variant.
    pub variant: Option<FlashVariant>,
    /// Number of key splits (split-KV); 1 turns splitting off.
    pub splits: Option<u32>,
    /// f16 storage through u32 words even where the device has SHADER_F16
    /// (default: the environment variable `XATTN_F16=packed`, else off).
    pub packed_f16: Option<bool>,
    /// Block skipping (default on); off loads and masks every key, for
    /// measuring what skipping saves.
    pub block_skip: Option<bool>,
    /// Workgroup order stride (1: plain order; default 16 on CPU adapters
    /// for problems with uneven work per tile, else 1).
    pub grid_stride: Option<u32>,
    /// Heads fastest in the workgroup order ([`FlashPlan::heads_inner`];
    /// default: [`heads_inner`]'s choice).
    pub heads_inner: Option<bool>,
    /// K/V through texture mirrors where the kernel and head dims allow it
    /// (default on: see [`kv_texture`]); off reads the storage buffers.
    pub kv_texture: Option<bool>,
    /// Reductions by subgroup operations where the kernel has the choice
    /// ([`FlashVariant::Lanes`]; default: where the adapter has
    /// them); off uses workgroup memory, as on adapters without subgroups.
    pub subgroups: Option<bool>,
}

/// Splits `total` workgroups into an (x, y) grid within the per-dimension limit.
pub fn fold_grid(total: usize, max_per_dim: u32, kernel: &'static str) -> Result<(u32, u32)> {
    let max = max_per_dim.max(1) as usize;
    let x = total.clamp(1, max);
    let y = total.max(1).div_ceil(x);
    if y > max {
        return Err(Error::Unplannable {
            kernel,
            reason: format!("{total} workgroups exceed a {max}×{max} grid"),
        });
    }
    Ok((x as u32, y as u32))
}

/// Picks the fused kernel, its tiles and its key splits for `problem` on a
/// device with `caps`.
///
/// Heuristic (shaders/README.md "Tiling" and "Decoding" have the measurements):
/// - Variant: when the query rows that share one key/value head,
///   H/H_kv·n_q, number at most [`decode_rows_limit`], a decode kernel:
///   [`FlashVariant::Decode`] on CPU adapters (each lane streams whole key
///   rows, as a SIMD lane should), [`FlashVariant::Lanes`] elsewhere
///   (coalesced rows across lanes, subgroup merges; `lanes.rs`);
///   otherwise [`FlashVariant::Simd`] on CPU adapters with one fixed
///   subgroup size (lavapipe; `simd.rs` has its rows per lane and the
///   measurements), [`FlashVariant::Lanes`] on GPUs (its rows shape: 4
///   rows per lane, each K/V load feeding 16 FMAs, within the 128-float
///   register budget; each key's sum by subgroup shuffles, or through
///   workgroup memory where the GPU has no subgroups), else
///   [`FlashVariant::Tiled`] (CPU adapters without fixed subgroups: GL).
/// - Tiled (CPU adapters without fixed subgroups, GL, a forced tiled plan), TR (rows per invocation): on GPUs 1, to keep Q, O and the score
///   row in registers (4·(⌈d/4⌉+⌈d_v/4⌉)+Bc registers, 144 at d = 64). On CPU
///   adapters (lavapipe) 4 when n_q ≥ 256, else 2: every invocation is a
///   SIMD lane and each K/V load from workgroup memory then feeds TR FMAs.
///   Measured at 1×8×1024², d 64 (median of 5): TR 2/WG 32 521 ms, TR 4/WG 16
///   427, TR 4/WG 32 394, TR 8/WG 8 560; square 2k with TR 4/WG 32 1 639 ms
///   against 2 148–2 402 with TR 2. TR 4 costs 3–4 s more per cold pipeline
///   compile (d 64: 8.1 s against 5.0), so shapes with few query rows, where
///   it would only idle rows, keep TR 2; TR = 1 ran 1.8× slower than 2.
/// - Tiled, WG: 64 invocations on GPUs (two NVIDIA warps, one AMD wave), 32 on
///   CPU adapters; fewer when n_q is small so short query sets do not leave
///   most rows idle; never under 16 nor under the largest subgroup.
/// - Tiled, Bc: the largest of 32, 16, 8, 4 (16 on CPU adapters) whose K and
///   V tiles fit the device's workgroup memory (WebGPU's default 16 KiB gives
///   Bc = 16 at d = 64: 32 rows of K and V would need 16 400 bytes).
/// - Splits: see `split.rs` (and shaders/README.md "Decoding").
pub fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<FlashPlan> {
    problem.validate()?;
    let cpu = caps.cpu_plans();
    let rows_per_kv_head = problem.heads / problem.kv_heads * problem.n_q;
    let variant = force
        .variant
        .unwrap_or(if rows_per_kv_head <= decode_rows_limit(caps) {
            if cpu {
                FlashVariant::Decode
            } else {
                FlashVariant::Lanes
            }
        } else if cpu && simd::fits(caps) {
            FlashVariant::Simd
        } else if !cpu {
            // With subgroups or without (each key's sum then goes through
            // workgroup memory): the head dim split across lanes keeps
            // every GPU plan within the register budget, which the tiled
            // kernel (a whole Q and O row per invocation) cannot.
            FlashVariant::Lanes
        } else {
            FlashVariant::Tiled
        });
    let mut tiles = match variant {
        FlashVariant::Tiled => tiled::plan(problem, caps, force)?,
        FlashVariant::Simd => simd::plan(problem, caps, force)?,
        FlashVariant::Decode => decode::plan(problem, caps, force)?,
        FlashVariant::Lanes => lanes::plan(problem, caps, force)?,
    };
    let split::KeySplits {
        splits,
        split_keys,
        chunk_keys,
        chunk_for_cache,
    } = split::choose(problem, caps, &tiles, force)?;
    tiles.plan.splits = splits;
    tiles.plan.split_keys = split_keys;
    tiles.plan.io = TensorIo::choose(problem.dtype, caps, force.packed_f16);
    tiles.plan.block_skip = force.block_skip.unwrap_or(true);
    tiles.plan.chunk_keys = chunk_keys;
    // Workgroup order. CPU drivers (lavapipe) give each thread one contiguous
    // share of a dispatch's workgroups; when tiles differ in work (causal and
    // sliding windows, query/key lengths, packed batches, masks) the plain
    // order (query blocks fastest, splits outermost) handed one thread most
    // of it. Measured on lavapipe, 2 threads, block skipping on: causal
    // 1×8×2048², d 64, 1.30× faster than with skipping off in plain order
    // (the split holding the early keys went to one thread); see README
    // "Masks, windows and packed batches" for the strided figures. GPUs
    // schedule workgroups dynamically and neighbouring query blocks share
    // K/V in L2, so they keep the plain order.
    let total = tiles.base_workgroups * splits as usize;
    let stride = match force.grid_stride {
        Some(s) => s.max(1) as usize,
        None if cpu && (problem.has_masking() || problem.kv_lens) => CPU_GRID_STRIDE,
        None => 1,
    }
    .min(total.max(1));
    tiles.plan.grid_stride = stride as u32;
    tiles.plan.grid_rows = total.div_ceil(stride) as u32;
    tiles.plan.heads_inner = force
        .heads_inner
        .unwrap_or_else(|| heads_inner(problem, variant));
    tiles.plan.grid = fold_grid(
        stride * total.div_ceil(stride),
        caps.max_workgroups_per_dim,
        variant.name(),
    )?;
    // Which family of plans, first.
    let family = if cpu {
        "CPU adapter"
    } else if caps.is_cpu() {
        "GPU plan (XATTN_PLAN=gpu) on a CPU adapter"
    } else {
        "GPU adapter"
    };
    tiles.plan.why = format!("{family}: {}", tiles.plan.why);
    if tiles.plan.heads_inner {
        tiles.plan.why.push_str(&format!(
            "; heads fastest in the workgroup order (Q and O rows read and written \
             contiguously; K/V of all heads within {} KiB)",
            HEADS_INNER_KV_BYTES / 1024
        ));
    }
    if splits > 1 {
        tiles.plan.why.push_str(&format!(
            "; {splits} key splits of {split_keys} keys ({} workgroups per split)",
            tiles.base_workgroups
        ));
    }
    let live = tiles.plan.live_floats;
    tiles
        .plan
        .why
        .push_str(&format!("; about {live} live floats per invocation"));
    if !cpu && live > GPU_LIVE_FLOATS {
        tiles.plan.why.push_str(&format!(
            " (over the {GPU_LIVE_FLOATS} a GPU invocation should hold: it would spill; \
             the lanes kernel splits the head dim across lanes to keep within it)"
        ));
    }
    if (chunk_keys as usize) < problem.n_kv.min(split_keys as usize) {
        let reason = if chunk_for_cache {
            format!(
                "each launch streams at most {} KiB of a head's K/V, which stays in cache",
                split::CHUNK_KV_BYTES / 1024
            )
        } else {
            "driver loop limit".to_string()
        };
        tiles
            .plan
            .why
            .push_str(&format!("; {chunk_keys} keys per launch ({reason})"));
    }
    Ok(tiles.plan)
}

/// The width (log₂ texels) of the texture mirrors of K and V
/// ([`KvAccess::Texture`]) for `problem` on `caps`, or `None` where they do
/// not apply: turned off by `force.kv_texture`, head dims not multiples of
/// 4 (rows must start on a texel), or a tensor too large for a texture of
/// the adapter's largest dimension. Square 2k, d 64, on lavapipe: 3× the
/// storage-buffer kernel (shaders/README.md "The simd kernel for CPU
/// adapters").
pub fn kv_texture(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Option<u32> {
    if force.kv_texture == Some(false)
        || !problem.head_dim.is_multiple_of(4)
        || !problem.head_dim_v.is_multiple_of(4)
    {
        return None;
    }
    let width_log2 = mirror_width_log2(caps)?;
    mirror_fits(caps, width_log2, problem.k_len().max(problem.v_len())).then_some(width_log2)
}

/// The width (log₂ texels) of a texture mirror of a buffer on `caps`: the
/// adapter's largest texture dimension up to 16 384, or `None` below 64.
/// Shared by the K/V mirrors and the layer's projection mirrors.
pub(crate) fn mirror_width_log2(caps: &DeviceCaps) -> Option<u32> {
    let max = caps.max_texture_dim.min(1 << 14);
    (max >= 64).then(|| max.ilog2())
}

/// Whether `elements` f32-sized values (4 per texel) fill few enough rows of
/// a mirror `2^width_log2` texels wide for the adapter's textures.
pub(crate) fn mirror_fits(caps: &DeviceCaps, width_log2: u32, elements: usize) -> bool {
    mirror_rows(elements / 4, width_log2) <= caps.max_texture_dim as usize
}

/// The rows of a texture mirror of `texels` texels, `2^width_log2` per row:
/// as many as they fill, rounded up to the next height that is not a power
/// of two (so at least 3). llvmpipe keys each compiled shader variant on
/// whether every bound image's sides are powers of two, so mirror heights
/// that flip between the two made a new sequence length recompile the whole
/// kernel at its first dispatch (1.2–1.5 s for a d 64 simd kernel on this
/// project's machine); with every height on one side, one variant serves
/// every shape. At most one row (or, below 3, two) of waste.
pub(crate) fn mirror_rows(texels: usize, width_log2: u32) -> usize {
    let rows = texels.div_ceil(1 << width_log2).max(3);
    rows + usize::from(rows.is_power_of_two())
}

/// The register budget of a GPU plan, in f32 values per invocation: NVIDIA
/// allows 255 registers per thread but occupancy halves past 128; Intel's
/// SIMD16 has about 64 floats per lane.
pub const GPU_LIVE_FLOATS: u32 = 128;

/// ⌈d/4⌉ + ⌈d_v/4⌉: the vec4s of one row of Q and one of O (or of K and V).
pub(crate) fn row_vec4s(p: &AttentionProblem) -> u32 {
    (p.head_dim.div_ceil(4) + p.head_dim_v.div_ceil(4)) as u32
}

/// Estimated live floats per invocation: `rows` query rows of Q (d) and O
/// (d_v) in vec4s, their m and l, `scores` per row, and `extra` more.
pub(crate) fn live_floats(p: &AttentionProblem, rows: u32, scores: u32, extra: u32) -> u32 {
    rows * (4 * row_vec4s(p) + 2 + scores) + extra + 12
}

/// Most query rows per key/value head (H/H_kv·n_q) for which the planner
/// picks [`FlashVariant::Decode`]: twice [`decode_rows_max`], except on CPU
/// adapters that run the simd kernel, where it is 1. There the simd kernel
/// (texture K/V, TR 1) ran 1×8 heads, 16×1 024, d 64 in 2.7 ms (1.3 s first
/// call) against the decode kernel's 40.7 ms (65.9 s first call: its rows
/// loops unrolled); 4×1 024 2.0 against 8.2 ms (18.7 s); 2×2 048 5.3 against
/// 5.9 ms; GQA 8:2, 1×2 048 3.0 against 4.1 ms (16 s); while at one row per
/// kv head the decode kernel stays ahead (Whisper step 1×20, 1×1 500: 7.2
/// against 10.1 ms; 1×8, 1×8 192: 17.0 against 20.2).
pub fn decode_rows_limit(caps: &DeviceCaps) -> usize {
    if caps.cpu_plans() && simd::fits(caps) {
        1
    } else {
        2 * decode_rows_max(caps) as usize
    }
}

/// Query rows per workgroup of [`FlashVariant::Decode`]: 8 on CPU adapters,
/// 4 on GPUs, where every row costs each invocation 4·(⌈d/4⌉+⌈d_v/4⌉)
/// registers. The planner picks the decode kernel when the query rows per
/// key/value head (H/H_kv·n_q) are at most [`decode_rows_limit`]. Measured on lavapipe
/// (min of 31 runs): 1×2 heads, 16×2000, d 64: decode with 8 rows per
/// workgroup 4.8 ms, 4 rows 4.1–7.6, 16 rows 6.6–10, tiled 8.6; GQA 2×8:2,
/// 3×799, d 59 (12 rows per kv head): decode 4.4 ms, tiled 27 ms; 1×8,
/// 32×2000: decode (16 rows) 49 ms, tiled 37 ms.
pub fn decode_rows_max(caps: &DeviceCaps) -> u32 {
    if caps.cpu_plans() {
        8
    } else {
        4
    }
}

/// A variant's tiles before splitting: the plan (splits not yet chosen), the
/// workgroups of one split, the most keys one launch may cover on this
/// adapter, the granularity of split boundaries, and the fewest keys a split
/// made for parallelism should hold (default four key blocks, or four keys
/// per lane: 4·max(align, WG)).
pub(crate) struct Tiles {
    pub plan: FlashPlan,
    pub base_workgroups: usize,
    pub loop_keys: u32,
    pub align: u32,
    pub min_split_keys: u32,
}

impl Tiles {
    pub fn new(plan: FlashPlan, base_workgroups: usize, loop_keys: u32, align: u32) -> Self {
        let min_split_keys = 4 * align.max(plan.wg);
        Self {
            plan,
            base_workgroups,
            loop_keys,
            align,
            min_split_keys,
        }
    }

    pub fn with_min_split_keys(self, keys: u32) -> Self {
        Self {
            min_split_keys: keys,
            ..self
        }
    }
}

pub(crate) fn unplannable(kernel: &'static str, reason: String) -> Error {
    Error::Unplannable { kernel, reason }
}

#[cfg(test)]
mod tests;
