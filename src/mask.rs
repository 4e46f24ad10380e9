//! Which keys each query sees, and how much: key and query lengths, packed
//! (variable-length) batches, causal and sliding windows, additive bias and
//! boolean masks. These are declarations and host data only; the problem
//! ([`crate::AttentionProblem`]) says which apply and validates the data
//! ([`crate::AttentionProblem::validate_masks`]), and the device sees them
//! through the `lens` and `mask` buffers of [`crate::AttentionBuffers`].
//!
//! Semantics, per batch entry b, query row i and key j of its sequence
//! (indices local to the sequence):
//! - lengths: queries i ≥ q_lens\[b\] are padding and get O = 0, LSE = −∞;
//!   keys j ≥ kv_lens\[b\] are invisible;
//! - window: with nq, nk the entry's used lengths and off = nk − nq, key j is
//!   visible iff i + off − left ≤ j ≤ i + off + right (bottom-right aligned,
//!   as flash-attn ≥ 2.1); causal is left = ∞, right = 0, and causal together
//!   with a window caps the window's right side at 0 (flash-attn's meaning);
//! - bias: added to scale·q·k before the softmax; −∞ hides the key;
//! - boolean mask: `true` (bit set) = attend, as PyTorch's `attn_mask`; a
//!   bias and a boolean mask may be given together (the mask hides, the bias
//!   adds);
//! - a row with no visible key gets O = 0 and LSE = −∞, never NaN.

/// Longest sequence (n_q, n_kv, packed totals) the kernels index: window
/// arithmetic runs in i32 and uses 2^30 as "no limit".
pub const MAX_SEQ: usize = (1 << 30) - 1;

/// A band of keys around each query's bottom-right-aligned diagonal.
///
/// Query i of a sequence with nq used queries and nk used keys sees key j iff
/// `i + (nk − nq) − left ≤ j ≤ i + (nk − nq) + right`; `None` is unbounded.
/// [`Window::causal`] (left `None`, right 0) is flash-attn's `causal=True`:
/// the last query sees every key. PyTorch's `is_causal=True` aligns the mask
/// top-left instead (j ≤ i): the two agree only when nq = nk; for PyTorch's
/// alignment with nq ≠ nk pass that boolean mask. Rows whose band holds no
/// key (causal with nq > nk: the first nq − nk queries) get O = 0 and
/// LSE = −∞, as in flash-attn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Keys visible before the diagonal (`None`: all).
    pub left: Option<usize>,
    /// Keys visible after the diagonal (`None`: all).
    pub right: Option<usize>,
}

impl Window {
    /// Causal, bottom-right aligned: key j visible iff j ≤ i + n_kv − n_q.
    pub fn causal() -> Self {
        Self {
            left: None,
            right: Some(0),
        }
    }

    /// Sliding window of `left` keys before and `right` after the diagonal.
    pub fn sliding(left: usize, right: usize) -> Self {
        Self {
            left: Some(left),
            right: Some(right),
        }
    }

    /// This window with causal masking on top: the right side capped at 0
    /// (flash-attn's `causal=True` with `window_size`).
    pub fn and_causal(self) -> Self {
        Self {
            right: Some(0),
            ..self
        }
    }

    /// The visible keys `[lo, hi)` of query `i` in a sequence of `nq` used
    /// queries and `nk` used keys.
    pub fn keys(self, i: usize, nq: usize, nk: usize) -> (usize, usize) {
        let diag = i as i64 + nk as i64 - nq as i64;
        let lo = self.left.map_or(0, |l| diag - l as i64).clamp(0, nk as i64);
        let hi = self
            .right
            .map_or(nk as i64, |r| diag + r as i64 + 1)
            .clamp(lo, nk as i64);
        (lo as usize, hi as usize)
    }
}

/// Which dimensions of a bias or mask `[B|1, H|1, n_q|1, n_kv]` are full
/// (`true`) rather than broadcast (size 1). The key dimension is always full.
///
/// The methods take the problem's `[B, H, n_q]`
/// ([`crate::AttentionProblem::mask_dims`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MaskShape {
    /// Full batch dimension (else 1).
    pub batch: bool,
    /// Full head dimension (else 1).
    pub heads: bool,
    /// Full query dimension (else 1: a key padding mask).
    pub rows: bool,
}

impl MaskShape {
    /// `[B, H, n_q, n_kv]`.
    pub fn full() -> Self {
        Self {
            batch: true,
            heads: true,
            rows: true,
        }
    }

    /// All eight broadcast combinations.
    pub fn all() -> [Self; 8] {
        std::array::from_fn(|k| Self {
            batch: k & 1 != 0,
            heads: k & 2 != 0,
            rows: k & 4 != 0,
        })
    }

    /// `[B|1, H|1, n_q|1]` of a problem whose `[B, H, n_q]` is `dims`.
    pub fn dims(self, [b, h, q]: [usize; 3]) -> [usize; 3] {
        [
            if self.batch { b } else { 1 },
            if self.heads { h } else { 1 },
            if self.rows { q } else { 1 },
        ]
    }

    /// Rows (bias or mask rows of n_kv keys).
    pub fn rows(self, dims: [usize; 3]) -> usize {
        self.dims(dims).iter().product()
    }

    /// Row strides (batch, head, query) in rows; 0 where broadcast.
    pub fn row_strides(self, dims: [usize; 3]) -> [usize; 3] {
        let [_, h, q] = self.dims(dims);
        [
            if self.batch { h * q } else { 0 },
            if self.heads { q } else { 0 },
            usize::from(self.rows),
        ]
    }

    /// The row of (b, h, i).
    pub fn row(self, dims: [usize; 3], b: usize, h: usize, i: usize) -> usize {
        let [sb, sh, sq] = self.row_strides(dims);
        b * sb + h * sh + i * sq
    }
}

impl std::fmt::Display for MaskShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |on: bool, n: &str| if on { n.to_string() } else { "1".into() };
        write!(
            f,
            "[{}, {}, {}, n_kv]",
            d(self.batch, "B"),
            d(self.heads, "H"),
            d(self.rows, "n_q")
        )
    }
}

/// u32 words per row of a packed boolean mask of `n_kv` keys.
pub fn mask_row_words(n_kv: usize) -> usize {
    n_kv.div_ceil(32)
}

/// Packs a row-major boolean mask (rows of `n_kv` keys) into the kernels'
/// bits: ⌈n_kv/32⌉ words per row, key j in bit j % 32 of word j / 32, each
/// row starting a new word.
pub fn pack_mask(bools: &[bool], n_kv: usize) -> Vec<u32> {
    let words = mask_row_words(n_kv);
    let rows = bools.len().checked_div(n_kv).unwrap_or(0);
    let mut out = vec![0u32; rows * words];
    for (r, row) in bools.chunks(n_kv.max(1)).take(rows).enumerate() {
        for (j, &on) in row.iter().enumerate() {
            out[r * words + j / 32] |= u32::from(on) << (j % 32);
        }
    }
    out
}

/// A packed (variable-length) batch: the sequences lie back to back in
/// `[total, H, d]` tensors (BSHD with B = 1; [`crate::Layout::Bhsd`] gives
/// `[H, total, d]`), sequence b at rows `cu_seqlens[b] .. cu_seqlens[b+1]`,
/// as in flash-attn's varlen API. With varlen, the problem's `n_q`/`n_kv` are
/// the longest sequences (`max_seqlen_q/k`) and lse is `[H, total_q]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VarLen {
    /// Rows of the packed q and o (cu_seqlens_q\[B\]).
    pub total_q: usize,
    /// Rows of the packed k and v (cu_seqlens_k\[B\]).
    pub total_kv: usize,
}

impl VarLen {
    /// The packed totals and longest sequences from host `cu_seqlens`:
    /// `(VarLen, max_seqlen_q, max_seqlen_k)`. Decreasing entries count as
    /// empty sequences here; [`crate::AttentionProblem::validate_masks`]
    /// rejects them.
    pub fn from_cu_seqlens(cu_q: &[u32], cu_k: &[u32]) -> (Self, usize, usize) {
        let longest = |cu: &[u32]| {
            cu.windows(2)
                .map(|w| w[1].saturating_sub(w[0]) as usize)
                .max()
                .unwrap_or(0)
        };
        let last = |cu: &[u32]| cu.last().map_or(0, |&x| x as usize);
        (
            Self {
                total_q: last(cu_q),
                total_kv: last(cu_k),
            },
            longest(cu_q),
            longest(cu_k),
        )
    }
}

/// Offsets (in u32 words) of the arrays of the `lens` buffer: key lengths
/// `[B]`, query lengths `[B]`, cu_seqlens_q `[B+1]`, cu_seqlens_k `[B+1]`, in
/// that order, each only if the problem declares it
/// ([`crate::AttentionProblem::seq_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqLayout {
    /// Offset of kv_lens.
    pub kv_lens: Option<usize>,
    /// Offset of q_lens.
    pub q_lens: Option<usize>,
    /// Offset of cu_seqlens_q.
    pub cu_q: Option<usize>,
    /// Offset of cu_seqlens_k.
    pub cu_k: Option<usize>,
    /// Words in all (0: no `lens` buffer).
    pub words: usize,
}

impl SeqLayout {
    /// The layout for a batch of `batch` entries with the arrays declared.
    pub fn new(batch: usize, kv_lens: bool, q_lens: bool, packed: bool) -> Self {
        let mut at = 0;
        let mut take = |on: bool, n: usize| {
            on.then(|| {
                at += n;
                at - n
            })
        };
        let kv_lens = take(kv_lens, batch);
        let q_lens = take(q_lens, batch);
        let cu_q = take(packed, batch + 1);
        let cu_k = take(packed, batch + 1);
        Self {
            kv_lens,
            q_lens,
            cu_q,
            cu_k,
            words: at,
        }
    }
}

/// Host data for everything a problem declares beyond q, k and v. Each field
/// must be present exactly when the problem declares it
/// ([`crate::AttentionProblem::validate_masks`] checks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Masks<'a> {
    /// Key lengths `[B]` (`with_kv_lens`): keys at or past them are invisible.
    pub kv_lens: Option<&'a [u32]>,
    /// Query lengths `[B]` (`with_q_lens`): rows at or past them get O = 0.
    pub q_lens: Option<&'a [u32]>,
    /// `[B+1]`, starting at 0, non-decreasing, ending at total_q (`with_varlen`).
    pub cu_seqlens_q: Option<&'a [u32]>,
    /// `[B+1]`, starting at 0, non-decreasing, ending at total_kv.
    pub cu_seqlens_k: Option<&'a [u32]>,
    /// f32 `[B|1, H|1, n_q|1, n_kv]` (`with_bias`).
    pub bias: Option<&'a [f32]>,
    /// Packed bits (`with_bool_mask`, see [`pack_mask`]).
    pub mask: Option<&'a [u32]>,
}

impl<'a> Masks<'a> {
    /// Only key lengths (or nothing).
    pub fn kv_lens(kv_lens: Option<&'a [u32]>) -> Self {
        Self {
            kv_lens,
            ..Self::default()
        }
    }

    /// The `lens` buffer's words in [`SeqLayout`] order (empty if none).
    pub fn lens_words(&self) -> Vec<u32> {
        [
            self.kv_lens,
            self.q_lens,
            self.cu_seqlens_q,
            self.cu_seqlens_k,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .copied()
        .collect()
    }

    /// The `mask` buffer's words: the bias's f32 bits, then the packed mask
    /// (empty if neither).
    pub fn mask_words(&self) -> Vec<u32> {
        let bias: &[u32] = bytemuck::cast_slice(self.bias.unwrap_or_default());
        [bias, self.mask.unwrap_or_default()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_cu_seqlens_gives_totals_and_longest() {
        let (vl, mq, mk) = VarLen::from_cu_seqlens(&[0, 3, 3, 10], &[0, 5, 6, 6]);
        assert_eq!((vl.total_q, vl.total_kv, mq, mk), (10, 6, 7, 5));
        let (vl, mq, mk) = VarLen::from_cu_seqlens(&[0], &[0]);
        assert_eq!((vl.total_q, vl.total_kv, mq, mk), (0, 0, 0, 0));
        // A decreasing entry is an empty sequence here (validation rejects it).
        let (_, mq, _) = VarLen::from_cu_seqlens(&[0, 4, 2], &[0, 1, 2]);
        assert_eq!(mq, 4);
    }

    #[test]
    fn causal_and_sliding_windows_are_bottom_right_aligned() {
        // 2 queries, 5 keys: the last query sees every key.
        assert_eq!(Window::causal().keys(1, 2, 5), (0, 5));
        assert_eq!(Window::causal().keys(0, 2, 5), (0, 4));
        // More queries than keys: the first rows see nothing.
        assert_eq!(Window::causal().keys(0, 5, 2), (0, 0));
        assert_eq!(Window::sliding(1, 1).keys(2, 5, 5), (1, 4));
        assert_eq!(Window::sliding(1, 3).and_causal(), Window::sliding(1, 0));
        assert_eq!(Window::causal().and_causal(), Window::causal());
    }

    #[test]
    fn bits_pack_32_keys_per_word_and_rows_start_new_words() {
        let mut row = vec![false; 33];
        row[0] = true;
        row[31] = true;
        row[32] = true;
        let bits = pack_mask(&[row.clone(), row].concat(), 33);
        assert_eq!(bits, vec![0x8000_0001, 1, 0x8000_0001, 1]);
        assert_eq!(mask_row_words(33), 2);
    }

    #[test]
    fn broadcast_strides_are_zero() {
        let dims = [2, 3, 4];
        let s = MaskShape {
            batch: false,
            heads: true,
            rows: true,
        };
        assert_eq!(s.dims(dims), [1, 3, 4]);
        assert_eq!(s.row_strides(dims), [0, 4, 1]);
        assert_eq!(s.row(dims, 1, 2, 3), 11);
        assert_eq!(MaskShape::default().rows(dims), 1);
        assert_eq!(MaskShape::full().rows(dims), 24);
        assert_eq!(MaskShape::all().len(), 8);
    }

    #[test]
    fn seq_layout_packs_declared_arrays_in_order() {
        let l = SeqLayout::new(3, true, false, true);
        assert_eq!(
            (l.kv_lens, l.q_lens, l.cu_q, l.cu_k, l.words),
            (Some(0), None, Some(3), Some(7), 11)
        );
        assert_eq!(SeqLayout::new(3, false, false, false).words, 0);
    }
}
