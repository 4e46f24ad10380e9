//! Learned latents as the queries: Flamingo's two cross-attentions.
//!
//! 1. A Perceiver-resampler-style layer: 64 learned latents (the same for
//!    every batch entry) attend to each video's visual features (8 frames ×
//!    256 patches = 2 048 tokens; shorter videos padded, with per-entry
//!    lengths), turning a variable number of features into 64 tokens.
//! 2. A gated cross-attention layer: the language model's 32 tokens attend
//!    to those 64 latents, y = x + tanh(α)·attention(x, latents), with α
//!    near 0 as at the start of Flamingo's training (the frozen LM is
//!    unchanged).
//!
//! ```text
//! cargo run --release --example perceiver_latents
//! ```
//!
//! Both against the f64 reference of the layer; seeded weights.

use std::time::Instant;

use xattn::check::{max_err, Rng};
use xattn::{Context, CrossAttention, LayerConfig, LayerWeights};

/// Seeded weights N(0, 1/in), biases on q and v.
fn weights(c: &LayerConfig, seed: u64) -> LayerWeights {
    let mut rng = Rng::new(seed);
    let (e, ekv) = (c.embed, c.kv_embed);
    let kvd = c.kv_heads * c.head_dim();
    let mut w = |out: usize, inp: usize| rng.normals(out * inp, 1.0 / (inp as f64).sqrt());
    LayerWeights {
        w_q: w(e, e),
        b_q: Some(vec![0.05; e]),
        w_k: w(kvd, ekv),
        b_k: None,
        w_v: w(kvd, ekv),
        b_v: Some(vec![0.05; kvd]),
        w_o: w(e, e),
        b_o: None,
    }
}

fn main() -> xattn::Result<()> {
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.caps().info.name);
    let (batch, latents, features, width) = (4, 64, 2048, 1024);
    let lens = [2048u32, 1024, 512, 2048];
    let mut rng = Rng::new(3);

    // 1. Latents → visual features (GQA: 16 query heads, 4 K/V heads).
    let resampler = LayerConfig::new(width, width, 16, 4);
    let w1 = weights(&resampler, 10);
    let layer1 = CrossAttention::new(&ctx, resampler, &w1)?;
    let learned = rng.normals(latents * width, 1.0);
    let x1: Vec<f32> = (0..batch).flat_map(|_| learned.iter().copied()).collect();
    let visual = rng.normals(batch * features * width, 1.0);
    let t = Instant::now();
    let kv1 = layer1.project_context(&visual, batch, features)?;
    let project = t.elapsed().as_secs_f64() * 1e3;
    let step1 = layer1.bind(latents, &kv1, Some(&lens))?;
    step1.run(&x1)?; // warm
    let t = Instant::now();
    let resampled = step1.run(&x1)?;
    let attend = t.elapsed().as_secs_f64() * 1e3;
    let want1 = xattn::reference::cross_attention_layer(
        &resampler,
        &w1,
        &x1,
        &visual,
        batch,
        latents,
        features,
        Some(&lens),
    )?;
    println!(
        "resampler: {batch} × {latents} latents over up to {features} features: project_context \
         {project:.1} ms, step {attend:.1} ms; max error {:.2e}",
        max_err(&resampled, &want1)
    );

    // 2. Language tokens → the resampled latents, gated.
    let mut gated = LayerConfig::new(width, width, 16, 16);
    gated.gate = Some(0.05);
    let w2 = weights(&gated, 20);
    let layer2 = CrossAttention::new(&ctx, gated, &w2)?;
    let tokens = 32;
    let text = rng.normals(batch * tokens * width, 1.0);
    let kv2 = layer2.project_context(&resampled, batch, latents)?;
    let y = layer2.forward(&text, tokens, &kv2, None)?;
    let want2 = xattn::reference::cross_attention_layer(
        &gated, &w2, &text, &resampled, batch, tokens, latents, None,
    )?;
    // With tanh(0.05) ≈ 0.05 the layer barely moves the LM's states.
    let moved = y
        .iter()
        .zip(&text)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "gated: {batch} × {tokens} tokens over {latents} latents: max error {:.2e}; largest \
         change to x {moved:.3}",
        max_err(&y, &want2)
    );
    Ok(())
}
