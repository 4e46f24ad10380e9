//! Which keys each query sees, and how much: key and query lengths, packed
//! (variable-length) batches, causal and sliding windows, additive bias and
//! boolean masks. The problem declares them ([`AttentionProblem`]); the data
//! comes in [`Masks`] (host) or the `lens` and `mask` buffers of
//! [`crate::AttentionBuffers`] (device).
//!
//! Semantics, per batch entry b, query row i and key j of its sequence
//! (indices local to the sequence):
//! - lengths: queries i ≥ q_lens\[b\] are padding and get O = 0, LSE = −∞;
//!   keys j ≥ kv_lens\[b\] are invisible;
//! - window: with nq, nk the entry's used lengths and off = nk − nq, key j is
//!   visible iff i + off − left ≤ j ≤ i + off + right (bottom-right aligned,
//!   as flash-attn ≥ 2.1); causal is left = ∞, right = 0;
//! - bias: added to scale·q·k before the softmax; −∞ hides the key;
//! - boolean mask: `true` (bit set) = attend, as PyTorch's `attn_mask`;
//! - a row with no visible key gets O = 0 and LSE = −∞, never NaN.

use crate::attention::AttentionProblem;
use crate::error::{Error, Result};

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
/// alignment with nq ≠ nk pass that boolean mask ([`Mask::Bool`]). Rows whose
/// band holds no key (causal with nq > nk: the first nq − nk queries) get
/// O = 0 and LSE = −∞, as in flash-attn.
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

    /// `[B|1, H|1, n_q|1]`: the shape without the key dimension.
    pub fn dims(self, p: &AttentionProblem) -> [usize; 3] {
        [
            if self.batch { p.batch } else { 1 },
            if self.heads { p.heads } else { 1 },
            if self.rows { p.n_q } else { 1 },
        ]
    }

    /// Rows (bias or mask rows of n_kv keys).
    pub fn rows(self, p: &AttentionProblem) -> usize {
        self.dims(p).iter().product()
    }

    /// Row strides (batch, head, query) in rows; 0 where broadcast.
    pub fn row_strides(self, p: &AttentionProblem) -> [usize; 3] {
        let [_, h, q] = self.dims(p);
        [
            if self.batch { h * q } else { 0 },
            if self.heads { q } else { 0 },
            usize::from(self.rows),
        ]
    }

    /// The row of (b, h, i).
    pub fn row(self, p: &AttentionProblem, b: usize, h: usize, i: usize) -> usize {
        let [sb, sh, sq] = self.row_strides(p);
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

/// An additive bias or a boolean mask on the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mask {
    /// Neither.
    #[default]
    None,
    /// f32 bias of this shape, added to scale·q·k (natural-log units); −∞
    /// allowed (the key is hidden), NaN and +∞ are not. Values below about
    /// −2.3·10³⁸ count as −∞ (the kernels work in log2 units).
    Bias(MaskShape),
    /// Boolean mask of this shape, `true` = attend, packed 32 keys per u32
    /// word: key j of a row is bit j % 32 of word j / 32, and each row starts
    /// a new word (⌈n_kv/32⌉ words per row). [`pack_mask`] packs `bool`s.
    Bool(MaskShape),
}

impl Mask {
    /// The shape, if any.
    pub fn shape(self) -> Option<MaskShape> {
        match self {
            Mask::None => None,
            Mask::Bias(s) | Mask::Bool(s) => Some(s),
        }
    }

    /// The `MASK` specialisation constant: 0 none, 1 bias, 2 boolean.
    pub fn code(self) -> u32 {
        match self {
            Mask::None => 0,
            Mask::Bias(_) => 1,
            Mask::Bool(_) => 2,
        }
    }

    /// u32 words per row: n_kv for a bias, ⌈n_kv/32⌉ for a boolean mask.
    pub fn row_words(self, p: &AttentionProblem) -> usize {
        match self {
            Mask::None => 0,
            Mask::Bias(_) => p.n_kv,
            Mask::Bool(_) => p.n_kv.div_ceil(32),
        }
    }

    /// u32 words (f32 values for a bias) of the whole bias or mask.
    pub fn words(self, p: &AttentionProblem) -> usize {
        self.shape().map_or(0, |s| s.rows(p) * self.row_words(p))
    }
}

/// Packs a row-major boolean mask (rows of `n_kv` keys) into the kernels'
/// bits: ⌈n_kv/32⌉ words per row, key j in bit j % 32 of word j / 32.
pub fn pack_mask(bools: &[bool], n_kv: usize) -> Vec<u32> {
    let words = n_kv.div_ceil(32);
    let rows = bools.len().checked_div(n_kv).unwrap_or(0);
    let mut out = vec![0u32; rows * words];
    for (r, row) in bools.chunks(n_kv.max(1)).take(rows).enumerate() {
        for (j, &on) in row.iter().enumerate() {
            out[r * words + j / 32] |= u32::from(on) << (j % 32);
        }
    }
    out
}

/// Whether key `j` of mask row `row` is set (bits as [`pack_mask`] packs them).
pub fn mask_bit(mask: &[u32], row_words: usize, row: usize, j: usize) -> bool {
    mask[row * row_words + j / 32] >> (j % 32) & 1 != 0
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
    /// `(VarLen, max_seqlen_q, max_seqlen_k)`.
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
/// that order, each only if the problem declares it.
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
    /// The layout for `p`.
    pub fn of(p: &AttentionProblem) -> Self {
        let mut at = 0;
        let mut take = |on: bool, n: usize| {
            on.then(|| {
                at += n;
                at - n
            })
        };
        let b = p.batch;
        let kv_lens = take(p.kv_lens, b);
        let q_lens = take(p.q_lens, b);
        let cu_q = take(p.varlen.is_some(), b + 1);
        let cu_k = take(p.varlen.is_some(), b + 1);
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
/// must be present exactly when the problem declares it.
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
    /// f32 `[B|1, H|1, n_q|1, n_kv]` (`Mask::Bias`).
    pub bias: Option<&'a [f32]>,
    /// Packed bits (`Mask::Bool`, see [`pack_mask`]).
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

    /// Checks every array against `p`: presence, counts, lengths within
    /// their sequences, cu_seqlens monotone from 0 to the packed totals with
    /// no sequence past n_q / n_kv, bias free of NaN and +∞.
    pub fn validate(&self, p: &AttentionProblem) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(Error::BadSeqLens { name, reason });
        let b = p.batch;
        let present = |name: &'static str, declared: bool, got: Option<usize>, want: usize| match (
            declared, got,
        ) {
            (true, None) => bad(
                name,
                format!("the problem declares {name} but none was given"),
            ),
            (false, Some(_)) => bad(
                name,
                format!("{name} given but the problem does not declare it (use its with_* setter)"),
            ),
            (true, Some(n)) if n != want => bad(name, format!("{n} entries, expected {want}")),
            _ => Ok(()),
        };
        match (p.kv_lens, self.kv_lens) {
            (true, l) if l.map_or(0, <[u32]>::len) != b => {
                return Err(Error::KvLensCount {
                    got: l.map_or(0, <[u32]>::len),
                    expected: b,
                })
            }
            _ => present("kv_lens", p.kv_lens, self.kv_lens.map(<[u32]>::len), b)?,
        }
        present("q_lens", p.q_lens, self.q_lens.map(<[u32]>::len), b)?;
        let varlen = p.varlen.is_some();
        present(
            "cu_seqlens_q",
            varlen,
            self.cu_seqlens_q.map(<[u32]>::len),
            b + 1,
        )?;
        present(
            "cu_seqlens_k",
            varlen,
            self.cu_seqlens_k.map(<[u32]>::len),
            b + 1,
        )?;
        if let Some(vl) = p.varlen {
            for (name, cu, total, max) in [
                ("cu_seqlens_q", self.cu_seqlens_q, vl.total_q, p.n_q),
                ("cu_seqlens_k", self.cu_seqlens_k, vl.total_kv, p.n_kv),
            ] {
                let cu = cu.unwrap_or_default();
                if cu[0] != 0 || cu[b] as usize != total {
                    return bad(
                        name,
                        format!(
                            "must start at 0 and end at the packed total {total}, got {} … {}",
                            cu[0], cu[b]
                        ),
                    );
                }
                if let Some(s) = cu.windows(2).position(|w| w[1] < w[0]) {
                    return bad(
                        name,
                        format!("decreases at entry {} ({} > {})", s + 1, cu[s], cu[s + 1]),
                    );
                }
                if let Some(s) = cu.windows(2).position(|w| (w[1] - w[0]) as usize > max) {
                    return bad(
                        name,
                        format!(
                            "sequence {s} has {} rows, past the declared maximum {max} (n_q / n_kv)",
                            cu[s + 1] - cu[s]
                        ),
                    );
                }
            }
        }
        // Lengths within each entry's allocated rows.
        let alloc =
            |cu: Option<&[u32]>, n: usize, e: usize| cu.map_or(n, |c| (c[e + 1] - c[e]) as usize);
        if let Some(l) = self.kv_lens {
            if let Some(e) = (0..b).find(|&e| l[e] as usize > alloc(self.cu_seqlens_k, p.n_kv, e)) {
                return Err(Error::KvLenTooLong {
                    batch: e,
                    got: l[e] as i64,
                    n_kv: alloc(self.cu_seqlens_k, p.n_kv, e),
                });
            }
        }
        if let Some(l) = self.q_lens {
            if let Some(e) = (0..b).find(|&e| l[e] as usize > alloc(self.cu_seqlens_q, p.n_q, e)) {
                return bad(
                    "q_lens",
                    format!(
                        "q_lens[{e}] = {} exceeds the entry's {} query rows",
                        l[e],
                        alloc(self.cu_seqlens_q, p.n_q, e)
                    ),
                );
            }
        }
        let words = p.mask.words(p);
        let shape = |s: Option<MaskShape>| s.map_or(String::new(), |s| s.to_string());
        match p.mask {
            Mask::Bias(s) => match self.bias {
                None => {
                    return bad(
                        "bias",
                        format!("the problem declares a bias {s} but none was given"),
                    )
                }
                Some(x) if x.len() != words => {
                    return Err(Error::SizeMismatch {
                        name: "bias",
                        got: x.len() as u64,
                        expected: words as u64,
                        shape: shape(Some(s)),
                    })
                }
                Some(x) => {
                    if let Some(i) = x.iter().position(|v| v.is_nan() || *v == f32::INFINITY) {
                        return Err(Error::NonFinite {
                            name: "bias",
                            index: i,
                            value: x[i],
                        });
                    }
                }
            },
            _ if self.bias.is_some() => {
                return bad(
                    "bias",
                    "bias given but the problem does not declare one (with_bias)".into(),
                )
            }
            _ => {}
        }
        match p.mask {
            Mask::Bool(s) => match self.mask {
                None => bad(
                    "mask",
                    format!("the problem declares a mask {s} but none was given"),
                ),
                Some(x) if x.len() != words => Err(Error::SizeMismatch {
                    name: "mask",
                    got: x.len() as u64,
                    expected: words as u64,
                    shape: format!(
                        "{} packed: {} u32 words per row",
                        shape(Some(s)),
                        p.mask.row_words(p)
                    ),
                }),
                _ => Ok(()),
            },
            _ if self.mask.is_some() => bad(
                "mask",
                "mask given but the problem does not declare one (with_bool_mask)".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The `lens` buffer's words in [`SeqLayout`] order (empty if none).
    pub fn lens_words(&self, p: &AttentionProblem) -> Vec<u32> {
        let mut out = Vec::with_capacity(SeqLayout::of(p).words);
        for a in [
            self.kv_lens,
            self.q_lens,
            self.cu_seqlens_q,
            self.cu_seqlens_k,
        ]
        .into_iter()
        .flatten()
        {
            out.extend_from_slice(a);
        }
        out
    }

    /// The `mask` buffer's words: bias bits or packed mask (empty if none).
    pub fn mask_words(&self) -> Vec<u32> {
        match (self.bias, self.mask) {
            (Some(b), _) => bytemuck::cast_slice(b).to_vec(),
            (None, Some(m)) => m.to_vec(),
            _ => Vec::new(),
        }
    }
}
