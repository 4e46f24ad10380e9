//! The problem without data: shapes, storage type, layouts and the masks
//! declared. [`AttentionProblem::validate`] (in `validate.rs`) turns every
//! inconsistency into a typed error before anything touches the device.

mod validate;

pub use validate::check_finite;

use crate::dtype::Dtype;
use crate::layout::Layout;
use crate::mask::{mask_row_words, MaskShape, SeqLayout, VarLen, Window};

/// Largest head dim (of Q/K or of V) the kernels support.
pub const MAX_HEAD_DIM: usize = 256;

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
    /// A sliding window, bottom-right aligned ([`Window`]).
    pub window: Option<Window>,
    /// Causal masking, bottom-right aligned; with `window`, caps its right
    /// side at 0 ([`AttentionProblem::key_window`]).
    pub causal: bool,
    /// An additive f32 bias on the scores, of this broadcast shape.
    pub bias: Option<MaskShape>,
    /// A boolean mask on the scores (`true` = attend), of this broadcast
    /// shape, packed as [`crate::pack_mask`] packs it.
    pub bool_mask: Option<MaskShape>,
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
            causal: false,
            bias: None,
            bool_mask: None,
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

    /// Causal masking, bottom-right aligned (see [`Window::causal`]). With
    /// a window too, the window's right side is capped at 0
    /// ([`Window::and_causal`]), as flash-attn's `causal` with `window_size`.
    pub fn with_causal(mut self) -> Self {
        self.causal = true;
        self
    }

    /// A sliding window (combines with [`AttentionProblem::with_causal`]).
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// An additive f32 bias of this broadcast shape (combines with a
    /// boolean mask).
    pub fn with_bias(mut self, shape: MaskShape) -> Self {
        self.bias = Some(shape);
        self
    }

    /// A boolean mask of this broadcast shape (`true` = attend; combines
    /// with a bias).
    pub fn with_bool_mask(mut self, shape: MaskShape) -> Self {
        self.bool_mask = Some(shape);
        self
    }

    /// The window the kernels apply: the declared one, with its right side
    /// capped at 0 when causal; causal alone is [`Window::causal`].
    pub fn key_window(&self) -> Option<Window> {
        match (self.window, self.causal) {
            (w, false) => w,
            (None, true) => Some(Window::causal()),
            (Some(w), true) => Some(w.and_causal()),
        }
    }

    /// `[B, H, n_q]`, the dimensions a bias or mask broadcasts over.
    pub fn mask_dims(&self) -> [usize; 3] {
        [self.batch, self.heads, self.n_q]
    }

    /// f32 values of the declared bias (0 if none).
    pub fn bias_words(&self) -> usize {
        self.bias
            .map_or(0, |s| s.rows(self.mask_dims()) * self.n_kv)
    }

    /// u32 words of the declared boolean mask (0 if none).
    pub fn bool_mask_words(&self) -> usize {
        self.bool_mask
            .map_or(0, |s| s.rows(self.mask_dims()) * mask_row_words(self.n_kv))
    }

    /// u32 words of the `mask` binding: the bias, then the boolean mask.
    pub fn mask_words(&self) -> usize {
        self.bias_words() + self.bool_mask_words()
    }

    /// Where each array of the `lens` binding starts.
    pub fn seq_layout(&self) -> SeqLayout {
        SeqLayout::new(self.batch, self.kv_lens, self.q_lens, self.varlen.is_some())
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
        self.q_lens
            || self.varlen.is_some()
            || self.key_window().is_some()
            || self.bias.is_some()
            || self.bool_mask.is_some()
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
    /// Bytes of K and V as stored (in the storage type): what a forward
    /// pass reads at least once, the numerator of K/V bandwidth figures.
    pub fn kv_bytes(&self) -> f64 {
        ((self.k_len() + self.v_len()) * self.dtype.bytes()) as f64
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
}
