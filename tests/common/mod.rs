//! Shared test helpers: a seeded normal generator, the adapter, and the
//! tolerance rule from design.md.
#![allow(dead_code)]

use std::sync::OnceLock;

use xattn::{AttentionOutput, AttentionProblem, Context};

/// One device per test binary. No adapter is a failure that says how to get one.
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| match Context::new() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    })
}

/// splitmix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
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
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` normals times `scale`, as f32.
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Seeded inputs for a problem: normals × 3 as design.md asks.
pub fn inputs(p: &AttentionProblem, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = Rng::new(seed);
    (
        r.normals(p.q_len(), 3.0),
        r.normals(p.k_len(), 3.0),
        r.normals(p.v_len(), 3.0),
    )
}

/// Max |a − b| over finite pairs; a pair where exactly one side is −∞, or
/// either is NaN, is an infinite error.
pub fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let g = g as f64;
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
        })
        .fold(0.0, f64::max)
}

/// Errors of one kernel against the f64 reference.
#[derive(Debug, Clone, Copy)]
pub struct Errs {
    pub o: f64,
    pub lse: f64,
}

pub fn errs(out: &AttentionOutput, r: &xattn::reference::ReferenceOutput) -> Errs {
    Errs {
        o: max_err(&out.o, &r.o),
        lse: max_err(&out.lse, &r.lse),
    }
}

/// Absolute slack on top of 2× the naive error (design.md's rule).
pub const SLACK: f64 = 1e-5;

/// Runs fused, naive and reference; asserts the tolerance rule; returns
/// (fused, naive) errors.
pub fn check(p: &AttentionProblem, seed: u64, kv_lens: Option<&[u32]>) -> (Errs, Errs) {
    let (q, k, v) = inputs(p, seed);
    let ctx = ctx();
    let reference = xattn::reference::attention(p, &q, &k, &v, kv_lens).expect("reference");
    let fused = ctx.attention(p, &q, &k, &v, kv_lens).expect("fused");
    let naive = xattn::NaiveAttention::new(ctx, p)
        .and_then(|n| n.run(&q, &k, &v, kv_lens))
        .expect("naive");
    let (ef, en) = (errs(&fused, &reference), errs(&naive, &reference));
    assert!(
        ef.o <= 2.0 * en.o + SLACK,
        "{p:?}: O error {:.3e} > 2 × naive {:.3e} + {SLACK:e}",
        ef.o,
        en.o
    );
    assert!(
        ef.lse <= 2.0 * en.lse + SLACK,
        "{p:?}: LSE error {:.3e} > 2 × naive {:.3e} + {SLACK:e}",
        ef.lse,
        en.lse
    );
    (ef, en)
}
