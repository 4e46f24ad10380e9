//! The CPU reference: f64 accumulation, scores materialised row by row, the
//! same semantics as the kernels (GQA, key lengths, scale, LSE, empty rows).
//! Written to be trusted by reading, parallel over rows with rayon.

use rayon::prelude::*;

use crate::attention::{validate_host, AttentionProblem};
use crate::error::Result;

/// O and LSE in f64, in the kernels' layouts: o `[B, n_q, H, d_v]`,
/// lse `[B, H, n_q]` (natural log, −∞ for rows with no visible key).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceOutput {
    /// Attention output.
    pub o: Vec<f64>,
    /// Log-sum-exp of the scaled scores.
    pub lse: Vec<f64>,
}

/// `softmax(Q·Kᵀ·scale)·V` for every (batch, query, head) row.
pub fn attention(
    p: &AttentionProblem,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_lens: Option<&[u32]>,
) -> Result<ReferenceOutput> {
    p.validate()?;
    validate_host(p, q, k, v, kv_lens)?;
    let (h_q, h_kv, d, dv) = (p.heads, p.kv_heads, p.head_dim, p.head_dim_v);
    let group = h_q / h_kv;
    let scale = p.scale() as f64;
    let rows = p.batch * p.n_q * h_q;
    let per_row: Vec<(Vec<f64>, f64)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            // o is [B, n_q, H, d_v]: row r is (b, i, h).
            let h = r % h_q;
            let i = (r / h_q) % p.n_q;
            let b = r / (h_q * p.n_q);
            let hk = h / group;
            let n_valid = kv_lens.map_or(p.n_kv, |l| l[b] as usize).min(p.n_kv);
            let qrow = &q[((b * p.n_q + i) * h_q + h) * d..][..d];
            let scores: Vec<f64> = (0..n_valid)
                .map(|j| {
                    let krow = &k[((b * p.n_kv + j) * h_kv + hk) * d..][..d];
                    let dot: f64 = qrow
                        .iter()
                        .zip(krow)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    dot * scale
                })
                .collect();
            let mut out = vec![0.0f64; dv];
            if n_valid == 0 {
                return (out, f64::NEG_INFINITY);
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for (j, w) in weights.iter().enumerate() {
                let vrow = &v[((b * p.n_kv + j) * h_kv + hk) * dv..][..dv];
                for (o, &x) in out.iter_mut().zip(vrow) {
                    *o += w * x as f64;
                }
            }
            out.iter_mut().for_each(|o| *o /= sum);
            (out, max + sum.ln())
        })
        .collect();
    let mut o = Vec::with_capacity(rows * dv);
    let mut lse = vec![0.0f64; rows];
    for (r, (row, l)) in per_row.into_iter().enumerate() {
        o.extend_from_slice(&row);
        let h = r % h_q;
        let i = (r / h_q) % p.n_q;
        let b = r / (h_q * p.n_q);
        lse[(b * h_q + h) * p.n_q + i] = l;
    }
    Ok(ReferenceOutput { o, lse })
}
