//! The CPU reference: f64 accumulation, scores materialised row by row, the
//! same semantics as the kernels (GQA, key lengths, scale, LSE, empty rows).
//! Written to be trusted by reading, parallel over rows with rayon.

use rayon::prelude::*;

use crate::attention::{validate_host, AttentionProblem};
use crate::error::Result;

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
    attention_in::<f64>(p, q, k, v, kv_lens)
}

/// The same computation in f32, in the naive order (full dot products, max,
/// sum, then P·V): the error a straightforward f32 implementation makes.
pub fn attention_f32(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_lens: Option<&[u32]>,
) -> Result<ReferenceOutput<f32>> {
    attention_in::<f32>(p, q, k, v, kv_lens)
}

/// [`attention`] in the arithmetic `T`.
pub fn attention_in<T: Real>(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_lens: Option<&[u32]>,
) -> Result<ReferenceOutput<T>> {
    p.validate()?;
    validate_host(p, q, k, v, kv_lens)?;
    let (h_q, h_kv, d, dv) = (p.heads, p.kv_heads, p.head_dim, p.head_dim_v);
    let group = h_q / h_kv;
    let scale = T::of(p.scale());
    let rows = p.batch * p.n_q * h_q;
    // Element strides (batch, row, head) of each tensor in its layout.
    let qs = p.layout.strides(p.n_q, h_q, d);
    let ks = p.layout.strides(p.n_kv, h_kv, d);
    let vs = p.layout.strides(p.n_kv, h_kv, dv);
    let os = p.out_layout.strides(p.n_q, h_q, dv);
    let per_row: Vec<(Vec<T>, T)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            // Row r is (b, i, h), in BSHD order.
            let h = r % h_q;
            let i = (r / h_q) % p.n_q;
            let b = r / (h_q * p.n_q);
            let hk = h / group;
            let n_valid = kv_lens.map_or(p.n_kv, |l| l[b] as usize).min(p.n_kv);
            let qrow = &q[b * qs[0] + i * qs[1] + h * qs[2]..][..d];
            let scores: Vec<T> = (0..n_valid)
                .map(|j| {
                    let krow = &k[b * ks[0] + j * ks[1] + hk * ks[2]..][..d];
                    let dot: T = qrow
                        .iter()
                        .zip(krow)
                        .map(|(&a, &b)| T::of(a) * T::of(b))
                        .sum();
                    dot * scale
                })
                .collect();
            let mut out = vec![T::ZERO; dv];
            if n_valid == 0 {
                return (out, T::NEG_INF);
            }
            let max = scores.iter().copied().fold(T::NEG_INF, T::max);
            let weights: Vec<T> = scores.iter().map(|&s| (s - max).exp()).collect();
            let sum: T = weights.iter().copied().sum();
            for (j, &w) in weights.iter().enumerate() {
                let vrow = &v[b * vs[0] + j * vs[1] + hk * vs[2]..][..dv];
                for (o, &x) in out.iter_mut().zip(vrow) {
                    *o += w * T::of(x);
                }
            }
            out.iter_mut().for_each(|o| *o /= sum);
            (out, max + sum.ln())
        })
        .collect();
    let mut o = vec![T::ZERO; rows * dv];
    let mut lse = vec![T::ZERO; rows];
    for (r, (row, l)) in per_row.into_iter().enumerate() {
        let h = r % h_q;
        let i = (r / h_q) % p.n_q;
        let b = r / (h_q * p.n_q);
        o[b * os[0] + i * os[1] + h * os[2]..][..dv].copy_from_slice(&row);
        lse[(b * h_q + h) * p.n_q + i] = l;
    }
    Ok(ReferenceOutput { o, lse })
}
