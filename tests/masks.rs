//! Masks, bias, causal and sliding windows, query lengths and packed
//! (variable-length) batches against the f64 reference with the tolerance
//! rule (`check::check_masked`), on the shapes from xformers' suite, with
//! NaN in every element a kernel must not read. Every test runs under both
//! plan families (`both`): this adapter's plans and a GPU's (the lanes
//! kernel, `XATTN_PLAN=gpu`).

mod common;

use common::{ctx, gpu_plan_ctx};
use xattn::check::{self, CheckReport, Rng};
use xattn::Context;
use xattn::{
    pack_mask, AttentionOutput, AttentionProblem, Dtype, FlashAttention, FlashVariant, MaskShape,
    Masks, TileOverride, VarLen, Window,
};

/// xformers' odd sequence lengths.
const ODD: [usize; 13] = [1, 2, 3, 15, 31, 32, 33, 63, 65, 127, 129, 136, 1025];

thread_local! {
    /// Whether this thread's test body runs under the GPU plan family.
    static GPU_FAMILY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The context of the plan family the current body runs under.
fn fam() -> &'static Context {
    if GPU_FAMILY.get() {
        gpu_plan_ctx()
    } else {
        ctx()
    }
}

/// Runs a test body under both plan families: this adapter's own plans, and
/// the plans a discrete GPU would get (`XATTN_PLAN=gpu`: the lanes kernel).
fn both(body: impl Fn()) {
    for gpu in [false, true] {
        GPU_FAMILY.set(gpu);
        body();
    }
    GPU_FAMILY.set(false);
}

/// Writes NaN into the rows of q, k and v that no query may read.
type Poison<'a> = &'a dyn Fn(&mut [f32], &mut [f32], &mut [f32]);

/// Runs the fused kernel (planned with `force`) on `masks`, with NaN written
/// into every q, k and v row no query may read (`poison`), and asserts the
/// tolerance rule against the reference on the clean inputs.
fn assert_masked(
    ctx: &Context,
    p: &AttentionProblem,
    masks: &Masks<'_>,
    force: TileOverride,
    poison: Poison<'_>,
    seed: u64,
) -> (CheckReport, AttentionOutput) {
    let mut got = None;
    let fa = FlashAttention::with_tiles(ctx, p, force).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let r = check::check_masked(ctx, p, masks, seed, |q, k, v| {
        let (mut q, mut k, mut v) = (q.to_vec(), k.to_vec(), v.to_vec());
        poison(&mut q, &mut k, &mut v);
        let out = fa.run_with(&q, &k, &v, masks)?;
        got = Some(out.clone());
        Ok(out)
    })
    .unwrap_or_else(|e| panic!("{p:?}: {e}"));
    assert!(
        r.passed(),
        "{p:?} plan {:?}: fused O {:.3e} (bound {:.3e}), LSE {:.3e} (bound {:.3e})",
        fa.plan().why,
        r.fused.o,
        r.o_bound(),
        r.fused.lse,
        r.lse_bound()
    );
    // The worst case of each test, for `--nocapture` runs (the note's figures).
    WORST.with(|w| {
        let mut w = w.borrow_mut();
        if r.fused.o / r.o_bound() >= w.0 {
            *w = (r.fused.o / r.o_bound(), r.fused.o, r.o_bound(), r.fused.lse, r.lse_bound());
            eprintln!(
                "worst so far: O {:.3e} (bound {:.3e}), LSE {:.3e} (bound {:.3e}) at {}x{} d{} {:?} {:?}",
                r.fused.o,
                r.o_bound(),
                r.fused.lse,
                r.lse_bound(),
                p.n_q,
                p.n_kv,
                p.head_dim,
                (p.bias, p.bool_mask),
                p.key_window()
            );
        }
    });
    (r, got.expect("ran"))
}

thread_local! {
    /// (O error / bound, O error, O bound, LSE error, LSE bound) of the
    /// worst case so far on this test's thread.
    static WORST: std::cell::RefCell<(f64, f64, f64, f64, f64)> = const {
        std::cell::RefCell::new((0.0, 0.0, 0.0, 0.0, 0.0))
    };
}

fn no_poison(_: &mut [f32], _: &mut [f32], _: &mut [f32]) {}

fn check(p: &AttentionProblem, masks: &Masks<'_>, seed: u64) -> CheckReport {
    assert_masked(fam(), p, masks, TileOverride::default(), &no_poison, seed).0
}

/// Writes NaN into rows `[from, to)` of a BSHD tensor with `width` = H·d
/// elements per row.
fn poison_rows(x: &mut [f32], width: usize, from: usize, to: usize) {
    x[from * width..to * width].fill(f32::NAN);
}

/// A random boolean mask with about `masked` of its keys hidden (1.0: all).
fn random_bits(p: &AttentionProblem, shape: MaskShape, masked: f64, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    let bools: Vec<bool> = (0..shape.rows(p.mask_dims()) * p.n_kv)
        .map(|_| r.uniform() >= masked)
        .collect();
    pack_mask(&bools, p.n_kv)
}

/// A bias of normals with about `neg_inf` of its entries −∞.
fn random_bias(p: &AttentionProblem, shape: MaskShape, neg_inf: f64, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..shape.rows(p.mask_dims()) * p.n_kv)
        .map(|_| {
            if r.uniform() < neg_inf {
                f32::NEG_INFINITY
            } else {
                2.0 * r.normal() as f32
            }
        })
        .collect()
}

#[test]
fn window_keys_are_bottom_right_aligned() {
    // flash-attn ≥ 2.1: key j visible to query i iff j ≤ i + n_kv − n_q.
    let c = Window::causal();
    assert_eq!(c.keys(0, 2, 5), (0, 4));
    assert_eq!(c.keys(1, 2, 5), (0, 5));
    // n_q > n_kv: the first n_q − n_kv queries see nothing.
    assert_eq!(c.keys(0, 5, 2), (0, 0));
    assert_eq!(c.keys(2, 5, 2), (0, 0));
    assert_eq!(c.keys(3, 5, 2), (0, 1));
    assert_eq!(c.keys(4, 5, 2), (0, 2));
    let w = Window::sliding(1, 1);
    assert_eq!(w.keys(0, 3, 3), (0, 2));
    assert_eq!(w.keys(2, 3, 3), (1, 3));
    assert_eq!(Window::sliding(0, 0).keys(1, 3, 6), (4, 5));
}

#[test]
fn causal_on_xformers_shapes() {
    both(|| {
        // Every (n_q, n_kv) pair, n_q < n_kv and n_q > n_kv included, with the
        // planner's default tiles: rows with no visible key must give O = 0 and
        // LSE = −∞, which the reference holds.
        let mut worst: f64 = 0.0;
        for &nq in &ODD {
            for &nk in &ODD {
                // MQA 8:1, d 40: each kv head has 8·n_q query rows, so n_q ≤ 2
                // takes the decode kernel with 8 rows per workgroup and the rest
                // the tiled kernel (fewer pipelines to compile cold).
                let p = AttentionProblem::new(1, 8, nq, nk, 40)
                    .with_kv_heads(1)
                    .with_causal();
                let r = check(&p, &Masks::default(), (nq * 1000 + nk) as u64);
                worst = worst.max(r.fused.o / r.o_bound());
            }
        }
        eprintln!("causal, 169 shapes: worst O error / bound {worst:.3}");
    });
}

#[test]
fn mask_window_and_lengths_on_xformers_shapes() {
    both(|| {
        // One tiled and one decode configuration for all 169 shapes (the default
        // plans are covered by the causal test).
        let force = TileOverride {
            tr: Some(2),
            wg: Some(16),
            ..Default::default()
        };
        for n in 0..ODD.len() {
            for m in 0..ODD.len() {
                mask_window_and_lengths(fam(), n, m, force);
            }
        }
    });
}

/// GQA 4:2, odd head dims (59 → d_v 33), a random 50 % boolean mask over
/// [B, 1, n_q, n_kv], a sliding window, key and query lengths, with NaN in
/// every padded query, key and value row; n_q = ODD[n], n_kv = ODD[m].
fn mask_window_and_lengths(ctx: &Context, n: usize, m: usize, force: TileOverride) {
    let (nq, nk) = (ODD[n], ODD[m]);
    let shape = MaskShape {
        batch: true,
        heads: false,
        rows: true,
    };
    let p = AttentionProblem::new(2, 4, nq, nk, 59)
        .with_kv_heads(2)
        .with_head_dim_v(33)
        .with_kv_lens(true)
        .with_q_lens(true)
        .with_window(Window::sliding(2 + n * 3, m))
        .with_bool_mask(shape);
    let bits = random_bits(&p, shape, 0.5, (n * 13 + m) as u64);
    let kv_lens = [nk as u32, (nk as u32 * 2) / 3];
    let q_lens = [(nq as u32).div_ceil(2), nq as u32];
    let masks = Masks {
        kv_lens: Some(&kv_lens),
        q_lens: Some(&q_lens),
        mask: Some(&bits),
        ..Masks::default()
    };
    let poison = |q: &mut [f32], k: &mut [f32], v: &mut [f32]| {
        for b in 0..2 {
            let (qw, kw, vw) = (4 * 59, 2 * 59, 2 * 33);
            let (qr, kr) = (b * nq, b * nk);
            poison_rows(q, qw, qr + q_lens[b] as usize, qr + nq);
            poison_rows(k, kw, kr + kv_lens[b] as usize, kr + nk);
            poison_rows(v, vw, kr + kv_lens[b] as usize, kr + nk);
        }
    };
    let (_, out) = assert_masked(ctx, &p, &masks, force, &poison, 7 + n as u64);
    // Padded queries: exactly zero, LSE −∞.
    for (b, &ql) in q_lens.iter().enumerate() {
        for i in ql as usize..nq {
            let row = &out.o[(b * nq + i) * 4 * 33..][..4 * 33];
            assert!(row.iter().all(|&x| x == 0.0), "padded row {b},{i} not zero");
            for h in 0..4 {
                assert_eq!(out.lse[(b * 4 + h) * nq + i], f32::NEG_INFINITY);
            }
        }
    }
}

#[test]
fn bias_in_every_broadcast_shape() {
    both(|| {
        // Tiled (33×65) and decode (2×129, with key splits) kernels; 10 % of the
        // bias −∞; d 40.
        for (s, shape) in MaskShape::all().into_iter().enumerate() {
            for (nq, nk) in [(33, 65), (2, 129)] {
                let p = AttentionProblem::new(2, 3, nq, nk, 40).with_bias(shape);
                let bias = random_bias(&p, shape, 0.1, s as u64);
                let masks = Masks {
                    bias: Some(&bias),
                    ..Masks::default()
                };
                check(&p, &masks, 100 + s as u64);
            }
        }
    });
}

#[test]
fn causal_with_a_window_caps_the_windows_right_side() {
    both(|| {
        // flash-attn's causal=True with window_size=(L, R): the window's right
        // side capped at 0. The reference first: causal + (5, 7) is exactly
        // (5, 0), and differs from (5, 7) alone.
        let base = AttentionProblem::new(1, 2, 40, 70, 40);
        let (q, k, v) = check::inputs(&base, 3);
        let reference = |p: &AttentionProblem| {
            xattn::reference::attention_masked(p, &q, &k, &v, &Masks::default()).unwrap()
        };
        let both = base.with_window(Window::sliding(5, 7)).with_causal();
        assert_eq!(both.key_window(), Some(Window::sliding(5, 0)));
        let capped = reference(&both);
        assert_eq!(capped, reference(&base.with_window(Window::sliding(5, 0))));
        assert_ne!(capped, reference(&base.with_window(Window::sliding(5, 7))));
        // The kernels: tiled and decode, n_q below and above n_kv.
        for (nq, nk) in [(40, 70), (70, 40), (3, 200)] {
            let p = AttentionProblem::new(1, 2, nq, nk, 40)
                .with_window(Window::sliding(5, 7))
                .with_causal();
            check(&p, &Masks::default(), 31 + nq as u64);
        }
    });
}

#[test]
fn bias_and_bool_mask_together() {
    both(|| {
        // The reference first: a key hidden by the mask is as a −∞ bias.
        let shape = MaskShape {
            batch: true,
            heads: false,
            rows: true,
        };
        let p = AttentionProblem::new(2, 2, 9, 40, 16)
            .with_bias(shape)
            .with_bool_mask(shape);
        let bias = random_bias(&p, shape, 0.0, 5);
        let mut rng = Rng::new(6);
        let bools: Vec<bool> = (0..bias.len()).map(|_| rng.uniform() > 0.3).collect();
        let bits = pack_mask(&bools, p.n_kv);
        let hidden: Vec<f32> = bias
            .iter()
            .zip(&bools)
            .map(|(&b, &on)| if on { b } else { f32::NEG_INFINITY })
            .collect();
        let (q, k, v) = check::inputs(&p, 1);
        let together = Masks {
            bias: Some(&bias),
            mask: Some(&bits),
            ..Masks::default()
        };
        let bias_only = AttentionProblem {
            bool_mask: None,
            ..p
        };
        let as_bias = Masks {
            bias: Some(&hidden),
            ..Masks::default()
        };
        let r = |p: &AttentionProblem, m: &Masks<'_>| {
            xattn::reference::attention_masked(p, &q, &k, &v, m).unwrap()
        };
        assert_eq!(r(&p, &together), r(&bias_only, &as_bias));
        // The kernels, tiled and decode, in shapes that broadcast differently.
        for (s, (bias_shape, mask_shape)) in [
            (MaskShape::full(), MaskShape::default()),
            (MaskShape::default(), MaskShape::full()),
            (shape, shape),
        ]
        .into_iter()
        .enumerate()
        {
            for (nq, nk) in [(33, 65), (2, 129)] {
                let p = AttentionProblem::new(2, 3, nq, nk, 40)
                    .with_bias(bias_shape)
                    .with_bool_mask(mask_shape)
                    .with_causal();
                let bias = random_bias(&p, bias_shape, 0.1, s as u64);
                let bits = random_bits(&p, mask_shape, 0.3, s as u64 + 50);
                let masks = Masks {
                    bias: Some(&bias),
                    mask: Some(&bits),
                    ..Masks::default()
                };
                check(&p, &masks, 200 + s as u64);
            }
        }
    });
}

#[test]
fn bool_mask_in_every_broadcast_shape_and_density() {
    both(|| {
        for (s, shape) in MaskShape::all().into_iter().enumerate() {
            for (nq, nk) in [(65, 127), (3, 1025)] {
                for masked in [0.1, 0.5, 1.0] {
                    let p = AttentionProblem::new(2, 2, nq, nk, 40).with_bool_mask(shape);
                    let bits = random_bits(&p, shape, masked, s as u64 * 7 + nq as u64);
                    let masks = Masks {
                        mask: Some(&bits),
                        ..Masks::default()
                    };
                    let (_, out) = assert_masked(
                        fam(),
                        &p,
                        &masks,
                        TileOverride::default(),
                        &no_poison,
                        s as u64,
                    );
                    if masked == 1.0 {
                        assert!(out.o.iter().all(|&x| x == 0.0));
                        assert!(out.lse.iter().all(|&x| x == f32::NEG_INFINITY));
                    }
                }
            }
        }
    });
}

#[test]
fn rows_emptied_by_bias_or_mask_give_zero_and_neg_inf() {
    both(|| {
        // Row 0 of every head: all −∞ bias / all-false mask; the rest visible.
        let (nq, nk) = (33, 70);
        let shape = MaskShape {
            batch: false,
            heads: false,
            rows: true,
        };
        let p = AttentionProblem::new(1, 2, nq, nk, 40);
        let mut bias = vec![0.5f32; nq * nk];
        bias[..nk].fill(f32::NEG_INFINITY);
        let mut bools = vec![true; nq * nk];
        bools[..nk].fill(false);
        let bits = pack_mask(&bools, nk);
        for (p, masks) in [
            (
                p.with_bias(shape),
                Masks {
                    bias: Some(&bias),
                    ..Masks::default()
                },
            ),
            (
                p.with_bool_mask(shape),
                Masks {
                    mask: Some(&bits),
                    ..Masks::default()
                },
            ),
        ] {
            let (_, out) = assert_masked(fam(), &p, &masks, TileOverride::default(), &no_poison, 3);
            for h in 0..2 {
                assert_eq!(out.lse[h * nq], f32::NEG_INFINITY);
                assert!(out.lse[h * nq + 1].is_finite());
            }
            assert!(out.o[..2 * 40].iter().all(|&x| x == 0.0));
            assert!(out.o.iter().all(|x| x.is_finite()));
        }
    });
}

#[test]
fn varlen_with_an_empty_sequence_and_nan_between_sequences() {
    both(|| {
        varlen_with_empty_sequences(
            fam(),
            &[
                TileOverride::default(),
                TileOverride {
                    splits: Some(3),
                    ..Default::default()
                },
                TileOverride {
                    variant: Some(FlashVariant::Decode),
                    splits: Some(2),
                    ..Default::default()
                },
            ],
        );
    });
}

fn varlen_with_empty_sequences(ctx: &Context, forces: &[TileOverride]) {
    // Four packed sequences, the second empty on the query side and the
    // third on the key side; keys used only up to kv_lens (seqused_k) with
    // NaN in the unused rows between sequences, queries only up to q_lens
    // with NaN after them. Tiled, decode, and forced key splits.
    let cu_q = [0u32, 40, 40, 75, 140];
    let cu_k = [0u32, 90, 200, 200, 333];
    let kv_lens = [70u32, 110, 0, 120];
    let q_lens = [33u32, 0, 35, 60];
    let (vl, max_q, max_k) = VarLen::from_cu_seqlens(&cu_q, &cu_k);
    assert_eq!((vl.total_q, vl.total_kv, max_q, max_k), (140, 333, 65, 133));
    let masks = Masks {
        kv_lens: Some(&kv_lens),
        q_lens: Some(&q_lens),
        cu_seqlens_q: Some(&cu_q),
        cu_seqlens_k: Some(&cu_k),
        ..Masks::default()
    };
    let (h, hk, d) = (4, 2, 40);
    let poison = |q: &mut [f32], k: &mut [f32], v: &mut [f32]| {
        for b in 0..4 {
            let (q0, k0) = (cu_q[b] as usize, cu_k[b] as usize);
            poison_rows(q, h * d, q0 + q_lens[b] as usize, cu_q[b + 1] as usize);
            poison_rows(k, hk * d, k0 + kv_lens[b] as usize, cu_k[b + 1] as usize);
            poison_rows(v, hk * d, k0 + kv_lens[b] as usize, cu_k[b + 1] as usize);
        }
    };
    for window in [None, Some(Window::causal()), Some(Window::sliding(9, 4))] {
        let mut p = AttentionProblem::new(4, h, max_q, max_k, d)
            .with_kv_heads(hk)
            .with_varlen(vl)
            .with_kv_lens(true)
            .with_q_lens(true);
        p.window = window;
        for &force in forces {
            let (_, out) = assert_masked(ctx, &p, &masks, force, &poison, 11);
            // Padded queries (and the whole of sequence 1, and sequence 2's
            // rows, which have no key) are zero with LSE −∞.
            for b in 0..4 {
                let from = cu_q[b] + if kv_lens[b] == 0 { 0 } else { q_lens[b] };
                for t in from as usize..cu_q[b + 1] as usize {
                    assert!(out.o[t * h * d..][..h * d].iter().all(|&x| x == 0.0));
                    assert_eq!(out.lse[t], f32::NEG_INFINITY, "row {t}");
                }
            }
        }
    }
}

#[test]
fn varlen_decode_shapes_and_bhsd() {
    both(|| {
        // One query per sequence (decode over packed caches), MQA, BHSD packed
        // tensors ([H, total, d]), bias over keys.
        let cu_q = [0u32, 1, 2, 3];
        let cu_k = [0u32, 500, 501, 1500];
        let (vl, max_q, max_k) = VarLen::from_cu_seqlens(&cu_q, &cu_k);
        let shape = MaskShape {
            batch: true,
            heads: false,
            rows: false,
        };
        let p = AttentionProblem::new(3, 4, max_q, max_k, 64)
            .with_kv_heads(1)
            .with_varlen(vl)
            .with_layout(xattn::Layout::Bhsd)
            .with_bias(shape);
        let bias = random_bias(&p, shape, 0.05, 5);
        let masks = Masks {
            cu_seqlens_q: Some(&cu_q),
            cu_seqlens_k: Some(&cu_k),
            bias: Some(&bias),
            ..Masks::default()
        };
        check(&p, &masks, 12);
    });
}

#[test]
fn padded_batch_lengths_with_nan_padding_in_half_precision() {
    both(|| {
        // f16 and bf16 storage: causal with query and key lengths, NaN in the
        // padding (NaN survives the rounding to the storage type).
        for dtype in [Dtype::F16, Dtype::Bf16] {
            let (nq, nk, h, d) = (70, 90, 2, 40);
            let p = AttentionProblem::new(2, h, nq, nk, d)
                .with_dtype(dtype)
                .with_kv_lens(true)
                .with_q_lens(true)
                .with_causal();
            let (kv_lens, q_lens) = ([45u32, 90], [70u32, 21]);
            let masks = Masks {
                kv_lens: Some(&kv_lens),
                q_lens: Some(&q_lens),
                ..Masks::default()
            };
            let poison = |q: &mut [f32], k: &mut [f32], v: &mut [f32]| {
                for b in 0..2 {
                    poison_rows(q, h * d, b * nq + q_lens[b] as usize, (b + 1) * nq);
                    poison_rows(k, h * d, b * nk + kv_lens[b] as usize, (b + 1) * nk);
                    poison_rows(v, h * d, b * nk + kv_lens[b] as usize, (b + 1) * nk);
                }
            };
            assert_masked(fam(), &p, &masks, TileOverride::default(), &poison, 21);
        }
    });
}

#[test]
fn block_skipping_changes_nothing_but_the_work() {
    both(|| {
        // The same problems with skipping off (every key loaded and masked):
        // both within the rule, and the outputs agree to rounding.
        let shape = MaskShape::default();
        let p = AttentionProblem::new(2, 2, 129, 257, 40)
            .with_causal()
            .with_kv_lens(true)
            .with_bool_mask(shape);
        let bits = random_bits(&p, shape, 0.3, 9);
        let kv_lens = [257u32, 100];
        let masks = Masks {
            kv_lens: Some(&kv_lens),
            mask: Some(&bits),
            ..Masks::default()
        };
        let off = TileOverride {
            block_skip: Some(false),
            ..Default::default()
        };
        let (_, a) = assert_masked(fam(), &p, &masks, TileOverride::default(), &no_poison, 4);
        let (_, b) = assert_masked(fam(), &p, &masks, off, &no_poison, 4);
        let diff =
            a.o.iter()
                .zip(&b.o)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "skip on/off differ by {diff}");
        assert_eq!(
            a.lse.iter().map(|x| x.is_finite()).collect::<Vec<_>>(),
            b.lse.iter().map(|x| x.is_finite()).collect::<Vec<_>>()
        );
    });
}
