//! The CPU reference: f64 accumulation, scores materialised row by row, the
//! same semantics as the kernels (GQA, key and query lengths, packed
//! sequences, causal and sliding windows, bias and boolean masks, alone or together, scale, LSE, empty rows).
//! Written to be trusted by reading, parallel over rows with rayon.

use rayon::prelude::*;

use crate::error::Result;
use crate::layer::{LayerConfig, LayerWeights};
use crate::mask::{mask_row_words, Masks};
use crate::problem::AttentionProblem;
use crate::probs::ProbHeads;

/// O and LSE in the kernels' layouts: o `[B, n_q, H, d_v]`, lse `[B, H, n_q]`
/// (natural log, −∞ for rows with no visible key).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceOutput<T = f64> {
    /// Attention output.
    pub o: Vec<T>,
    /// Log-sum-exp of the scaled scores.
    pub lse: Vec<T>,
}

/// The arithmetic the reference is written in: f64 for the reference proper,
/// f32 for a CPU naive baseline in storage precision.
pub trait Real:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::DivAssign
    + std::iter::Sum
{
    /// Conversion from storage.
    fn of(x: f32) -> Self;
    /// Conversion to storage.
    fn to_f32(self) -> f32;
    /// Zero.
    const ZERO: Self;
    /// −∞.
    const NEG_INF: Self;
    /// eˣ.
    fn exp(self) -> Self;
    /// ln x.
    fn ln(self) -> Self;
    /// The larger of two.
    fn max(self, other: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn of(x: f32) -> Self {
                x as $t
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
            const ZERO: Self = 0.0;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
real!(f32);
real!(f64);

/// `softmax(Q·Kᵀ·scale)·V` for every (batch, query, head) row, accumulated in f64.
pub fn attention(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_lens: Option<&[u32]>,
) -> Result<ReferenceOutput> {
    attention_in::<f64>(p, q, k, v, &Masks::kv_lens(kv_lens))
}

/// [`attention`] with everything the problem declares: query and key
/// lengths, packed sequences, window, bias, boolean mask (see [`crate::mask`]
/// for the semantics).
pub fn attention_masked(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    masks: &Masks<'_>,
) -> Result<ReferenceOutput> {
    attention_in::<f64>(p, q, k, v, masks)
}

/// The same computation in f32, in the naive order (full dot products, max,
/// sum, then P·V): the error a straightforward f32 implementation makes.
pub fn attention_f32(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    masks: &Masks<'_>,
) -> Result<ReferenceOutput<f32>> {
    attention_in::<f32>(p, q, k, v, masks)
}

/// One batch entry's sequences: first rows in the (packed) q and k, rows
/// allocated, rows used.
struct Entry {
    q0: usize,
    k0: usize,
    nq: usize,
    nq_used: usize,
    nk: usize,
}

fn entry(p: &AttentionProblem, m: &Masks<'_>, b: usize) -> Entry {
    let span = |cu: Option<&[u32]>, n: usize| {
        cu.map_or((0, n), |c| (c[b] as usize, (c[b + 1] - c[b]) as usize))
    };
    let (q0, nq) = span(m.cu_seqlens_q, p.n_q);
    let (k0, nk_alloc) = span(m.cu_seqlens_k, p.n_kv);
    Entry {
        q0,
        k0,
        nq,
        nq_used: m.q_lens.map_or(nq, |l| (l[b] as usize).min(nq)),
        nk: m
            .kv_lens
            .map_or(nk_alloc, |l| (l[b] as usize).min(nk_alloc)),
    }
}

/// [`attention_masked`] in the arithmetic `T`.
pub fn attention_in<T: Real>(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    masks: &Masks<'_>,
) -> Result<ReferenceOutput<T>> {
    p.validate()?;
    p.validate_inputs(q, k, v, masks)?;
    let (h_q, h_kv, dv) = (p.heads, p.kv_heads, p.head_dim_v);
    let group = h_q / h_kv;
    let packed = p.varlen.is_some();
    let [_, _, vs, os] = p.tensor_strides();
    // Every (batch entry, local query row, head) with a row allocated.
    let rows: Vec<(usize, usize, usize)> = (0..p.batch)
        .flat_map(|b| {
            let e = entry(p, masks, b);
            (0..e.nq).flat_map(move |i| (0..h_q).map(move |h| (b, i, h)))
        })
        .collect();
    let per_row: Vec<(Vec<T>, T)> = rows
        .par_iter()
        .map(|&(b, i, h)| {
            let e = entry(p, masks, b);
            let hk = h / group;
            let mut out = vec![T::ZERO; dv];
            let Some((scores, max, sum)) = row_softmax::<T>(p, q, k, masks, b, i, h) else {
                return (out, T::NEG_INF);
            };
            for &(j, s) in &scores {
                let w = (s - max).exp();
                let vrow = &v[b * vs[0] + (e.k0 + j) * vs[1] + hk * vs[2]..][..dv];
                for (o, &x) in out.iter_mut().zip(vrow) {
                    *o += w * T::of(x);
                }
            }
            out.iter_mut().for_each(|o| *o /= sum);
            (out, max + sum.ln())
        })
        .collect();
    let mut o = vec![T::ZERO; p.o_len()];
    let mut lse = vec![T::ZERO; p.lse_len()];
    for (&(b, i, h), (row, l)) in rows.iter().zip(per_row) {
        let e = entry(p, masks, b);
        let t = e.q0 + i;
        o[b * os[0] + t * os[1] + h * os[2]..][..dv].copy_from_slice(&row);
        lse[p.lse_index(if packed { 0 } else { b }, h, t)] = l;
    }
    Ok(ReferenceOutput { o, lse })
}

/// The visible keys' scaled scores (with the bias) of query row i of head h
/// in batch entry b, their max and Σ exp(s − max); `None` for a row with no
/// visible key (padding, empty range, everything masked).
#[allow(clippy::type_complexity)]
fn row_softmax<T: Real>(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    masks: &Masks<'_>,
    b: usize,
    i: usize,
    h: usize,
) -> Option<(Vec<(usize, T)>, T, T)> {
    let e = entry(p, masks, b);
    if i >= e.nq_used {
        return None;
    }
    let d = p.head_dim;
    let hk = h / (p.heads / p.kv_heads);
    let scale = T::of(p.scale());
    let [qs, ks, _, _] = p.tensor_strides();
    let dims = p.mask_dims();
    let bits_words = mask_row_words(p.n_kv);
    let (lo, hi) = p
        .key_window()
        .map_or((0, e.nk), |w| w.keys(i, e.nq_used, e.nk));
    let bias_row = p.bias.map(|s| s.row(dims, b, h, i) * p.n_kv);
    let bits_row = p.bool_mask.map(|s| s.row(dims, b, h, i) * bits_words);
    let qrow = &q[b * qs[0] + (e.q0 + i) * qs[1] + h * qs[2]..][..d];
    // (key, score) of every visible key.
    let scores: Vec<(usize, T)> = (lo..hi)
        .filter_map(|j| {
            let hidden = bits_row
                .zip(masks.mask)
                .is_some_and(|(r, x)| x[r + j / 32] >> (j % 32) & 1 == 0);
            let bias = bias_row.zip(masks.bias).map_or(0.0, |(r, x)| x[r + j]);
            if hidden || bias == f32::NEG_INFINITY {
                return None;
            }
            let krow = &k[b * ks[0] + (e.k0 + j) * ks[1] + hk * ks[2]..][..d];
            let dot: T = qrow
                .iter()
                .zip(krow)
                .map(|(&a, &b)| T::of(a) * T::of(b))
                .sum();
            Some((j, dot * scale + T::of(bias)))
        })
        .collect();
    if scores.is_empty() {
        return None;
    }
    let max = scores.iter().map(|s| s.1).fold(T::NEG_INF, T::max);
    let sum: T = scores.iter().map(|&(_, s)| (s - max).exp()).sum();
    Some((scores, max, sum))
}

/// The attention probabilities P = softmax(Q·Kᵀ·scale + bias) with every
/// mask, length and window applied, in f64: `[B, H', n_q, n_kv]` for the
/// heads `which` selects (H' of them), or `[B, n_q, n_kv]` averaged over all
/// H heads. Masked keys, padded query rows and rows with no visible key are
/// 0. Padded batches only (no packed sequences).
pub fn probabilities(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    masks: &Masks<'_>,
    which: &ProbHeads,
) -> Result<Vec<f64>> {
    probabilities_in::<f64>(p, q, k, masks, which)
}

/// [`probabilities`] in the arithmetic `T` (f32: the naive baseline of the
/// tolerance rule).
pub fn probabilities_in<T: Real>(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    masks: &Masks<'_>,
    which: &ProbHeads,
) -> Result<Vec<T>> {
    p.validate()?;
    let v = vec![0.0f32; p.v_len()];
    p.validate_inputs(q, k, &v, masks)?;
    let heads = which.validate(p)?;
    let (nq, nk) = (p.n_q, p.n_kv);
    let row = |b: usize, i: usize, h: usize| -> Vec<T> {
        let mut out = vec![T::ZERO; nk];
        if let Some((scores, max, sum)) = row_softmax::<T>(p, q, k, masks, b, i, h) {
            for (j, s) in scores {
                out[j] = (s - max).exp() / sum;
            }
        }
        out
    };
    let planes: Vec<(usize, Vec<usize>)> = (0..p.batch)
        .flat_map(|b| match which {
            ProbHeads::Mean => vec![(b, (0..p.heads).collect())],
            _ => heads.iter().map(|&h| (b, vec![h as usize])).collect(),
        })
        .collect();
    let out: Vec<Vec<T>> = planes
        .par_iter()
        .map(|(b, hs)| {
            let mut plane = vec![T::ZERO; nq * nk];
            let n = T::of(hs.len() as f32);
            for i in 0..nq {
                for &h in hs {
                    for (o, x) in plane[i * nk..][..nk].iter_mut().zip(row(*b, i, h)) {
                        *o += x / n;
                    }
                }
            }
            plane
        })
        .collect();
    Ok(out.concat())
}

/// y = x·Wᵀ + b in `T`, W `[out, inp]`, over the rows of x.
fn linear<T: Real>(x: &[T], w: &[f32], b: Option<&[f32]>, out: usize, inp: usize) -> Vec<T> {
    x.par_chunks(inp.max(1))
        .flat_map_iter(|row| {
            (0..out).map(move |n| {
                let dot: T = row
                    .iter()
                    .zip(&w[n * inp..][..inp])
                    .map(|(&a, &b)| a * T::of(b))
                    .sum();
                dot + b.map_or(T::ZERO, |b| T::of(b[n]))
            })
        })
        .collect()
}

/// The cross-attention layer (`xattn::CrossAttention`) in f64: projections,
/// attention with optional key lengths, output projection, optional gate.
/// x `[B, n_q, E]`, context `[B, n_kv, E_kv]`; y `[B, n_q, E]`.
#[allow(clippy::too_many_arguments)]
pub fn cross_attention_layer(
    c: &LayerConfig,
    w: &LayerWeights,
    x: &[f32],
    context: &[f32],
    batch: usize,
    n_q: usize,
    n_kv: usize,
    kv_lens: Option<&[u32]>,
) -> Result<Vec<f64>> {
    cross_attention_layer_in::<f64>(c, w, x, context, batch, n_q, n_kv, kv_lens)
}

/// [`cross_attention_layer`] in the arithmetic `T` (f32: the naive baseline
/// of the tolerance rule). Everything the device stores is rounded to the
/// config's storage type where the device stores it: x, the context and
/// the weights on upload (biases stay f32), Q, K and V between the
/// projections and the attention, O before the output projection, y.
#[allow(clippy::too_many_arguments)]
pub fn cross_attention_layer_in<T: Real>(
    c: &LayerConfig,
    w: &LayerWeights,
    x: &[f32],
    context: &[f32],
    batch: usize,
    n_q: usize,
    n_kv: usize,
    kv_lens: Option<&[u32]>,
) -> Result<Vec<T>> {
    let l = LayerRef::<T>::project(c, w, x, context, batch, n_q, n_kv, kv_lens)?;
    let r = attention_in::<T>(&l.problem, &l.q, &l.k, &l.v, &Masks::kv_lens(kv_lens))?;
    let dt = c.dtype;
    let o = l.stored(&l.to(r.o));
    let wo = dt.round_all(w.w_o.clone());
    let y = linear(&o, &wo, w.b_o.as_deref(), c.embed, c.heads * c.head_dim());
    let y = match c.gate {
        None => y,
        Some(a) => {
            let g = T::of(a.tanh());
            y.into_iter().zip(&l.x).map(|(y, &x)| x + g * y).collect()
        }
    };
    Ok(if dt == crate::Dtype::F32 {
        y
    } else {
        l.stored(&l.to(y))
    })
}

/// The attention probabilities inside the cross-attention layer
/// (`CrossAttention::forward_probs`), in the arithmetic `T`: Q and K
/// projected and stored as [`cross_attention_layer_in`] does, then
/// [`probabilities_in`].
#[allow(clippy::too_many_arguments)]
pub fn cross_attention_layer_probs_in<T: Real>(
    c: &LayerConfig,
    w: &LayerWeights,
    x: &[f32],
    context: &[f32],
    batch: usize,
    n_q: usize,
    n_kv: usize,
    kv_lens: Option<&[u32]>,
    which: &ProbHeads,
) -> Result<Vec<T>> {
    let l = LayerRef::<T>::project(c, w, x, context, batch, n_q, n_kv, kv_lens)?;
    probabilities_in::<T>(&l.problem, &l.q, &l.k, &Masks::kv_lens(kv_lens), which)
}

/// The layer's stored x and its Q, K, V (rounded to the storage type), and
/// the attention problem.
struct LayerRef<T> {
    x: Vec<T>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    problem: AttentionProblem,
    dtype: crate::Dtype,
}

impl<T: Real> LayerRef<T> {
    #[allow(clippy::too_many_arguments)]
    fn project(
        c: &LayerConfig,
        w: &LayerWeights,
        x: &[f32],
        context: &[f32],
        batch: usize,
        n_q: usize,
        n_kv: usize,
        kv_lens: Option<&[u32]>,
    ) -> Result<Self> {
        w.validate(c)?;
        let d = c.head_dim();
        let (hd, kvd, dt) = (c.heads * d, c.kv_heads * d, c.dtype);
        let half = |v: &[f32]| dt.round_all(v.to_vec());
        let mut l = Self {
            x: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            problem: AttentionProblem::new(batch, c.heads, n_q, n_kv, d)
                .with_kv_heads(c.kv_heads)
                .with_kv_lens(kv_lens.is_some()),
            dtype: dt,
        };
        if let Some(s) = c.scale {
            l.problem = l.problem.with_scale(s);
        }
        let (xt, ct) = (l.stored(x), l.stored(context));
        l.q = l.to(linear(&xt, &half(&w.w_q), w.b_q.as_deref(), hd, c.embed));
        l.k = l.to(linear(
            &ct,
            &half(&w.w_k),
            w.b_k.as_deref(),
            kvd,
            c.kv_embed,
        ));
        l.v = l.to(linear(
            &ct,
            &half(&w.w_v),
            w.b_v.as_deref(),
            kvd,
            c.kv_embed,
        ));
        l.x = xt;
        Ok(l)
    }

    /// f32 values as the device stores them, computed on in T.
    fn stored(&self, v: &[f32]) -> Vec<T> {
        v.iter().map(|&a| T::of(self.dtype.round(a))).collect()
    }

    /// T values stored in the storage type.
    fn to(&self, v: Vec<T>) -> Vec<f32> {
        v.into_iter()
            .map(|a| self.dtype.round(a.to_f32()))
            .collect()
    }
}
