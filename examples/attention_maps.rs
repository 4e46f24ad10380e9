//! Attention maps: Stable Diffusion 64²-shaped cross-attention (8 heads,
//! 4 096 latents × 77 text tokens, d 40) with the probabilities of two heads
//! and of the mean over heads, checked against the f64 reference, timed
//! against the fused pass, and drawn as per-token maps folded into the
//! 64 × 64 latent grid.
//!
//! ```text
//! cargo run --release --example attention_maps [-- maps.svg]
//! ```

use std::time::Instant;

use xattn::check::{inputs, max_err};
use xattn::harness::heatmap;
use xattn::{
    AttentionProblem, AttentionProbs, AttentionTensors, Context, FlashAttention, Masks, ProbHeads,
};

fn main() -> xattn::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "attention_maps.svg".into());
    let ctx = Context::new()?;
    let p = AttentionProblem::new(1, 8, 4096, 77, 40);
    let flash = FlashAttention::new(&ctx, &p)?;
    println!("adapter: {}", ctx.caps().info.name);
    let (q, k, v) = inputs(&p, 11);
    let masks = Masks::default();
    let t = AttentionTensors::upload(&ctx, &p, &q, &k, &v, None)?;
    for which in [ProbHeads::Heads(vec![0, 5]), ProbHeads::Mean] {
        let probs = AttentionProbs::new(&flash, which.clone())?;
        let buf = ctx.storage("probs", 4 * probs.len() as u64);
        // Warm up (compiles both pipelines), then time each pass alone.
        probs.run_with(&flash, &q, &k, &v, &masks)?;
        let time = |f: &dyn Fn(&mut xattn::wgpu::CommandEncoder) -> xattn::Result<()>| {
            let runs = 5;
            let start = Instant::now();
            for _ in 0..runs {
                ctx.submit(f)?;
                ctx.wait()?;
            }
            Ok::<f64, xattn::Error>(start.elapsed().as_secs_f64() * 1e3 / runs as f64)
        };
        let fused = time(&|enc| flash.record(enc, &t.buffers()))?;
        let pass = time(&|enc| probs.record(enc, &t.buffers(), &buf))?;
        let got: Vec<f32> = ctx.download(&buf, probs.len())?;
        let want = xattn::reference::probabilities(&p, &q, &k, &masks, &which)?;
        println!(
            "{which:?} {:?}: fused {fused:.1} ms, probabilities pass {pass:.1} ms, max error {:.2e}",
            probs.shape(),
            max_err(&got, &want)
        );
        if which == ProbHeads::Mean {
            let panels = heatmap::panels(
                &got,
                &["mean of heads".into()],
                p.n_q,
                p.n_kv,
                Some((64, 64)),
                &[0, 1, 2, 3, 4, 5, 6, 7],
            );
            std::fs::write(&out, heatmap::svg(&panels)).map_err(|e| xattn::Error::Io {
                path: out.clone(),
                reason: e.to_string(),
            })?;
            println!("wrote {out}: 8 tokens' maps over the 64 × 64 latents");
        }
    }
    Ok(())
}
