//! Property tests (proptest, a fixed seed and a bounded case count, so CI
//! runs the same cases every time): random valid small problems against the
//! f64 reference under the tolerance rule, across masks, lengths, windows,
//! packed batches, GQA, storage types, layouts and both plan families; and
//! specs broken in one way each, which must give that way's typed error,
//! never a panic.

mod common;

use common::{ctx, gpu_plan_ctx};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use xattn::check::check_masked;
use xattn::{
    pack_mask, AttentionProblem, Dtype, Error, FlashAttention, Layout, MaskShape, Masks, VarLen,
    Window, MAX_HEAD_DIM,
};

fn runner(cases: u32, seed: u64) -> TestRunner {
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    })
}

/// A valid problem's description: the problem is built from it with its
/// host data by [`Case::run`].
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    kv_heads: usize,
    group: usize,
    n_q: usize,
    n_kv: usize,
    d: usize,
    dv: usize,
    dtype: Dtype,
    layouts: (Layout, Layout),
    /// Per-entry key lengths as fractions of n_kv (0 = empty entry).
    kv_lens: Option<Vec<u8>>,
    q_lens: Option<Vec<u8>>,
    causal: bool,
    window: Option<(usize, usize)>,
    /// Bias and boolean mask, broadcast flags (batch, heads, rows).
    bias: Option<(bool, bool, bool)>,
    mask: Option<(bool, bool, bool)>,
    /// Packed batch: per-entry (q, kv) lengths instead of padding.
    varlen: Option<Vec<(u8, u8)>>,
    gpu_plans: bool,
    seed: u64,
}

fn dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Bf16)]
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::Bshd), Just(Layout::Bhsd)]
}

fn flags() -> impl Strategy<Value = (bool, bool, bool)> {
    (any::<bool>(), any::<bool>(), any::<bool>())
}

fn case() -> impl Strategy<Value = Case> {
    let dims = (1usize..=3, 1usize..=2, 1usize..=3, 1usize..=40, 1usize..=90);
    let head = (
        prop_oneof![1usize..=9, 10usize..=72, Just(128), Just(160)],
        prop::option::weighted(0.2, 1usize..=48),
        dtype(),
        (layout(), layout()),
    );
    let masks = (
        prop::option::weighted(0.4, prop::collection::vec(any::<u8>(), 3)),
        prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 3)),
        any::<bool>(),
        prop::option::weighted(0.25, (0usize..40, 0usize..40)),
        prop::option::weighted(0.25, flags()),
        prop::option::weighted(0.25, flags()),
    );
    let packed = prop::option::weighted(
        0.2,
        prop::collection::vec((any::<u8>(), any::<u8>()), 1..=3),
    );
    (dims, head, masks, packed, any::<bool>(), any::<u64>()).prop_map(
        |(
            (batch, kv_heads, group, n_q, n_kv),
            (d, dv, dtype, layouts),
            (kv_lens, q_lens, causal, window, bias, mask),
            varlen,
            gpu_plans,
            seed,
        )| {
            let packed = varlen.is_some();
            Case {
                batch: varlen.as_ref().map_or(batch, Vec::len),
                kv_heads,
                group,
                n_q,
                n_kv,
                d,
                dv: dv.unwrap_or(d),
                dtype,
                // Packed batches are [total, H, d]: BSHD.
                layouts: if packed {
                    (Layout::Bshd, Layout::Bshd)
                } else {
                    layouts
                },
                kv_lens: kv_lens.filter(|_| !packed),
                q_lens: q_lens.filter(|_| !packed),
                causal,
                window,
                bias: bias.filter(|_| !packed),
                mask: mask.filter(|_| !packed),
                varlen,
                gpu_plans,
                seed,
            }
        },
    )
}

/// `frac` of `n` (0..=n).
fn part(frac: u8, n: usize) -> u32 {
    (frac as usize * n / 255) as u32
}

impl Case {
    /// Builds the problem and its host data, runs the fused kernel on the
    /// chosen plan family, and checks it against the reference.
    fn run(&self) -> Result<(), TestCaseError> {
        let heads = self.kv_heads * self.group;
        let b = self.batch;
        // Packed batches: cu_seqlens from the per-entry lengths.
        let cu = self.varlen.as_ref().map(|lens| {
            let mut cq = vec![0u32];
            let mut ck = vec![0u32];
            for &(q, k) in lens {
                cq.push(cq.last().unwrap() + part(q, self.n_q));
                ck.push(ck.last().unwrap() + part(k, self.n_kv));
            }
            (cq, ck)
        });
        let mut p = match &cu {
            Some((cq, ck)) => {
                let (vl, mq, mk) = VarLen::from_cu_seqlens(cq, ck);
                AttentionProblem::new(b, heads, mq.max(1), mk, self.d).with_varlen(vl)
            }
            None => AttentionProblem::new(b, heads, self.n_q, self.n_kv, self.d),
        }
        .with_kv_heads(self.kv_heads)
        .with_head_dim_v(self.dv)
        .with_dtype(self.dtype)
        .with_layout(self.layouts.0)
        .with_out_layout(self.layouts.1);
        let kv_lens: Option<Vec<u32>> = self
            .kv_lens
            .as_ref()
            .map(|f| (0..b).map(|i| part(f[i], self.n_kv)).collect());
        let q_lens: Option<Vec<u32>> = self
            .q_lens
            .as_ref()
            .map(|f| (0..b).map(|i| part(f[i], self.n_q)).collect());
        p = p
            .with_kv_lens(kv_lens.is_some())
            .with_q_lens(q_lens.is_some());
        if self.causal {
            p = p.with_causal();
        }
        if let Some((l, r)) = self.window {
            p = p.with_window(Window::sliding(l, r));
        }
        let shape = |(batch, heads, rows)| MaskShape { batch, heads, rows };
        let mut rng = xattn::check::Rng::new(self.seed);
        let bias = self.bias.map(|f| {
            p = p.with_bias(shape(f));
            let mut v = rng.normals(p.bias_words(), 2.0);
            // Some keys hidden outright.
            v.iter_mut().step_by(7).for_each(|x| *x = f32::NEG_INFINITY);
            v
        });
        let bits = self.mask.map(|f| {
            p = p.with_bool_mask(shape(f));
            let rows = shape(f).rows([p.batch, p.heads, p.n_q]);
            let bools: Vec<bool> = (0..rows * p.n_kv).map(|_| rng.below(5) != 0).collect();
            pack_mask(&bools, p.n_kv)
        });
        let masks = Masks {
            kv_lens: kv_lens.as_deref(),
            q_lens: q_lens.as_deref(),
            cu_seqlens_q: cu.as_ref().map(|c| c.0.as_slice()),
            cu_seqlens_k: cu.as_ref().map(|c| c.1.as_slice()),
            bias: bias.as_deref(),
            mask: bits.as_deref(),
        };
        let ctx = if self.gpu_plans {
            gpu_plan_ctx()
        } else {
            ctx()
        };
        let r = check_masked(ctx, &p, &masks, self.seed, |q, k, v| {
            FlashAttention::new(ctx, &p)?.run_with(q, k, v, &masks)
        })
        .map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))?;
        prop_assert!(
            r.passed(),
            "{p:?}: O {:.3e} (bound {:.3e}), LSE {:.3e} (bound {:.3e})",
            r.fused.o,
            r.o_bound(),
            r.fused.lse,
            r.lse_bound()
        );
        Ok(())
    }
}

#[test]
fn random_valid_problems_match_the_reference() {
    let cases = 48;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
    runner(cases, 0x5eed_1234)
        .run(&case(), |c| {
            seen[usize::from(c.gpu_plans)].fetch_add(1, Ordering::Relaxed);
            c.run()
        })
        .unwrap();
    println!("{cases} cases: {seen:?} (runs under CPU plans, GPU plans)");
}

/// One way to break a valid problem, and the error it must give.
#[derive(Debug, Clone, Copy)]
enum Break {
    ZeroBatch,
    ZeroHeads,
    ZeroNq,
    HeadDimZero,
    HeadDimPastMax,
    HeadsNotMultiple,
    NanScale,
    InfScale,
    KvLenPastNkv,
    KvLensCount,
    QLenPastNq,
    WrongQLength,
    NanBias,
    DecreasingCuSeqlens,
}

fn breaks() -> impl Strategy<Value = Break> {
    use Break::*;
    prop::sample::select(vec![
        ZeroBatch,
        ZeroHeads,
        ZeroNq,
        HeadDimZero,
        HeadDimPastMax,
        HeadsNotMultiple,
        NanScale,
        InfScale,
        KvLenPastNkv,
        KvLensCount,
        QLenPastNq,
        WrongQLength,
        NanBias,
        DecreasingCuSeqlens,
    ])
}

#[test]
fn every_broken_spec_gets_its_typed_error_and_never_a_panic() {
    let strategy = (
        breaks(),
        1usize..=3,
        1usize..=4,
        1usize..=30,
        1usize..=60,
        1usize..=96,
    );
    let mut runner = runner(256, 0x0bad_5eed);
    runner
        .run(&strategy, |(brk, b, h, nq, nkv, d)| {
            let p = AttentionProblem::new(b, h, nq, nkv, d);
            let (q, k, v) = xattn::check::inputs(&p, 1);
            let lens: Vec<u32> = vec![nkv as u32; b];
            let ctx = ctx();
            // Each break, and whether the error it gives is the right one.
            let (result, ok): (xattn::Result<()>, fn(&Error) -> bool) = match brk {
                Break::ZeroBatch => (AttentionProblem { batch: 0, ..p }.validate(), |e| {
                    matches!(e, Error::ZeroDim { name: "batch" })
                }),
                Break::ZeroHeads => (AttentionProblem { heads: 0, ..p }.validate(), |e| {
                    matches!(e, Error::ZeroDim { name: "heads" })
                }),
                Break::ZeroNq => (AttentionProblem { n_q: 0, ..p }.validate(), |e| {
                    matches!(e, Error::ZeroDim { name: "n_q" })
                }),
                Break::HeadDimZero => (
                    AttentionProblem::new(b, h, nq, nkv, d)
                        .with_head_dim_v(0)
                        .validate(),
                    |e| {
                        matches!(
                            e,
                            Error::HeadDim {
                                name: "head_dim_v",
                                got: 0,
                                ..
                            }
                        )
                    },
                ),
                Break::HeadDimPastMax => (
                    FlashAttention::new(
                        ctx,
                        &AttentionProblem::new(b, h, nq, nkv, MAX_HEAD_DIM + d),
                    )
                    .map(|_| ()),
                    |e| {
                        matches!(
                            e,
                            Error::HeadDim {
                                name: "head_dim",
                                ..
                            }
                        )
                    },
                ),
                Break::HeadsNotMultiple => (p.with_kv_heads(h + 1).validate(), |e| {
                    matches!(e, Error::HeadsMismatch { .. })
                }),
                Break::NanScale => (
                    FlashAttention::new(ctx, &p.with_scale(f32::NAN)).map(|_| ()),
                    |e| matches!(e, Error::BadScale { .. }),
                ),
                Break::InfScale => (p.with_scale(f32::INFINITY).validate(), |e| {
                    matches!(e, Error::BadScale { .. })
                }),
                Break::KvLenPastNkv => {
                    let mut l = lens.clone();
                    l[b - 1] = nkv as u32 + 1;
                    let p = p.with_kv_lens(true);
                    (
                        FlashAttention::new(ctx, &p)
                            .and_then(|f| f.run(&q, &k, &v, Some(&l)))
                            .map(|_| ()),
                        |e| matches!(e, Error::KvLenTooLong { .. }),
                    )
                }
                Break::KvLensCount => {
                    let p = p.with_kv_lens(true);
                    (
                        FlashAttention::new(ctx, &p)
                            .and_then(|f| f.run(&q, &k, &v, Some(&lens[..b - 1])))
                            .map(|_| ()),
                        |e| matches!(e, Error::KvLensCount { .. }),
                    )
                }
                Break::QLenPastNq => {
                    let p = p.with_q_lens(true);
                    let ql = vec![nq as u32 + 1; b];
                    let m = Masks {
                        q_lens: Some(&ql),
                        ..Default::default()
                    };
                    (
                        FlashAttention::new(ctx, &p)
                            .and_then(|f| f.run_with(&q, &k, &v, &m))
                            .map(|_| ()),
                        |e| matches!(e, Error::BadSeqLens { name: "q_lens", .. }),
                    )
                }
                Break::WrongQLength => (
                    FlashAttention::new(ctx, &p)
                        .and_then(|f| f.run(&q[1..], &k, &v, None))
                        .map(|_| ()),
                    |e| matches!(e, Error::SizeMismatch { name: "q", .. }),
                ),
                Break::NanBias => {
                    let p = p.with_bias(MaskShape::default());
                    let mut bias = vec![0.0f32; nkv];
                    bias[nkv / 2] = f32::NAN;
                    let m = Masks {
                        bias: Some(&bias),
                        ..Default::default()
                    };
                    (
                        FlashAttention::new(ctx, &p)
                            .and_then(|f| f.run_with(&q, &k, &v, &m))
                            .map(|_| ()),
                        |e| matches!(e, Error::NonFinite { name: "bias", .. }),
                    )
                }
                Break::DecreasingCuSeqlens => {
                    let cq = [0u32, 2, 1, nq as u32 + 2];
                    let ck = [0u32, 3, 4, 5];
                    let (vl, mq, mk) = VarLen::from_cu_seqlens(&cq, &ck);
                    let p = AttentionProblem::new(3, h, mq, mk, d).with_varlen(vl);
                    let (q, k, v) = xattn::check::inputs(&p, 2);
                    let m = Masks {
                        cu_seqlens_q: Some(&cq),
                        cu_seqlens_k: Some(&ck),
                        ..Default::default()
                    };
                    (
                        FlashAttention::new(ctx, &p)
                            .and_then(|f| f.run_with(&q, &k, &v, &m))
                            .map(|_| ()),
                        |e| matches!(e, Error::BadSeqLens { .. }),
                    )
                }
            };
            match result {
                Err(e) => {
                    prop_assert!(ok(&e), "{brk:?}: wrong error {e:?}");
                    // Every message says what is wrong in words.
                    prop_assert!(e.to_string().len() > 10);
                }
                Ok(()) => prop_assert!(
                    false,
                    "{brk:?} (b {b}, h {h}, nq {nq}, nkv {nkv}, d {d}) was accepted"
                ),
            }
            Ok(())
        })
        .unwrap();
}
