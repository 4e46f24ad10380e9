//! The problem description, its validation, planning and dispatch of the fused
//! kernel (`shaders/flash_forward.wgsl`).
//!
//! Problem → plan → dispatch: an [`AttentionProblem`] holds no data; its
//! [`validate`](AttentionProblem::validate) turns every inconsistency into an
//! [`Error`]; [`plan`] picks tile sizes for a device; [`FlashAttention`] holds
//! the compiled pipeline and records dispatches into any command encoder.

use std::sync::Arc;

use crate::context::{Binding, Context, DeviceCaps, Kernel, PipelineKey};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskShape, Masks, SeqLayout, VarLen, Window, MAX_SEQ};
use crate::tensor::AttentionTensors;

/// Largest head dim (of Q/K or of V) the kernels support.
pub const MAX_HEAD_DIM: usize = 256;

/// Storage type of Q, K, V and O. LSE is always f32, and all arithmetic
/// (scores, softmax, accumulation) is f32 whatever the storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half. Read and written as WGSL `f16` where the device has
    /// `SHADER_F16`, else as `u32` words through `unpack2x16float` (see
    /// [`TileOverride::packed_f16`]).
    F16,
    /// bfloat16, as `u32` words and bit shifts on every device; rounded to
    /// nearest even on the way out.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// Rounds an f32 to this storage type and back (what a kernel that
    /// stores in this type sees).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => x,
            Dtype::F16 => half::f16::from_f32(x).to_f32(),
            Dtype::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// [`Dtype::round`] over a vector, in place.
    pub fn round_all(self, mut xs: Vec<f32>) -> Vec<f32> {
        if self != Dtype::F32 {
            xs.iter_mut().for_each(|x| *x = self.round(*x));
        }
        xs
    }

    /// Encodes f32 values in this storage type, little-endian bytes.
    pub fn encode(self, xs: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => bytemuck::cast_slice(xs).to_vec(),
            Dtype::F16 => xs
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::Bf16 => xs
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    /// Decodes `n` values of this storage type from little-endian bytes.
    pub fn decode(self, bytes: &[u8], n: usize) -> Vec<f32> {
        let w = self.bytes();
        bytes
            .chunks_exact(w)
            .take(n)
            .map(|b| match self {
                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                Dtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            })
            .collect()
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// Memory order of a 4-D tensor of (batch, sequence, heads, head dim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[B, S, H, D]`, flash-attn's order (the default).
    #[default]
    Bshd,
    /// `[B, H, S, D]`, PyTorch SDPA's order.
    Bhsd,
}

impl Layout {
    /// Element strides (batch, sequence, head) of a tensor with `s` rows,
    /// `h` heads and head dim `d`.
    pub fn strides(self, s: usize, h: usize, d: usize) -> [usize; 3] {
        match self {
            Layout::Bshd => [s * h * d, h * d, d],
            Layout::Bhsd => [h * s * d, d, s * d],
        }
    }

    /// The shape in memory order.
    pub fn shape(self, b: usize, s: usize, h: usize, d: usize) -> [usize; 4] {
        match self {
            Layout::Bshd => [b, s, h, d],
            Layout::Bhsd => [b, h, s, d],
        }
    }

    /// Copies `data` (in this layout, `[b, s, h, d]` logically) into
    /// `target`'s order.
    pub fn convert<T: Copy + Default>(
        self,
        target: Layout,
        data: &[T],
        [b, s, h, d]: [usize; 4],
    ) -> Vec<T> {
        if self == target {
            return data.to_vec();
        }
        let (from, to) = (self.strides(s, h, d), target.strides(s, h, d));
        let mut out = vec![T::default(); data.len()];
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    let src = bi * from[0] + si * from[1] + hi * from[2];
                    let dst = bi * to[0] + si * to[1] + hi * to[2];
                    out[dst..dst + d].copy_from_slice(&data[src..src + d]);
                }
            }
        }
        out
    }
}

/// One cross-attention forward problem, without data.
///
/// Layout is BSHD, row-major, as in flash-attn, by default:
/// q `[B, n_q, H, d]`, k `[B, n_kv, H_kv, d]`, v `[B, n_kv, H_kv, d_v]`,
/// o `[B, n_q, H, d_v]`, lse `[B, H, n_q]` (natural log). q, k, v may instead
/// be BHSD (`[B, H, S, D]`, [`Layout::Bhsd`]) and so may o, read and written in
/// place through strides.
/// Query head `h` reads key/value head `h / (H / H_kv)` (GQA/MQA).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionProblem {
    /// Batch size B.
    pub batch: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads H_kv; H must be a multiple of it.
    pub kv_heads: usize,
    /// Query rows per batch entry.
    pub n_q: usize,
    /// Key/value rows per batch entry.
    pub n_kv: usize,
    /// Head dim of Q and K.
    pub head_dim: usize,
    /// Head dim of V and O.
    pub head_dim_v: usize,
    /// Softmax scale; `None` means 1/√d. T5 uses 1.0.
    pub scale: Option<f32>,
    /// Whether a per-batch key length (`[B]`, u32) is supplied: keys at or past
    /// `kv_lens[b]` are masked out (key padding mask). A batch entry with length
    /// 0 gets O = 0 and LSE = −∞.
    pub kv_lens: bool,
    /// Storage type of q, k, v and o (LSE is always f32).
    pub dtype: Dtype,
    /// Memory order of q, k and v (read in place through strides, no copy).
    pub layout: Layout,
    /// Memory order of o.
    pub out_layout: Layout,
    /// Whether per-batch query lengths (`[B]`, u32) are supplied: rows at or
    /// past `q_lens[b]` are padding and get O = 0, LSE = −∞.
    pub q_lens: bool,
    /// A packed (variable-length) batch: `n_q`/`n_kv` are then the longest
    /// sequences and the tensors `[total, H, d]` (see [`VarLen`]).
    pub varlen: Option<VarLen>,
    /// Causal or sliding-window masking, bottom-right aligned ([`Window`]).
    pub window: Option<Window>,
    /// Additive bias or boolean mask on the scores.
    pub mask: Mask,
}

impl AttentionProblem {
    /// Multi-head attention with H_kv = H, d_v = d, scale 1/√d, no key lengths.
    pub fn new(batch: usize, heads: usize, n_q: usize, n_kv: usize, head_dim: usize) -> Self {
        Self {
            batch,
            heads,
            kv_heads: heads,
            n_q,
            n_kv,
            head_dim,
            head_dim_v: head_dim,
            scale: None,
            kv_lens: false,
            dtype: Dtype::F32,
            layout: Layout::Bshd,
            out_layout: Layout::Bshd,
            q_lens: false,
            varlen: None,
            window: None,
            mask: Mask::None,
        }
    }

    /// Declares that per-batch query lengths will be supplied.
    pub fn with_q_lens(mut self, on: bool) -> Self {
        self.q_lens = on;
        self
    }

    /// Makes the batch packed: `batch` sequences back to back in
    /// `[total, H, d]` tensors, located by cu_seqlens_q/k; `n_q`/`n_kv` must
    /// be the longest sequences (see [`VarLen::from_cu_seqlens`]).
    pub fn with_varlen(mut self, varlen: VarLen) -> Self {
        self.varlen = Some(varlen);
        self
    }

    /// Causal masking, bottom-right aligned (see [`Window::causal`]).
    pub fn with_causal(self) -> Self {
        self.with_window(Window::causal())
    }

    /// A causal or sliding window.
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// An additive f32 bias of this broadcast shape.
    pub fn with_bias(mut self, shape: MaskShape) -> Self {
        self.mask = Mask::Bias(shape);
        self
    }

    /// A boolean mask of this broadcast shape (`true` = attend).
    pub fn with_bool_mask(mut self, shape: MaskShape) -> Self {
        self.mask = Mask::Bool(shape);
        self
    }

    /// (batch, rows) of q and o as stored: (B, n_q), or (1, total_q) packed.
    pub fn q_dims(&self) -> (usize, usize) {
        self.varlen
            .map_or((self.batch, self.n_q), |v| (1, v.total_q))
    }

    /// (batch, rows) of k and v as stored: (B, n_kv), or (1, total_kv) packed.
    pub fn kv_dims(&self) -> (usize, usize) {
        self.varlen
            .map_or((self.batch, self.n_kv), |v| (1, v.total_kv))
    }

    /// Whether anything beyond key lengths decides which keys a query sees
    /// (query lengths, packing, window, bias, mask).
    pub fn has_masking(&self) -> bool {
        self.q_lens || self.varlen.is_some() || self.window.is_some() || self.mask != Mask::None
    }

    /// Sets the memory order of q, k and v.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the memory order of o.
    pub fn with_out_layout(mut self, layout: Layout) -> Self {
        self.out_layout = layout;
        self
    }

    /// Sets the storage type of q, k, v and o.
    pub fn with_dtype(mut self, dtype: Dtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets the number of key/value heads (GQA when 1 < H_kv < H, MQA when 1).
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Self {
        self.kv_heads = kv_heads;
        self
    }

    /// Sets the head dim of V (and O).
    pub fn with_head_dim_v(mut self, head_dim_v: usize) -> Self {
        self.head_dim_v = head_dim_v;
        self
    }

    /// Overrides the softmax scale.
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Declares that per-batch key lengths will be supplied.
    pub fn with_kv_lens(mut self, on: bool) -> Self {
        self.kv_lens = on;
        self
    }

    /// The softmax scale in use.
    pub fn scale(&self) -> f32 {
        self.scale
            .unwrap_or_else(|| 1.0 / (self.head_dim as f32).sqrt())
    }

    /// Elements of q.
    pub fn q_len(&self) -> usize {
        let (b, s) = self.q_dims();
        b * s * self.heads * self.head_dim
    }
    /// Elements of k.
    pub fn k_len(&self) -> usize {
        let (b, s) = self.kv_dims();
        b * s * self.kv_heads * self.head_dim
    }
    /// Elements of v.
    pub fn v_len(&self) -> usize {
        let (b, s) = self.kv_dims();
        b * s * self.kv_heads * self.head_dim_v
    }
    /// Elements of o.
    pub fn o_len(&self) -> usize {
        let (b, s) = self.q_dims();
        b * s * self.heads * self.head_dim_v
    }
    /// Elements of lse: `[B, H, n_q]`, or `[H, total_q]` packed.
    pub fn lse_len(&self) -> usize {
        let (b, s) = self.q_dims();
        b * self.heads * s
    }

    /// Element strides (batch, row, head) of q, k, v and o as stored, in
    /// their layouts. Packed batches address rows by their position in the
    /// packed tensors, so their batch stride is 0.
    pub fn tensor_strides(&self) -> [[usize; 3]; 4] {
        let ((_, nq), (_, nk)) = (self.q_dims(), self.kv_dims());
        let (h, hk, d, dv) = (self.heads, self.kv_heads, self.head_dim, self.head_dim_v);
        let mut out = [
            self.layout.strides(nq, h, d),
            self.layout.strides(nk, hk, d),
            self.layout.strides(nk, hk, dv),
            self.out_layout.strides(nq, h, dv),
        ];
        if self.varlen.is_some() {
            out.iter_mut().for_each(|st| st[0] = 0);
        }
        out
    }

    /// The lse index of query row `t` (position in q's row dimension) of head
    /// `h` in batch entry `b` (b is 0 for packed batches).
    pub fn lse_index(&self, b: usize, h: usize, t: usize) -> usize {
        let (_, s) = self.q_dims();
        (b * self.heads + h) * s + t
    }

    /// FLOPs of one forward pass, 2·B·H·n_q·n_kv·(d + d_v) (4·B·H·n_q·n_kv·d
    /// when d_v = d; exp and softmax not counted).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.heads) as f64
            * self.n_q as f64
            * self.n_kv as f64
            * (self.head_dim + self.head_dim_v) as f64
    }

    /// The tensors' names, shapes and element counts, in binding order.
    pub fn tensors(&self) -> [(&'static str, [usize; 4], usize); 5] {
        let (h, hk) = (self.heads, self.kv_heads);
        let ((bq, nq), (bk, nk)) = (self.q_dims(), self.kv_dims());
        let (l, ol) = (self.layout, self.out_layout);
        [
            ("q", l.shape(bq, nq, h, self.head_dim), self.q_len()),
            ("k", l.shape(bk, nk, hk, self.head_dim), self.k_len()),
            ("v", l.shape(bk, nk, hk, self.head_dim_v), self.v_len()),
            ("o", ol.shape(bq, nq, h, self.head_dim_v), self.o_len()),
            ("lse", [bq, h, nq, 1], self.lse_len()),
        ]
    }

    /// Checks every dimension and relation; the first inconsistency found is
    /// returned as a typed error.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("n_q", self.n_q),
        ] {
            if v == 0 {
                return Err(Error::ZeroDim { name });
            }
        }
        for (name, v) in [("head_dim", self.head_dim), ("head_dim_v", self.head_dim_v)] {
            if v == 0 || v > MAX_HEAD_DIM {
                return Err(Error::HeadDim {
                    name,
                    got: v,
                    max: MAX_HEAD_DIM,
                });
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsMismatch {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        if !self.scale().is_finite() {
            return Err(Error::BadScale { got: self.scale() });
        }
        let (_, nq) = self.q_dims();
        let (_, nk) = self.kv_dims();
        for (name, n) in [
            ("n_q", self.n_q),
            ("n_kv", self.n_kv),
            ("total_q", nq),
            ("total_kv", nk),
        ] {
            if n > MAX_SEQ {
                return Err(Error::BadSeqLens {
                    name,
                    reason: format!("{n} rows, past the {MAX_SEQ} the kernels index"),
                });
            }
        }
        if let Some(w) = self.window {
            for (side, v) in [("left", w.left), ("right", w.right)] {
                if v.is_some_and(|v| v > MAX_SEQ) {
                    return Err(Error::BadSeqLens {
                        name: "window",
                        reason: format!("{side} = {v:?} is past {MAX_SEQ}; use None for no limit"),
                    });
                }
            }
        }
        let words = self.mask.words(self);
        if words as u64 > u32::MAX as u64 {
            return Err(Error::TooManyElements {
                name: "mask",
                elements: words as u64,
            });
        }
        for (name, _, n) in self.tensors() {
            if n as u64 > u32::MAX as u64 {
                return Err(Error::TooManyElements {
                    name,
                    elements: n as u64,
                });
            }
        }
        Ok(())
    }

    /// Checks host key lengths against the problem.
    pub fn validate_kv_lens(&self, kv_lens: Option<&[u32]>) -> Result<()> {
        Masks::kv_lens(kv_lens).validate(self)
    }

    /// Bytes per element of tensor `name` (lse is always f32).
    pub fn element_bytes(&self, name: &str) -> usize {
        if name == "lse" {
            4
        } else {
            self.dtype.bytes()
        }
    }

    /// Bytes of tensor `name`, rounded up to whole 4-byte words (the
    /// granularity of device buffers).
    pub fn tensor_bytes(&self, name: &str) -> u64 {
        let n = self
            .tensors()
            .iter()
            .find(|t| t.0 == name)
            .map_or(0, |t| t.2);
        ((n * self.element_bytes(name)) as u64).next_multiple_of(4)
    }

    /// Checks that each tensor (and the bias or mask) fits one storage
    /// binding on this device.
    pub fn validate_limits(&self, caps: &DeviceCaps) -> Result<()> {
        let limit = caps.max_storage_binding.min(caps.max_buffer_size);
        let mask = ("mask", 4 * self.mask.words(self) as u64);
        for (name, bytes) in self
            .tensors()
            .map(|(name, _, n)| (name, (n * self.element_bytes(name)) as u64))
            .into_iter()
            .chain([mask])
        {
            if bytes > limit {
                return Err(Error::BindingTooLarge { name, bytes, limit });
            }
        }
        Ok(())
    }
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
    /// `flash_lanes.wgsl`: one subgroup per workgroup, each lane owns one key
    /// of every block and all Br query rows; subgroup reductions, no
    /// workgroup memory. CPU adapters with a fixed subgroup size (lavapipe).
    Lanes,
    /// `flash_decode.wgsl`: for a few query rows against many keys. Each
    /// invocation streams its own keys for all Br rows of one key/value head
    /// (GQA heads packed together), the lanes' states are merged through
    /// workgroup memory. Every adapter; the default when H/H_kv·n_q is small.
    Decode,
}

impl FlashVariant {
    /// Kernel name and WGSL body (compiled after [`FLASH_COMMON_WGSL`]).
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            FlashVariant::Tiled => ("flash_forward", FLASH_FORWARD_WGSL),
            FlashVariant::Lanes => ("flash_lanes", FLASH_LANES_WGSL),
            FlashVariant::Decode => ("flash_decode", FLASH_DECODE_WGSL),
        }
    }

    /// The full source the device compiles for `spec`.
    pub fn specialised(self, spec: &[(&'static str, u32)]) -> String {
        flash_source(self.source().1, spec)
    }
}

impl FlashPlan {
    /// The specialisation constants the shader is compiled with.
    pub fn spec(&self, p: &AttentionProblem) -> Vec<(&'static str, u32)> {
        let mut spec = vec![
            ("D", p.head_dim as u32),
            ("DV", p.head_dim_v as u32),
            ("D4", p.head_dim.div_ceil(4) as u32),
            ("DV4", p.head_dim_v.div_ceil(4) as u32),
            // Tensor access form (flash_io.wgsl): 1 = vec4 rows.
            ("VEC_QK", p.head_dim.is_multiple_of(4) as u32),
            ("VEC_V", p.head_dim_v.is_multiple_of(4) as u32),
            ("DT", self.io.code()),
            ("MASK", p.mask.code()),
            ("WIN", p.window.is_some() as u32),
            ("SKIP", self.block_skip as u32),
            ("BR", self.br),
        ];
        match self.variant {
            FlashVariant::Tiled => spec.extend([("BC", self.bc), ("TR", self.tr), ("WG", self.wg)]),
            FlashVariant::Lanes => spec.extend([("SG", self.wg), ("KPL", self.bc / self.wg)]),
            FlashVariant::Decode => {
                spec.extend([("WG", self.wg), ("DVC", decode_merge_columns(p, self.wg))])
            }
        }
        spec
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
}

fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Workgroup bytes the fused kernel needs for `bc` key rows.
fn flash_workgroup_bytes(p: &AttentionProblem, bc: u32) -> u32 {
    let d4 = div_ceil(p.head_dim, 4) as u32;
    let dv4 = div_ceil(p.head_dim_v, 4) as u32;
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
        + if p.window.is_some() || p.mask != Mask::None {
            tr * (bc + 2)
        } else {
            0
        };
    let fixed = tr * (2 * d4 + 3 * dv4 + 8) + 100;
    let blocks = (LOOP_BUDGET.saturating_sub(fixed) / per_block).max(1);
    (blocks * bc).min(u32::MAX as u64) as u32
}

/// Splits `total` workgroups into an (x, y) grid within the per-dimension limit.
pub(crate) fn fold_grid(
    total: usize,
    max_per_dim: u32,
    kernel: &'static str,
) -> Result<(u32, u32)> {
    let max = max_per_dim.max(1) as usize;
    let x = total.clamp(1, max);
    let y = div_ceil(total.max(1), x);
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
/// Heuristic (see README "Tiling" and "Split-KV" for the measurements):
/// - Variant: [`FlashVariant::Decode`] when the query rows that share one
///   key/value head, H/H_kv·n_q, number at most 2·[`decode_rows_max`];
///   otherwise [`FlashVariant::Tiled`]. The lanes kernel is opt-in.
/// - Tiled, TR (rows per invocation): on GPUs 1, to keep Q, O and the score
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
///   most rows idle; never under 16.
/// - Tiled, Bc: the largest of 32, 16, 8, 4 (16 on CPU adapters) whose K and
///   V tiles fit the device's workgroup memory (WebGPU's default 16 KiB gives
///   Bc = 32 at d = 64).
/// - Splits: see `choose_splits` in this file (and README "Decoding").
pub fn plan(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
) -> Result<FlashPlan> {
    problem.validate()?;
    let cpu = is_cpu(caps);
    let rows_per_kv_head = problem.heads / problem.kv_heads * problem.n_q;
    let variant =
        force
            .variant
            .unwrap_or(if rows_per_kv_head <= 2 * decode_rows_max(caps) as usize {
                FlashVariant::Decode
            } else {
                FlashVariant::Tiled
            });
    let mut tiles = match variant {
        FlashVariant::Tiled => plan_tiled(problem, caps, force, cpu)?,
        FlashVariant::Lanes => plan_lanes(problem, caps, force)?,
        FlashVariant::Decode => plan_decode(problem, caps, force)?,
    };
    let (splits, split_keys, chunk_keys) = choose_splits(problem, caps, &tiles, force)?;
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
    tiles.plan.grid = fold_grid(
        stride * total.div_ceil(stride),
        caps.max_workgroups_per_dim,
        variant.source().0,
    )?;
    if splits > 1 {
        tiles.plan.why.push_str(&format!(
            "; {splits} key splits of {split_keys} keys ({} workgroups per split)",
            tiles.base_workgroups
        ));
    }
    if (chunk_keys as usize) < problem.n_kv.min(split_keys as usize) {
        tiles.plan.why.push_str(&format!(
            "; {chunk_keys} keys per launch (driver loop limit)"
        ));
    }
    Ok(tiles.plan)
}

fn is_cpu(caps: &DeviceCaps) -> bool {
    caps.info.device_type == wgpu::DeviceType::Cpu
}

/// Query rows per workgroup of [`FlashVariant::Decode`]: 8 on CPU adapters,
/// 4 on GPUs, where every row costs each invocation 4·(⌈d/4⌉+⌈d_v/4⌉)
/// registers. The planner picks the decode kernel when the query rows per
/// key/value head (H/H_kv·n_q) are at most twice this. Measured on lavapipe
/// (min of 31 runs): 1×2 heads, 16×2000, d 64: decode with 8 rows per
/// workgroup 4.8 ms, 4 rows 4.1–7.6, 16 rows 6.6–10, tiled 8.6; GQA 2×8:2,
/// 3×799, d 59 (12 rows per kv head): decode 4.4 ms, tiled 27 ms; 1×8,
/// 32×2000: decode (16 rows) 49 ms, tiled 37 ms.
pub fn decode_rows_max(caps: &DeviceCaps) -> u32 {
    if is_cpu(caps) {
        8
    } else {
        4
    }
}

/// A variant's tiles before splitting: the plan (splits not yet chosen), the
/// workgroups of one split, the most keys one launch may cover on this
/// adapter, and the granularity of split boundaries.
struct Tiles {
    plan: FlashPlan,
    base_workgroups: usize,
    loop_keys: u32,
    align: u32,
}

impl Tiles {
    fn new(plan: FlashPlan, base_workgroups: usize, loop_keys: u32, align: u32) -> Self {
        Self {
            plan,
            base_workgroups,
            loop_keys,
            align,
        }
    }
}

fn unplannable(kernel: &'static str, reason: String) -> Error {
    Error::Unplannable { kernel, reason }
}

fn plan_tiled(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    force: TileOverride,
    cpu: bool,
) -> Result<Tiles> {
    let tr = force.tr.unwrap_or(if !cpu {
        1
    } else if problem.n_q >= 256 {
        4
    } else {
        2
    });
    let rows_per_tr = div_ceil(problem.n_q, tr.max(1) as usize).next_power_of_two() as u32;
    let wg = force
        .wg
        .unwrap_or(rows_per_tr.clamp(16, if cpu { 32 } else { 64 }));
    if tr == 0 || wg == 0 || wg > caps.max_invocations {
        return Err(unplannable(
            "flash_forward",
            format!(
                "{wg} invocations × {tr} rows is not a usable workgroup (device allows {} invocations)",
                caps.max_invocations
            ),
        ));
    }
    let bc_cap = if cpu { 16 } else { 32 };
    let candidates: Vec<u32> = match force.bc {
        Some(bc) => vec![bc],
        None => [64u32, 32, 16, 8, 4]
            .into_iter()
            .filter(|&b| b <= bc_cap)
            .collect(),
    };
    let bc = candidates
        .iter()
        .copied()
        .find(|&bc| bc > 0 && flash_workgroup_bytes(problem, bc) <= caps.max_workgroup_storage)
        .ok_or_else(|| {
            let bc = candidates.last().copied().unwrap_or(0);
            unplannable(
                "flash_forward",
                format!(
                    "K/V tiles of {bc} rows at d = {}, d_v = {} need {} bytes of workgroup \
                     memory, the device has {}",
                    problem.head_dim,
                    problem.head_dim_v,
                    flash_workgroup_bytes(problem, bc),
                    caps.max_workgroup_storage
                ),
            )
        })?;
    let br = tr * wg;
    let q_blocks = div_ceil(problem.n_q, br as usize);
    let loop_keys = if cpu {
        loop_safe_keys(problem, bc, tr, wg)
    } else {
        u32::MAX
    };
    let why = format!(
        "{} adapter: tiled kernel, TR = {tr}, WG = {wg} for n_q = {}; Bc = {bc}, the largest \
         K/V block in {} B of workgroup memory",
        if cpu { "CPU" } else { "GPU" },
        problem.n_q,
        caps.max_workgroup_storage,
    );
    let plan = FlashPlan {
        variant: FlashVariant::Tiled,
        br,
        bc,
        tr,
        wg,
        io: TensorIo::F32,
        block_skip: true,
        grid_stride: 1,
        grid_rows: 0,
        workgroup_bytes: flash_workgroup_bytes(problem, bc),
        q_blocks: q_blocks as u32,
        grid: (1, 1),
        splits: 1,
        split_keys: 0,
        chunk_keys: 0,
        why,
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.heads,
        loop_keys,
        bc,
    ))
}

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
fn plan_lanes(problem: &AttentionProblem, caps: &DeviceCaps, force: TileOverride) -> Result<Tiles> {
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
    let q_blocks = div_ceil(problem.n_q, br as usize);
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
        io: TensorIo::F32,
        block_skip: true,
        grid_stride: 1,
        grid_rows: 0,
        workgroup_bytes: 4,
        q_blocks: q_blocks as u32,
        grid: (1, 1),
        splits: 1,
        split_keys: 0,
        chunk_keys: 0,
        why: format!(
            "CPU adapter with fixed subgroups of {sg}: lane-per-key kernel, {br} query rows per \
             workgroup in every lane"
        ),
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.heads,
        loop_keys,
        sg * kpl,
    ))
}

/// Vec4 columns of O merged per step in `flash_decode.wgsl` (its workgroup
/// memory holds WG × DVC vec4s).
fn decode_merge_columns(p: &AttentionProblem, wg: u32) -> u32 {
    (p.head_dim_v.div_ceil(4) as u32).min(8).min(wg)
}

fn decode_workgroup_bytes(p: &AttentionProblem, wg: u32) -> u32 {
    wg * 8 + wg * decode_merge_columns(p, wg) * 16 + 32
}

/// The decode plan: Br query rows of one key/value head per workgroup (the
/// GQA heads of that kv head packed together), 64 invocations each streaming
/// its own keys (8 on CPU adapters; fewer if the merge buffer does not fit).
fn plan_decode(
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
    let wg_default = if is_cpu(caps) { 8 } else { 64 };
    let mut wg = force.wg.unwrap_or(wg_default).min(caps.max_invocations);
    while force.wg.is_none()
        && wg > 1
        && decode_workgroup_bytes(problem, wg) > caps.max_workgroup_storage
    {
        wg /= 2;
    }
    if wg == 0 || decode_workgroup_bytes(problem, wg) > caps.max_workgroup_storage {
        return Err(unplannable(
            "flash_decode",
            format!(
                "{wg} invocations need {} bytes of workgroup memory, the device has {}",
                decode_workgroup_bytes(problem, wg),
                caps.max_workgroup_storage
            ),
        ));
    }
    let q_blocks = div_ceil(rows, br as usize);
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
        + u64::from(p.mask != Mask::None) * br64;
    let fixed = br64 * (2 * d4 + 3 * dv4 + 10) + 4 * br64 * (wg as u64 + dv4 * 2) + 100;
    let keys_per_lane = (LOOP_BUDGET.saturating_sub(fixed) / per_key).max(1);
    let loop_keys = if is_cpu(caps) {
        (keys_per_lane * wg as u64).min(u32::MAX as u64) as u32
    } else {
        u32::MAX
    };
    let plan = FlashPlan {
        variant: FlashVariant::Decode,
        br,
        bc: wg,
        tr: br,
        wg,
        io: TensorIo::F32,
        block_skip: true,
        grid_stride: 1,
        grid_rows: 0,
        workgroup_bytes: decode_workgroup_bytes(problem, wg),
        q_blocks: q_blocks as u32,
        grid: (1, 1),
        splits: 1,
        split_keys: 0,
        chunk_keys: 0,
        why: format!(
            "decode kernel: {rows} query rows per key/value head, {br} per workgroup, \
             {wg} invocations each streaming its own keys"
        ),
    };
    Ok(Tiles::new(
        plan,
        q_blocks * problem.batch * problem.kv_heads,
        loop_keys,
        1,
    ))
}

/// Stride of the workgroup order on CPU adapters (see `plan`): 16 classes,
/// so each of up to 16 threads' contiguous shares samples the whole problem.
const CPU_GRID_STRIDE: usize = 16;

/// Iterations one invocation may run in all its loops together before
/// lavapipe/llvmpipe stop them (65 535), with a margin.
const LOOP_BUDGET: u64 = 60_000;

/// Most key splits: the combine kernel loops over them once per row.
pub const MAX_SPLITS: u32 = 256;

/// Workgroups the split heuristic aims for on a GPU: about four per
/// streaming multiprocessor / compute unit of the largest current parts
/// (132 on an H100), which wgpu does not report.
const GPU_TARGET_WORKGROUPS: usize = 512;

/// Bytes of one query row's softmax state: a vec4 (m, l, 0, 0) and ⌈d_v/4⌉
/// vec4s of unnormalised O (`STATE_VEC4S` in flash_common.wgsl).
fn state_row_bytes(p: &AttentionProblem) -> u64 {
    16 * (1 + p.head_dim_v.div_ceil(4)) as u64
}

/// Chooses split-KV for a variant's tiles: returns (splits, keys per split,
/// keys per launch).
///
/// - Parallelism: a problem whose workgroups (B·H·⌈n_q/Br⌉, or B·H_kv·⌈G·n_q/Br⌉
///   for the decode kernel) would leave the device idle is split until it has
///   about 512 workgroups on a GPU or 4 per CPU thread on a CPU adapter, but
///   never into splits of fewer than 4 key blocks (4·Bc keys; 4 keys per lane
///   for the decode kernel), which would spend more on the merge than they
///   save.
/// - Loop limit: on CPU adapters (lavapipe end a shader's loops after 65 535
///   iterations, see [`loop_safe_keys`]) a key range too long for one launch
///   is cut into splits, which run in parallel and need one combine, rather
///   than into launches that carry the state one after the other. Measured
///   here on 1×8×2048², d = 64: see README "Split-KV".
/// - Memory: the partial states, splits × B·H·n_q × (4 + 4·⌈d_v/4⌉) floats,
///   must fit one storage binding; past that the splits are capped and the
///   remaining length is cut into carried launches.
/// - At most [`MAX_SPLITS`]. `force.splits` overrides the heuristic (clamped
///   to n_kv keys); `force.chunk_keys` the launch length.
fn choose_splits(
    problem: &AttentionProblem,
    caps: &DeviceCaps,
    tiles: &Tiles,
    force: TileOverride,
) -> Result<(u32, u32, u32)> {
    let kernel = tiles.plan.variant.source().0;
    let n_kv = problem.n_kv.max(1);
    let row_bytes = state_row_bytes(problem);
    let state_limit = caps.max_storage_binding.min(caps.max_buffer_size);
    let per_split_bytes = row_bytes * problem.lse_len() as u64;
    let mem_splits = (state_limit / per_split_bytes.max(1)).min(MAX_SPLITS as u64) as usize;
    let loop_keys = tiles.loop_keys.max(1) as usize;
    let splits = match force.splits {
        Some(s) => s.max(1) as usize,
        None => {
            let cpu = is_cpu(caps);
            let target = if cpu {
                4 * std::thread::available_parallelism().map_or(4, |n| n.get())
            } else {
                GPU_TARGET_WORKGROUPS
            };
            let min_keys = 4 * tiles.align.max(tiles.plan.wg) as usize;
            let by_parallelism = if 2 * tiles.base_workgroups >= target {
                1
            } else {
                div_ceil(target, tiles.base_workgroups)
                    .min(n_kv / min_keys)
                    .max(1)
            };
            let by_loops = if cpu { div_ceil(n_kv, loop_keys) } else { 1 };
            by_parallelism.max(by_loops).min(mem_splits.max(1))
        }
    }
    .min(n_kv)
    .min(MAX_SPLITS as usize);
    // Split boundaries on whole key blocks so the kernels' aligned path
    // covers every block but each split's last.
    let align = tiles.align.max(1) as usize;
    let split_keys = div_ceil(div_ceil(n_kv, splits), align) * align;
    let splits = div_ceil(n_kv, split_keys);
    let chunk_keys = match force.chunk_keys {
        Some(c) => c.max(1) as usize,
        None if loop_keys >= split_keys => split_keys,
        None => (loop_keys / align * align).max(align).min(loop_keys),
    };
    let launches = div_ceil(split_keys, chunk_keys);
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
    Ok((splits as u32, split_keys as u32, chunk_keys as u32))
}

/// Uniform parameters of `flash_forward.wgsl`, mirrored field by field by its
/// `Params` struct. Strides are in elements.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlashParams {
    /// Batch size B.
    pub batch: u32,
    /// Query heads H.
    pub heads: u32,
    /// Key/value heads H_kv.
    pub kv_heads: u32,
    /// Query rows.
    pub n_q: u32,
    /// Key rows.
    pub n_kv: u32,
    /// Which arrays the `lens` binding holds: bit 0 key lengths, bit 1
    /// query lengths, bit 2 cu_seqlens_q/k (packed batch).
    pub seq_flags: u32,
    /// ⌈n_q / Br⌉.
    pub q_blocks: u32,
    /// Workgroups along x of the folded grid.
    pub grid_x: u32,
    /// q stride between batch entries.
    pub q_stride_b: u32,
    /// q stride between sequence positions.
    pub q_stride_s: u32,
    /// q stride between heads.
    pub q_stride_h: u32,
    /// k stride between batch entries.
    pub k_stride_b: u32,
    /// k stride between sequence positions.
    pub k_stride_s: u32,
    /// k stride between heads.
    pub k_stride_h: u32,
    /// v stride between batch entries.
    pub v_stride_b: u32,
    /// v stride between sequence positions.
    pub v_stride_s: u32,
    /// v stride between heads.
    pub v_stride_h: u32,
    /// o stride between batch entries.
    pub o_stride_b: u32,
    /// o stride between sequence positions.
    pub o_stride_s: u32,
    /// o stride between heads.
    pub o_stride_h: u32,
    /// scale · log2(e), folded into Q so the softmax uses exp2.
    pub scale_log2: f32,
    /// Query heads per key/value head.
    pub group: u32,
    /// First key of this launch's range.
    pub kv_begin: u32,
    /// One past the last key of this launch's range.
    pub kv_end: u32,
    /// Bit 0: first launch of the key range; bit 1: last launch.
    pub flags: u32,
    /// Key splits (split-KV); 1 = none.
    pub splits: u32,
    /// Keys per split; `kv_begin`/`kv_end` are offsets inside a split.
    pub split_keys: u32,
    /// Offset of the key lengths in the `lens` binding (u32s).
    pub kv_lens_at: u32,
    /// Offset of the query lengths.
    pub q_lens_at: u32,
    /// Offset of cu_seqlens_q.
    pub cu_q_at: u32,
    /// Offset of cu_seqlens_k.
    pub cu_k_at: u32,
    /// Keys visible before the diagonal (2^30: unbounded).
    pub win_left: u32,
    /// Keys visible after the diagonal (2^30: unbounded).
    pub win_right: u32,
    /// Bias / mask stride between batch entries (f32s or u32 words; 0: broadcast).
    pub mask_stride_b: u32,
    /// Bias / mask stride between heads.
    pub mask_stride_h: u32,
    /// Bias / mask stride between query rows.
    pub mask_stride_q: u32,
    /// lse row stride between batch entries (0 for packed batches).
    pub lse_stride_b: u32,
    /// lse row stride between heads.
    pub lse_stride_h: u32,
    /// lse rows (state rows per split).
    pub lse_rows: u32,
    /// Workgroup order: grid slot s runs tile (s % grid_stride)·grid_rows +
    /// s / grid_stride (1: plain order).
    pub grid_stride: u32,
    /// ⌈tiles / grid_stride⌉.
    pub grid_rows: u32,
    /// Padding to a multiple of 16 bytes.
    pub _pad0: u32,
    /// Padding to a multiple of 16 bytes.
    pub _pad1: u32,
    /// Padding to a multiple of 16 bytes.
    pub _pad2: u32,
}

impl FlashParams {
    /// Parameters for the problem's layouts (contiguous BSHD or BHSD).
    pub fn new(p: &AttentionProblem, plan: &FlashPlan) -> Self {
        let (h, hk) = (p.heads as u32, p.kv_heads as u32);
        // Rows of the stored q (the packed total for varlen).
        let nq = p.q_dims().1 as u32;
        let packed = p.varlen.is_some();
        let [qs, ks, vs, os] = p.tensor_strides().map(|st| st.map(|x| x as u32));
        let seq = SeqLayout::of(p);
        let at = |o: Option<usize>| o.unwrap_or(0) as u32;
        let unbounded = 1u32 << 30;
        let win = |w: Option<usize>| w.map_or(unbounded, |w| w.min(unbounded as usize) as u32);
        let row_words = p.mask.row_words(p);
        let ms = p
            .mask
            .shape()
            .map_or([0; 3], |s| s.row_strides(p).map(|x| (x * row_words) as u32));
        Self {
            batch: p.batch as u32,
            heads: h,
            kv_heads: hk,
            n_q: p.n_q as u32,
            n_kv: p.n_kv as u32,
            seq_flags: p.kv_lens as u32 | (p.q_lens as u32) << 1 | (packed as u32) << 2,
            q_blocks: plan.q_blocks,
            grid_x: plan.grid.0,
            q_stride_b: qs[0],
            q_stride_s: qs[1],
            q_stride_h: qs[2],
            k_stride_b: ks[0],
            k_stride_s: ks[1],
            k_stride_h: ks[2],
            v_stride_b: vs[0],
            v_stride_s: vs[1],
            v_stride_h: vs[2],
            o_stride_b: os[0],
            o_stride_s: os[1],
            o_stride_h: os[2],
            scale_log2: p.scale() * std::f32::consts::LOG2_E,
            group: h / hk,
            kv_begin: 0,
            kv_end: plan.split_keys,
            flags: 3,
            splits: plan.splits,
            split_keys: plan.split_keys,
            kv_lens_at: at(seq.kv_lens),
            q_lens_at: at(seq.q_lens),
            cu_q_at: at(seq.cu_q),
            cu_k_at: at(seq.cu_k),
            win_left: win(p.window.and_then(|w| w.left)),
            win_right: win(p.window.and_then(|w| w.right)),
            mask_stride_b: ms[0],
            mask_stride_h: ms[1],
            mask_stride_q: ms[2],
            lse_stride_b: if packed { 0 } else { h * p.n_q as u32 },
            lse_stride_h: nq,
            lse_rows: p.lse_len() as u32,
            grid_stride: plan.grid_stride,
            grid_rows: plan.grid_rows,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// WGSL source of the fused kernel.
pub const FLASH_FORWARD_WGSL: &str = include_str!("../shaders/flash_forward.wgsl");

/// WGSL shared by both variants: params, bindings, row loads.
pub const FLASH_COMMON_WGSL: &str = include_str!("../shaders/flash_common.wgsl");

/// WGSL source of the lane-per-key variant.
pub const FLASH_LANES_WGSL: &str = include_str!("../shaders/flash_lanes.wgsl");

/// WGSL source of the decode-shaped variant.
pub const FLASH_DECODE_WGSL: &str = include_str!("../shaders/flash_decode.wgsl");

/// WGSL source of the split-KV combine kernel (compiled after
/// [`FLASH_COMMON_WGSL`]).
pub const SPLIT_COMBINE_WGSL: &str = include_str!("../shaders/split_combine.wgsl");

/// WGSL templates of the fused kernels' tensor access (see its header).
pub const FLASH_IO_WGSL: &str = include_str!("../shaders/flash_io.wgsl");

/// The `//@ name` section of [`FLASH_IO_WGSL`].
fn io_template(name: &str) -> &'static str {
    let marker = format!("//@ {name}\n");
    let start = FLASH_IO_WGSL
        .find(&marker)
        .map(|i| i + marker.len())
        .unwrap_or_else(|| panic!("flash_io.wgsl has no section {name}"));
    let end = FLASH_IO_WGSL[start..]
        .find("//@ ")
        .map_or(FLASH_IO_WGSL.len(), |i| start + i);
    &FLASH_IO_WGSL[start..end]
}

fn spec_value(spec: &[(&'static str, u32)], name: &str) -> u32 {
    spec.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
}

/// The source of a fused-family kernel (or the split combine) for `spec`: the
/// constants, the tensor access chosen by `VEC_QK` and `VEC_V`, the shared
/// params and bindings, then `body`.
pub fn flash_source(body: &str, spec: &[(&'static str, u32)]) -> String {
    let io = TensorIo::from_code(spec_value(spec, "DT"));
    let form = |on: u32| match (io, on != 0) {
        (TensorIo::F32, true) => "vec4",
        (TensorIo::F32, false) => "scalar",
        (TensorIo::F16, true) => "f16_vec4",
        (TensorIo::F16, false) => "f16_scalar",
        (TensorIo::F16Packed | TensorIo::Bf16, _) => "packed",
    };
    let (qk, v) = (
        form(spec_value(spec, "VEC_QK")),
        form(spec_value(spec, "VEC_V")),
    );
    let mut src = String::new();
    match io {
        TensorIo::F16Packed => src.push_str(io_template("unpack_f16")),
        TensorIo::Bf16 => src.push_str(io_template("unpack_bf16")),
        _ => {}
    }
    for (name, binding, f) in [("q", 1, qk), ("k", 2, qk), ("v", 3, v)] {
        src.push_str(
            &io_template(f)
                .replace("$NAME", name)
                .replace("$BINDING", &binding.to_string()),
        );
    }
    src.push_str(io_template(&format!("out_{v}")));
    let body = specialise(&format!("{src}\n{FLASH_COMMON_WGSL}\n{body}"), spec);
    if io == TensorIo::F16 {
        format!("enable f16;\n{body}")
    } else {
        body
    }
}

/// How a kernel reads and writes q, k, v and o (`shaders/flash_io.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorIo {
    /// `array<f32>` / `array<vec4<f32>>`.
    F32,
    /// WGSL `f16` arrays (device has SHADER_F16).
    F16,
    /// f16 in `u32` words through `unpack2x16float` / `pack2x16float`.
    F16Packed,
    /// bf16 in `u32` words through shifts.
    Bf16,
}

impl TensorIo {
    /// The `DT` specialisation constant.
    pub fn code(self) -> u32 {
        self as u32
    }

    fn from_code(code: u32) -> Self {
        match code {
            1 => TensorIo::F16,
            2 => TensorIo::F16Packed,
            3 => TensorIo::Bf16,
            _ => TensorIo::F32,
        }
    }

    /// The form for `dtype` on a device: f16 natively where the device has
    /// SHADER_F16 unless `packed_f16` (or the environment variable
    /// `XATTN_F16=packed`) asks for the u32-word path.
    pub fn choose(dtype: Dtype, caps: &DeviceCaps, packed_f16: Option<bool>) -> Self {
        let packed = packed_f16.unwrap_or_else(|| {
            std::env::var("XATTN_F16").is_ok_and(|v| v.eq_ignore_ascii_case("packed"))
        });
        match dtype {
            Dtype::F32 => TensorIo::F32,
            Dtype::F16 if caps.shader_f16 && !packed => TensorIo::F16,
            Dtype::F16 => TensorIo::F16Packed,
            Dtype::Bf16 => TensorIo::Bf16,
        }
    }
}

/// The source the device compiles for a specialisation: `const NAME: u32 = V;`
/// lines, then the shader body.
pub fn specialise(body: &str, spec: &[(&'static str, u32)]) -> String {
    let mut s = String::with_capacity(body.len() + 64 * spec.len());
    for (name, value) in spec {
        s.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    s.push_str(body);
    s
}

/// The device buffers of one launch. Any buffer with `STORAGE` usage and at
/// least the problem's size works.
#[derive(Debug, Clone, Copy)]
pub struct AttentionBuffers<'a> {
    /// `[B, n_q, H, d]` (or as the problem's layout / packing says).
    pub q: &'a wgpu::Buffer,
    /// `[B, n_kv, H_kv, d]`.
    pub k: &'a wgpu::Buffer,
    /// `[B, n_kv, H_kv, d_v]`.
    pub v: &'a wgpu::Buffer,
    /// u32 lengths and packed-sequence offsets, required iff the problem
    /// declares any: key lengths `[B]`, query lengths `[B]`, cu_seqlens_q
    /// `[B+1]`, cu_seqlens_k `[B+1]`, back to back in that order, each only
    /// if declared ([`SeqLayout`]; with key lengths alone it is just them).
    /// Lengths past their sequence are clamped by the kernels; cu_seqlens
    /// must hold what [`Masks::validate`] checks on the host.
    pub lens: Option<&'a wgpu::Buffer>,
    /// The bias (f32) or packed boolean mask (u32 words), iff declared.
    pub mask: Option<&'a wgpu::Buffer>,
    /// `[B, n_q, H, d_v]`, written.
    pub o: &'a wgpu::Buffer,
    /// `[B, H, n_q]` (packed: `[H, total_q]`), written (natural log).
    pub lse: &'a wgpu::Buffer,
}

impl AttentionBuffers<'_> {
    /// Checks buffer sizes against the problem.
    pub fn validate(&self, p: &AttentionProblem) -> Result<()> {
        let bufs = [self.q, self.k, self.v, self.o, self.lse];
        for ((name, shape, n), buf) in p.tensors().into_iter().zip(bufs) {
            let got = buf.size() / p.element_bytes(name) as u64;
            if got < n as u64 {
                return Err(Error::SizeMismatch {
                    name,
                    got,
                    expected: n as u64,
                    shape: format!("{shape:?}"),
                });
            }
        }
        let words = SeqLayout::of(p).words;
        let lens_bad = |got: u64, reason: &str| Error::BadSeqLens {
            name: "lens",
            reason: format!(
                "{reason}: {got} u32s, expected {words} ({:?})",
                SeqLayout::of(p)
            ),
        };
        match (words, self.lens) {
            (0, Some(b)) => {
                return Err(lens_bad(b.size() / 4, "buffer given but nothing declared"))
            }
            (w, None) if w > 0 && p.kv_lens && !p.has_masking() => {
                return Err(Error::KvLensCount {
                    got: 0,
                    expected: p.batch,
                })
            }
            (w, None) if w > 0 => return Err(lens_bad(0, "no buffer")),
            (w, Some(b)) if b.size() / 4 < w as u64 => {
                return Err(lens_bad(b.size() / 4, "buffer too small"))
            }
            _ => {}
        }
        let words = p.mask.words(p) as u64;
        let got = self.mask.map(|b| b.size() / 4);
        if (p.mask != Mask::None) != got.is_some() || got.is_some_and(|g| g < words) {
            return Err(Error::SizeMismatch {
                name: "mask",
                got: got.unwrap_or(0),
                expected: words,
                shape: format!("{:?}", p.mask),
            });
        }
        Ok(())
    }
}

/// Result of the simple API: O and LSE on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOutput {
    /// `[B, n_q, H, d_v]`.
    pub o: Vec<f32>,
    /// `[B, H, n_q]`, natural log; −∞ for rows with no visible key.
    pub lse: Vec<f32>,
}

/// Checks host slices against the problem.
pub(crate) fn validate_host(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    masks: &Masks<'_>,
) -> Result<()> {
    for ((name, shape, n), got) in p.tensors().into_iter().zip([q.len(), k.len(), v.len()]) {
        if got != n {
            return Err(Error::SizeMismatch {
                name,
                got: got as u64,
                expected: n as u64,
                shape: format!("{shape:?}"),
            });
        }
    }
    masks.validate(p)
}

/// The fused kernel, planned and compiled for one problem. Cheap to keep and
/// reuse: recording a launch costs one bind group per dispatch, or nothing
/// with [`FlashAttention::bind`].
#[derive(Debug)]
pub struct FlashAttention<'c> {
    ctx: &'c Context,
    problem: AttentionProblem,
    plan: FlashPlan,
    kernel: Arc<Kernel>,
    /// The split-KV combine, with its grid, when the plan has splits.
    combine: Option<(Arc<Kernel>, (u32, u32))>,
    /// One uniform buffer per key-range launch.
    params: Vec<wgpu::Buffer>,
    /// Softmax state carried between launches and the splits' partial states
    /// (absent for one unsplit launch).
    state: Option<wgpu::Buffer>,
}

impl<'c> FlashAttention<'c> {
    /// Validates, plans with the default heuristic and compiles (or fetches from
    /// the cache) the pipeline.
    pub fn new(ctx: &'c Context, problem: &AttentionProblem) -> Result<Self> {
        Self::with_tiles(ctx, problem, TileOverride::default())
    }

    /// As [`FlashAttention::new`], with tiles forced where `force` says.
    pub fn with_tiles(
        ctx: &'c Context,
        problem: &AttentionProblem,
        force: TileOverride,
    ) -> Result<Self> {
        problem.validate()?;
        problem.validate_limits(ctx.caps())?;
        let plan = plan(problem, ctx.caps(), force)?;
        let spec = plan.spec(problem);
        let kernel = ctx.pipeline(
            PipelineKey {
                kernel: plan.variant.source().0,
                entry: "main",
                spec: spec.clone(),
            },
            &FLASH_BINDINGS,
            || plan.variant.specialised(&spec),
        )?;
        let combine = if plan.splits > 1 {
            // The storage forms; the combine needs no mask or window.
            let mut spec = spec[..7].to_vec();
            spec.extend([("MASK", 0), ("WIN", 0), ("SKIP", 1)]);
            let kernel = ctx.pipeline(
                PipelineKey {
                    kernel: "split_combine",
                    entry: "main",
                    spec: spec.clone(),
                },
                &FLASH_BINDINGS,
                || flash_source(SPLIT_COMBINE_WGSL, &spec),
            )?;
            let grid = fold_grid(
                problem.lse_len().div_ceil(64),
                ctx.caps().max_workgroups_per_dim,
                "split_combine",
            )?;
            Some((kernel, grid))
        } else {
            None
        };
        let base = FlashParams::new(problem, &plan);
        let chunk = plan.chunk_keys as usize;
        let launches = (plan.split_keys as usize).div_ceil(chunk).max(1);
        let params = (0..launches)
            .map(|i| {
                let first = (i == 0) as u32;
                let last = ((i + 1 == launches) as u32) << 1;
                let p = FlashParams {
                    kv_begin: (i * chunk) as u32,
                    kv_end: ((i + 1) * chunk).min(plan.split_keys as usize) as u32,
                    flags: first | last,
                    ..base
                };
                ctx.upload_uniform("flash params", &p)
            })
            .collect();
        let state = (launches > 1 || plan.splits > 1).then(|| {
            let rows = problem.lse_len() as u64 * plan.splits as u64;
            ctx.storage("flash state", rows * state_row_bytes(problem))
        });
        Ok(Self {
            ctx,
            problem: *problem,
            plan,
            kernel,
            combine,
            params,
            state,
        })
    }

    /// The plan in use.
    pub fn plan(&self) -> &FlashPlan {
        &self.plan
    }

    /// The problem planned for.
    pub fn problem(&self) -> &AttentionProblem {
        &self.problem
    }

    /// Bytes of device memory this instance allocated beyond the caller's
    /// tensors (uniforms and the split/carried softmax state).
    pub fn scratch_bytes(&self) -> u64 {
        self.params.iter().map(|b| b.size()).sum::<u64>()
            + self.state.as_ref().map_or(0, |b| b.size())
    }

    /// Validates `bufs` once and makes every bind group the launch needs: the
    /// persistent handle for running many steps against the same buffers
    /// (decode loops over encoder K/V). Record each step with
    /// [`BoundAttention::record`]; write new queries into `bufs.q` between
    /// steps with `queue.write_buffer` or the caller's own kernels.
    pub fn bind(&self, bufs: &AttentionBuffers<'_>) -> Result<BoundAttention> {
        bufs.validate(&self.problem)?;
        let device = self.ctx.device();
        let lens = bufs.lens.unwrap_or(self.ctx.dummy_buffer());
        let mask = bufs.mask.unwrap_or(self.ctx.dummy_buffer());
        let state = self.state.as_ref().unwrap_or(self.ctx.dummy_rw_buffer());
        let bind = |params: &wgpu::Buffer, kernel: &Kernel| {
            kernel.bind(
                device,
                &[
                    params, bufs.q, bufs.k, bufs.v, lens, bufs.o, bufs.lse, state, mask,
                ],
            )
        };
        let launches = self
            .params
            .iter()
            .map(|params| bind(params, &self.kernel))
            .collect();
        let combine = self.combine.as_ref().map(|(kernel, grid)| {
            let params = self.params.last().expect("at least one launch");
            (kernel.clone(), bind(params, kernel), *grid)
        });
        Ok(BoundAttention {
            kernel: self.kernel.clone(),
            grid: self.plan.grid,
            launches,
            combine,
        })
    }

    /// Records the launch into the caller's encoder (integration API). Nothing
    /// is submitted.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
    ) -> Result<()> {
        self.record_timed(encoder, bufs, None)
    }

    /// As [`FlashAttention::record`], with optional timestamp writes around the pass.
    pub fn record_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttentionBuffers<'_>,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.bind(bufs)?.record_timed(encoder, timestamps);
        Ok(())
    }

    /// Simple API: uploads, runs, waits and downloads.
    pub fn run(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv_lens: Option<&[u32]>,
    ) -> Result<AttentionOutput> {
        self.run_with(q, k, v, &Masks::kv_lens(kv_lens))
    }

    /// [`FlashAttention::run`] with lengths, packed-sequence offsets, bias
    /// or mask, as the problem declares.
    pub fn run_with(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        masks: &Masks<'_>,
    ) -> Result<AttentionOutput> {
        let t = AttentionTensors::upload_with(self.ctx, &self.problem, q, k, v, masks)?;
        self.ctx.submit(|enc| self.record(enc, &t.buffers()))?;
        t.download(self.ctx)
    }
}

/// A [`FlashAttention`] launch with its buffers bound: validated once,
/// recorded any number of times with no allocation and no checks.
#[derive(Debug)]
pub struct BoundAttention {
    kernel: Arc<Kernel>,
    grid: (u32, u32),
    launches: Vec<wgpu::BindGroup>,
    combine: Option<(Arc<Kernel>, wgpu::BindGroup, (u32, u32))>,
}

impl BoundAttention {
    /// Records the launch (every key-range dispatch, then the split-KV combine
    /// if the plan has splits) into the caller's encoder, in one compute pass.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        self.record_timed(encoder, None);
    }

    /// As [`BoundAttention::record`], with optional timestamp writes around
    /// the pass.
    pub fn record_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("flash_attention"),
            timestamp_writes: timestamps,
        });
        // Dispatches in one pass are ordered and see each other's writes.
        for bind in &self.launches {
            self.kernel.dispatch_bound(&mut pass, bind, self.grid);
        }
        if let Some((kernel, bind, grid)) = &self.combine {
            kernel.dispatch_bound(&mut pass, bind, *grid);
        }
    }
}

/// Bind group 0 of `flash_forward.wgsl`: params, q, k, v, lens, o, lse,
/// state, mask: 8 storage buffers, WebGPU's default limit.
const FLASH_BINDINGS: [Binding; 9] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
];

impl Context {
    /// Runs the fused kernel on host data: `softmax(Q·Kᵀ·scale)·V` with LSE.
    /// Shapes as in [`AttentionProblem`]; `kv_lens` iff `problem.kv_lens`.
    pub fn attention(
        &self,
        problem: &AttentionProblem,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        kv_lens: Option<&[u32]>,
    ) -> Result<AttentionOutput> {
        FlashAttention::new(self, problem)?.run(q, k, v, kv_lens)
    }
}
