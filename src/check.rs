//! Cross-checking kernels against the f64 reference: seeded inputs, the error
//! metric and the tolerance rule (design.md): the fused kernel's max error
//! against the f64 reference must be at most 2× the naive kernel's (same
//! storage precision) plus [`SLACK`]. Shared by the tests and `xattn check`.

use crate::context::Context;
use crate::dtype::Dtype;
use crate::error::Result;
use crate::layer::{LayerConfig, LayerWeights};
use crate::layout::Layout;
use crate::mask::Masks;
use crate::naive::NaiveAttention;
use crate::problem::AttentionProblem;
use crate::reference::{self, ReferenceOutput};
use crate::tensor::AttentionOutput;

/// Absolute slack on top of twice the naive error: covers cases where the
/// naive kernel happens to be exact (n_kv = 1, O = V) while the fused kernel's
/// exp2/log2 route rounds differently by a few ulps of values of order 10.
pub const SLACK: f64 = 1e-5;

/// splitmix64 with Box–Muller: small, seeded, reproducible test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` normals times `scale`, as f32.
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Seeded weights for a layer of config `c`: entries N(0, 1/in) (the
/// usual initialisation's spread), each bias ([q, k, v, o]) where `biases`
/// says, N(0, 0.5²). The tests', benches' and long runs' layers.
pub fn layer_weights(c: &LayerConfig, biases: [bool; 4], seed: u64) -> LayerWeights {
    let mut rng = Rng::new(seed);
    let d = c.head_dim();
    let (hd, kvd) = (c.heads * d, c.kv_heads * d);
    let mut w = |out: usize, inp: usize| rng.normals(out * inp, 1.0 / (inp as f64).sqrt());
    let (w_q, w_k, w_v, w_o) = (
        w(hd, c.embed),
        w(kvd, c.kv_embed),
        w(kvd, c.kv_embed),
        w(c.embed, hd),
    );
    let mut rng = Rng::new(seed + 1);
    let mut b = |on: bool, n: usize| on.then(|| rng.normals(n, 0.5));
    LayerWeights {
        w_q,
        b_q: b(biases[0], hd),
        w_k,
        b_k: b(biases[1], kvd),
        w_v,
        b_v: b(biases[2], kvd),
        w_o,
        b_o: b(biases[3], c.embed),
    }
}

/// Seeded q, k, v for a problem: normal × 3, as design.md asks.
pub fn inputs(p: &AttentionProblem, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = Rng::new(seed);
    (
        r.normals(p.q_len(), 3.0),
        r.normals(p.k_len(), 3.0),
        r.normals(p.v_len(), 3.0),
    )
}

/// Max |got − want|. NaN anywhere, or −∞ on one side only, is an infinite
/// error; matching infinities are exact.
pub fn max_err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| abs_err(g as f64, w))
        .fold(0.0, nan_max)
}

/// Max |got − want| / max(|want|, 1): the error measure for values that can
/// be large (LSE of huge logits). As [`max_err`], NaN anywhere or an
/// infinity on one side only is an infinite error.
pub fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| abs_err(g as f64, w) / w.abs().max(1.0))
        .fold(0.0, nan_max)
}

/// |got − want|, with NaN on either side or an infinity on one side only an
/// infinite error and matching infinities exact.
pub fn abs_err(g: f64, w: f64) -> f64 {
    if g.is_nan() || w.is_nan() {
        f64::INFINITY
    } else if g.is_infinite() || w.is_infinite() {
        if g == w {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (g - w).abs()
    }
}

/// `f64::max` that keeps NaN (which `f64::max` drops): a fold of errors
/// with this can never hide a NaN.
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Max errors of one output against the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Errors {
    /// On O.
    pub o: f64,
    /// On LSE.
    pub lse: f64,
}

impl Errors {
    /// Errors of `out` against `r`.
    pub fn of(out: &AttentionOutput, r: &ReferenceOutput) -> Self {
        Self {
            o: max_err(&out.o, &r.o),
            lse: max_err(&out.lse, &r.lse),
        }
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckReport {
    /// Fused kernel errors.
    pub fused: Errors,
    /// Naive kernel errors (the tolerance's base).
    pub naive: Errors,
    /// Absolute slack on O ([`o_slack`]).
    pub o_slack: f64,
}

/// Slack on O for a storage type: [`SLACK`], plus for f16 and bf16 one unit
/// in the last place of the storage type at the largest |O| (2⁻¹⁰·max|O| for
/// f16, 2⁻⁷·max|O| for bf16). Both kernels round an f32 result to the
/// storage type on the way out; two f32 results a hair apart can round to
/// neighbouring values, one ulp apart, whatever their f32 accuracy.
pub fn o_slack(dtype: Dtype, max_abs_o: f64) -> f64 {
    SLACK
        + match dtype {
            Dtype::F32 => 0.0,
            Dtype::F16 => max_abs_o * 2f64.powi(-10),
            Dtype::Bf16 => max_abs_o * 2f64.powi(-7),
        }
}

impl CheckReport {
    /// Bound on the fused O error.
    pub fn o_bound(&self) -> f64 {
        2.0 * self.naive.o + self.o_slack
    }
    /// Bound on the fused LSE error.
    pub fn lse_bound(&self) -> f64 {
        2.0 * self.naive.lse + SLACK
    }
    /// Whether the fused kernel is within both bounds (a NaN error, or a
    /// NaN bound, fails).
    pub fn passed(&self) -> bool {
        self.fused.o <= self.o_bound() && self.fused.lse <= self.lse_bound()
    }
}

/// Runs `fused` (any implementation of the fused forward), the naive kernel
/// and the f64 reference on seeded inputs and compares.
pub fn check_with(
    ctx: &Context,
    p: &AttentionProblem,
    kv_lens: Option<&[u32]>,
    seed: u64,
    fused: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<AttentionOutput>,
) -> Result<CheckReport> {
    check_masked(ctx, p, &Masks::kv_lens(kv_lens), seed, fused)
}

/// [`check_with`] for problems with query lengths, packed sequences,
/// windows, bias or masks. The naive baseline of the tolerance rule is then
/// the f32 CPU computation in the naive order ([`reference::attention_f32`]:
/// full dot products, max, sum, P·V; O rounded to the storage type), since
/// the naive WGSL kernel implements key lengths only.
pub fn check_masked(
    ctx: &Context,
    p: &AttentionProblem,
    masks: &Masks<'_>,
    seed: u64,
    fused: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<AttentionOutput>,
) -> Result<CheckReport> {
    // Inputs in the storage type (exact in f32), as the kernels will see them.
    let round = |x| p.dtype.round_all(x);
    let (q, k, v) = inputs(p, seed);
    let (q, k, v) = (round(q), round(k), round(v));
    let r = reference::attention_masked(p, &q, &k, &v, masks)?;
    let f = fused(&q, &k, &v)?;
    let max_o = r.o.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    if p.has_masking() {
        let n = reference::attention_f32(p, &q, &k, &v, masks)?;
        let n = AttentionOutput {
            o: round(n.o),
            lse: n.lse,
        };
        return Ok(CheckReport {
            fused: Errors::of(&f, &r),
            naive: Errors::of(&n, &r),
            o_slack: o_slack(p.dtype, max_o),
        });
    }
    let kv_lens = masks.kv_lens;
    // The naive kernel in the same storage precision: f32 loads of the
    // rounded inputs, f32 arithmetic, O rounded to the storage type.
    // It reads and writes BSHD: give it BSHD copies of the same values and
    // put its O back in the problem's output layout.
    let p32 = AttentionProblem {
        dtype: Dtype::F32,
        layout: Layout::Bshd,
        out_layout: Layout::Bshd,
        ..*p
    };
    let bshd = |x: &[f32], s: usize, h: usize, d: usize| {
        p.layout.convert(Layout::Bshd, x, [p.batch, s, h, d])
    };
    let (hq, hk, d, dv) = (p.heads, p.kv_heads, p.head_dim, p.head_dim_v);
    let mut n = NaiveAttention::new(ctx, &p32)?.run(
        &bshd(&q, p.n_q, hq, d),
        &bshd(&k, p.n_kv, hk, d),
        &bshd(&v, p.n_kv, hk, dv),
        kv_lens,
    )?;
    n.o = Layout::Bshd.convert(p.out_layout, &round(n.o), [p.batch, p.n_q, hq, dv]);
    Ok(CheckReport {
        fused: Errors::of(&f, &r),
        naive: Errors::of(&n, &r),
        o_slack: o_slack(p.dtype, max_o),
    })
}

/// [`check_with`] the default fused kernel.
pub fn check(
    ctx: &Context,
    p: &AttentionProblem,
    kv_lens: Option<&[u32]>,
    seed: u64,
) -> Result<CheckReport> {
    check_with(ctx, p, kv_lens, seed, |q, k, v| {
        ctx.attention(p, q, k, v, kv_lens)
    })
}

/// One case of a check grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The problem.
    pub problem: AttentionProblem,
    /// Key lengths, when the problem uses them.
    pub kv_lens: Option<Vec<u32>>,
    /// Input seed.
    pub seed: u64,
}

impl Case {
    /// A one-line name: B, H, H_kv, n_q, n_kv, d, d_v, scale, key lengths.
    pub fn name(&self) -> String {
        let p = &self.problem;
        let mut s = format!(
            "B{} H{}:{} {}x{} d{}",
            p.batch, p.heads, p.kv_heads, p.n_q, p.n_kv, p.head_dim
        );
        if p.head_dim_v != p.head_dim {
            s += &format!(" dv{}", p.head_dim_v);
        }
        if let Some(sc) = p.scale {
            s += &format!(" scale{sc}");
        }
        if let Some(l) = &self.kv_lens {
            s += &format!(" kv_lens{l:?}");
        }
        s
    }
}

/// The (n_q, n_kv) pairs of FlashAttention's own test suite, plus the
/// cross-attention shapes that matter (1×1500 Whisper decode, 4096×77 SD).
pub const SEQ_PAIRS: [(usize, usize); 13] = [
    (1, 1),
    (1, 77),
    (1, 1500),
    (3, 799),
    (113, 203),
    (128, 217),
    (108, 256),
    (256, 512),
    (512, 256),
    (127, 513),
    (1023, 1024),
    (1024, 1023),
    (4096, 77),
];

/// Head dims of the grid, odd ones included.
pub const HEAD_DIMS: [usize; 10] = [32, 40, 59, 64, 80, 96, 111, 128, 160, 256];

/// A sampled grid: every sequence pair and every head dim appears, with
/// batch 1–3, H 1–8, GQA 8:2, MQA 8:1, d_v ≠ d, custom scale and key lengths
/// (including 0 and n_kv). Large pairs get few heads so the grid stays fast
/// on a 2-core CPU adapter. `quick` keeps every third case.
pub fn grid(quick: bool) -> Vec<Case> {
    let mut rng = Rng::new(2024);
    let mut cases = Vec::new();
    for (i, &(n_q, n_kv)) in SEQ_PAIRS.iter().enumerate() {
        for (j, &d) in HEAD_DIMS.iter().enumerate() {
            // Latin-square style sampling: 3 head dims per pair, rotating.
            if (j + i) % 4 != 0 {
                continue;
            }
            let n = cases.len();
            let work = n_q * n_kv * d;
            let (batch, heads, kv_heads) = match n % 4 {
                _ if work > 20_000_000 => (1, 1, 1),
                0 => (2, 8, 2),
                1 => (3, 8, 1),
                2 => (1, 4, 4),
                _ => (2, 2, 2),
            };
            let mut p = AttentionProblem::new(batch, heads, n_q, n_kv, d).with_kv_heads(kv_heads);
            if n % 3 == 1 {
                p = p.with_head_dim_v(HEAD_DIMS[(j + 3) % HEAD_DIMS.len()]);
            }
            if n % 5 == 2 {
                p = p.with_scale(1.0);
            }
            let kv_lens = (n % 2 == 1).then(|| {
                (0..batch)
                    .map(|b| match b {
                        0 => 0,
                        1 => n_kv as u32,
                        _ => rng.below(n_kv as u64 + 1) as u32,
                    })
                    .collect::<Vec<u32>>()
            });
            if kv_lens.is_some() {
                p = p.with_kv_lens(true);
            }
            cases.push(Case {
                problem: p,
                kv_lens,
                seed: (i * 100 + j) as u64,
            });
        }
    }
    if quick {
        cases = cases.into_iter().step_by(3).collect();
    }
    cases
}
