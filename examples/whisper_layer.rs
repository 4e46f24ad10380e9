//! A Whisper-large-shaped cross-attention layer loaded from safetensors, a
//! decode loop on its cached encoder K/V, and one head's map over the
//! decoded tokens (what Whisper's word timestamps run dynamic time warping
//! over).
//!
//! ```text
//! cargo run --release --example whisper_layer [-- --dtype f16]
//! ```
//!
//! The weights are seeded, written in Hugging Face's names under Whisper's
//! prefix (the layout of `model.safetensors`), and read back: point
//! `from_safetensors` at a real checkpoint instead. Writes
//! `whisper_head_map.svg`.

use xattn::check::{max_err, Rng};
use xattn::harness::heatmap;
use xattn::{Context, CrossAttention, Dtype, LayerConfig, LayerWeights, ProbHeads, WeightNames};

const PREFIX: &str = "model.decoder.layers.0.encoder_attn.";

fn main() -> xattn::Result<()> {
    let dtype = match std::env::args()
        .skip_while(|a| a != "--dtype")
        .nth(1)
        .as_deref()
    {
        Some("f16") => Dtype::F16,
        Some("bf16") => Dtype::Bf16,
        _ => Dtype::F32,
    };
    // Whisper large: E 1280, 20 heads of 64, 1 500 encoder frames.
    let (e, heads, frames, steps) = (1280, 20, 1500, 24);
    let mut config = LayerConfig::new(e, e, heads, heads);
    config.dtype = dtype;

    // A checkpoint-shaped file (seeded weights; k_proj has no bias).
    let mut rng = Rng::new(1);
    let mut w = |n: usize| rng.normals(n, 1.0 / (e as f64).sqrt());
    let seeded = LayerWeights {
        w_q: w(e * e),
        b_q: Some(w(e)),
        w_k: w(e * e),
        b_k: None,
        w_v: w(e * e),
        b_v: Some(w(e)),
        w_o: w(e * e),
        b_o: Some(w(e)),
    };
    let file = seeded.to_safetensors(&config, PREFIX, WeightNames::HuggingFace, Dtype::F16)?;

    // Load, upload, project the utterance's encoder states once.
    let ctx = Context::new()?;
    let (weights, names) = LayerWeights::from_safetensors(&file, PREFIX, &config)?;
    println!(
        "adapter {}; weights in {names:?} names, stored {dtype}",
        ctx.caps().info.name
    );
    let layer = CrossAttention::new(&ctx, config, &weights)?;
    let mut rng = Rng::new(2);
    let encoder = rng.normals(frames * e, 1.0);
    let t = std::time::Instant::now();
    let kv = layer.project_context(&encoder, 1, frames)?;
    println!("project_context: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    // The decode loop: one bound step, one token per step, head 7's
    // probabilities over the 1 500 frames kept per step.
    let step = layer
        .bind(1, &kv, None)?
        .with_probs(ProbHeads::Heads(vec![7]))?;
    println!("attention plan: {}", step.attention().plan().why);
    let tokens: Vec<Vec<f32>> = (0..steps).map(|_| rng.normals(e, 1.0)).collect();
    let mut map = Vec::with_capacity(steps * frames);
    let t = std::time::Instant::now();
    let mut first = Vec::new();
    for (i, x) in tokens.iter().enumerate() {
        let (y, p) = step.run_probs(x)?;
        if i == 0 {
            first = y;
        }
        map.extend(p);
    }
    let per_step = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!("{steps} steps: {per_step:.2} ms per step (y and head 7's map downloaded)");

    // Step 0 against the f64 reference of the layer.
    let want = xattn::reference::cross_attention_layer(
        &config, &weights, &tokens[0], &encoder, 1, 1, frames, None,
    )?;
    println!(
        "step 0: max error against the f64 reference {:.2e}",
        max_err(&first, &want)
    );

    // Head 7 over the decoded tokens: tokens × frames.
    let panels = heatmap::panels(&map, &["head 7".into()], steps, frames, None, &[]);
    std::fs::write("whisper_head_map.svg", heatmap::svg(&panels)).map_err(|e| {
        xattn::Error::Io {
            path: "whisper_head_map.svg".into(),
            reason: e.to_string(),
        }
    })?;
    println!("wrote whisper_head_map.svg ({steps} tokens × {frames} frames)");
    Ok(())
}
