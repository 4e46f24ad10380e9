//! The params struct of the fused family, mirrored field by field in WGSL
//! (`shaders/flash_common.wgsl`); `tests/shaders.rs` checks every offset
//! against naga's reflection of the WGSL struct.

use crate::mask::{mask_row_words, MaskShape};
use crate::plan::FlashPlan;
use crate::problem::AttentionProblem;

/// Uniform parameters of the fused family (`flash_forward.wgsl`,
/// `flash_decode.wgsl`, `flash_simd.wgsl`, `split_combine.wgsl`), mirrored
/// field by field by `Params` in `flash_common.wgsl`; the host precomputes
/// every stride and offset. Strides are in elements.
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
    /// [`FlashParams::FIRST_LAUNCH`] | [`FlashParams::LAST_LAUNCH`] bits.
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
    /// Bias stride between batch entries (f32s; 0: broadcast). The bias
    /// starts at word 0 of the `mask` binding.
    pub bias_stride_b: u32,
    /// Bias stride between heads.
    pub bias_stride_h: u32,
    /// Bias stride between query rows.
    pub bias_stride_q: u32,
    /// First word of the boolean mask in the `mask` binding (after the bias).
    pub bits_at: u32,
    /// Boolean-mask stride between batch entries (u32 words; 0: broadcast).
    pub bits_stride_b: u32,
    /// Boolean-mask stride between heads.
    pub bits_stride_h: u32,
    /// Boolean-mask stride between query rows.
    pub bits_stride_q: u32,
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
    /// Always 1: a loop count the shader multiplies by it is one the
    /// driver's compiler cannot see, so it keeps the loop rather than
    /// unrolling it (the simd kernel's prologue and epilogue).
    pub one: u32,
    /// 1: a query block's heads run in consecutive workgroups
    /// ([`crate::plan::FlashPlan::heads_inner`]); 0: its query blocks.
    pub heads_inner: u32,
    /// Padding to a multiple of 16 bytes.
    pub _pad2: u32,
}

impl FlashParams {
    /// `flags` bit: the first launch of a key range (the softmax state starts
    /// empty rather than loaded from `state`).
    pub const FIRST_LAUNCH: u32 = 1;
    /// `flags` bit: the last launch of a key range (O and LSE, or the split's
    /// partial state, are written).
    pub const LAST_LAUNCH: u32 = 2;
    /// `seq_flags` bit: key lengths are bound.
    pub const SEQ_KV_LENS: u32 = 1;
    /// `seq_flags` bit: query lengths are bound.
    pub const SEQ_Q_LENS: u32 = 2;
    /// `seq_flags` bit: cu_seqlens_q/k are bound (packed batch).
    pub const SEQ_VARLEN: u32 = 4;
    /// Window side with no limit (`win_left`, `win_right`).
    pub const UNBOUNDED: u32 = 1 << 30;

    /// Parameters for the problem's layouts (contiguous BSHD or BHSD), for
    /// one launch covering the whole of each split.
    pub fn new(p: &AttentionProblem, plan: &FlashPlan) -> Self {
        let (h, hk) = (p.heads as u32, p.kv_heads as u32);
        // Rows of the stored q (the packed total for varlen).
        let nq = p.q_dims().1 as u32;
        let packed = p.varlen.is_some();
        let [qs, ks, vs, os] = p.tensor_strides().map(|st| st.map(|x| x as u32));
        let seq = p.seq_layout();
        let at = |o: Option<usize>| o.unwrap_or(0) as u32;
        let win = |w: Option<usize>| {
            w.map_or(Self::UNBOUNDED, |w| w.min(Self::UNBOUNDED as usize) as u32)
        };
        let dims = p.mask_dims();
        let strides = |s: Option<MaskShape>, row_words: usize| {
            s.map_or([0; 3], |s| {
                s.row_strides(dims).map(|x| (x * row_words) as u32)
            })
        };
        let bs = strides(p.bias, p.n_kv);
        let ms = strides(p.bool_mask, mask_row_words(p.n_kv));
        let window = p.key_window();
        Self {
            batch: p.batch as u32,
            heads: h,
            kv_heads: hk,
            n_q: p.n_q as u32,
            n_kv: p.n_kv as u32,
            seq_flags: (u32::from(p.kv_lens) * Self::SEQ_KV_LENS)
                | (u32::from(p.q_lens) * Self::SEQ_Q_LENS)
                | (u32::from(packed) * Self::SEQ_VARLEN),
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
            flags: Self::FIRST_LAUNCH | Self::LAST_LAUNCH,
            splits: plan.splits,
            split_keys: plan.split_keys,
            kv_lens_at: at(seq.kv_lens),
            q_lens_at: at(seq.q_lens),
            cu_q_at: at(seq.cu_q),
            cu_k_at: at(seq.cu_k),
            win_left: win(window.and_then(|w| w.left)),
            win_right: win(window.and_then(|w| w.right)),
            bias_stride_b: bs[0],
            bias_stride_h: bs[1],
            bias_stride_q: bs[2],
            bits_at: p.bias_words() as u32,
            bits_stride_b: ms[0],
            bits_stride_h: ms[1],
            bits_stride_q: ms[2],
            lse_stride_b: if packed { 0 } else { h * p.n_q as u32 },
            lse_stride_h: nq,
            lse_rows: p.lse_len() as u32,
            grid_stride: plan.grid_stride,
            grid_rows: plan.grid_rows,
            one: 1,
            heads_inner: u32::from(plan.heads_inner),
            _pad2: 0,
        }
    }
}
