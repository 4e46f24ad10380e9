//! Eight threads sharing one `Context` for a minute (`XATTN_SOAK_SECS` to
//! change it), each cycling through a different mix of problems (decode,
//! Stable-Diffusion-like f16, GQA with lengths, causal windows, bias and
//! mask, packed varlen, bf16 BHSD, the probabilities pass), every result
//! checked against the f64 reference with the tolerance rule. Polls are
//! serialised inside the context (wgpu-core 30.0.1's poll race, gfx-rs/wgpu
//! #9958, cannot trip); pipelines compile once per key while other threads'
//! cache hits go on.

mod common;

use std::time::{Duration, Instant};

use common::ctx;
use xattn::check::{check_masked, inputs, max_err};
use xattn::{
    pack_mask, AttentionProblem, AttentionProbs, Context, CrossAttention, Dtype, FlashAttention,
    Layout, MaskShape, Masks, ProbHeads, VarLen, Window,
};

fn send_sync<T: Send + Sync>() {}

/// One problem kind: runs once, checks, returns its name.
fn run_kind(ctx: &Context, kind: usize, seed: u64) -> &'static str {
    let fused = |p: &AttentionProblem, m: &Masks<'_>| {
        let r = check_masked(ctx, p, m, seed, |q, k, v| {
            FlashAttention::new(ctx, p)?.run_with(q, k, v, m)
        })
        .unwrap_or_else(|e| panic!("{p:?}: {e}"));
        assert!(r.passed(), "{p:?}: {r:?}");
    };
    match kind {
        0 => {
            fused(&AttentionProblem::new(1, 8, 1, 600, 64), &Masks::default());
            "decode 1×600 d64"
        }
        1 => {
            let p = AttentionProblem::new(1, 4, 256, 77, 40).with_dtype(Dtype::F16);
            fused(&p, &Masks::default());
            "SD-like 256×77 d40 f16"
        }
        2 => {
            let p = AttentionProblem::new(2, 8, 64, 300, 64)
                .with_kv_heads(2)
                .with_kv_lens(true);
            fused(&p, &Masks::kv_lens(Some(&[300, 111])));
            "GQA 8:2 64×300 lengths"
        }
        3 => {
            let p = AttentionProblem::new(1, 4, 128, 256, 32)
                .with_causal()
                .with_window(Window::sliding(64, 0));
            fused(&p, &Masks::default());
            "causal + window 128×256"
        }
        4 => {
            let shape = MaskShape {
                batch: true,
                heads: false,
                rows: true,
            };
            let p = AttentionProblem::new(2, 2, 33, 70, 16)
                .with_bias(MaskShape::default())
                .with_bool_mask(shape);
            let bias: Vec<f32> = (0..70).map(|j| (j % 5) as f32 * -0.5).collect();
            let bools: Vec<bool> = (0..2 * 33 * 70).map(|i| i % 7 != 3).collect();
            let bits = pack_mask(&bools, 70);
            let m = Masks {
                bias: Some(&bias),
                mask: Some(&bits),
                ..Default::default()
            };
            fused(&p, &m);
            "bias + mask 33×70"
        }
        5 => {
            let (cq, ck) = ([0u32, 5, 5, 40], [0u32, 90, 100, 160]);
            let (vl, mq, mk) = VarLen::from_cu_seqlens(&cq, &ck);
            let p = AttentionProblem::new(3, 4, mq, mk, 24).with_varlen(vl);
            let m = Masks {
                cu_seqlens_q: Some(&cq),
                cu_seqlens_k: Some(&ck),
                ..Default::default()
            };
            fused(&p, &m);
            "packed varlen 3 sequences"
        }
        6 => {
            let p = AttentionProblem::new(1, 4, 100, 100, 48)
                .with_dtype(Dtype::Bf16)
                .with_layout(Layout::Bhsd);
            fused(&p, &Masks::default());
            "bf16 BHSD 100×100"
        }
        _ => {
            // The probabilities pass against the reference.
            let p = AttentionProblem::new(1, 4, 20, 150, 32);
            let flash = FlashAttention::new(ctx, &p).unwrap();
            let which = ProbHeads::Heads(vec![2]);
            let probs = AttentionProbs::new(&flash, which.clone()).unwrap();
            let (q, k, v) = inputs(&p, seed);
            let m = Masks::default();
            let (_, got) = probs.run_with(&flash, &q, &k, &v, &m).unwrap();
            let want = xattn::reference::probabilities(&p, &q, &k, &m, &which).unwrap();
            let naive = xattn::reference::probabilities_in::<f32>(&p, &q, &k, &m, &which).unwrap();
            let bound = 2.0 * max_err(&naive, &want) + 1e-5;
            assert!(max_err(&got, &want) <= bound);
            "probabilities 20×150"
        }
    }
}

#[test]
fn eight_threads_share_one_context_for_a_minute() {
    send_sync::<Context>();
    send_sync::<FlashAttention<'static>>();
    send_sync::<CrossAttention<'static>>();
    send_sync::<xattn::BoundAttention>();
    let secs: u64 = std::env::var("XATTN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ctx = ctx();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t = Instant::now();
    let counts: Vec<Vec<(&'static str, usize)>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                s.spawn(move || {
                    let mut counts = vec![("", 0usize); 8];
                    let mut i = 0;
                    // Each thread starts at its own kind: at any moment the
                    // eight run different problems.
                    while Instant::now() < deadline || i < 8 {
                        let kind = (t + i) % 8;
                        let name = run_kind(ctx, kind, (t * 1000 + i) as u64);
                        counts[kind] = (name, counts[kind].1 + 1);
                        i += 1;
                    }
                    counts
                })
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut total = 0;
    for kind in 0..8 {
        let runs: usize = counts.iter().map(|c| c[kind].1).sum();
        total += runs;
        println!("{:<28} {runs:>5} runs", counts[0][kind].0);
    }
    println!("8 threads, {secs:.1} s, {total} checked runs");
    assert!(counts.iter().all(|c| c.iter().all(|&(_, n)| n > 0)));
}
