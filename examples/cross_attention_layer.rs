//! The cross-attention layer on Whisper-large and Stable Diffusion 1.5
//! shapes with seeded weights: the time of the context projection (once per
//! context), of a forward call, and of the attention alone inside it, and
//! the error of the output against the f64 reference of the layer.
//!
//! ```text
//! cargo run --release --example cross_attention_layer
//! ```

use std::time::Instant;

use xattn::check::{max_err, Rng};
use xattn::{Context, CrossAttention, FlashAttention, LayerConfig, LayerWeights};

fn ms(f: impl Fn() -> xattn::Result<()>, runs: usize) -> xattn::Result<f64> {
    f()?; // warm: pipelines compiled, caches filled
    let t = Instant::now();
    for _ in 0..runs {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / runs as f64)
}

fn main() -> xattn::Result<()> {
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.caps().info.name);
    // (name, E, E_kv, H, n_q, n_kv): a Whisper-large decode step over 1 500
    // frames; Stable Diffusion 1.5's first cross-attention, 64² latents over
    // 77 CLIP tokens.
    for (name, e, e_kv, h, n_q, n_kv) in [
        ("Whisper-large step", 1280, 1280, 20, 1, 1500),
        ("SD1.5 64²", 320, 768, 8, 4096, 77),
    ] {
        let c = LayerConfig::new(e, e_kv, h, h);
        let mut rng = Rng::new(1);
        let mut w = |out: usize, inp: usize| rng.normals(out * inp, 1.0 / (inp as f64).sqrt());
        let weights = LayerWeights {
            w_q: w(e, e),
            b_q: Some(vec![0.1; e]),
            w_k: w(e, e_kv),
            b_k: None,
            w_v: w(e, e_kv),
            b_v: Some(vec![0.1; e]),
            w_o: w(e, e),
            b_o: Some(vec![0.1; e]),
        };
        let layer = CrossAttention::new(&ctx, c, &weights)?;
        let mut rng = Rng::new(2);
        let x = rng.normals(n_q * e, 1.0);
        let context = rng.normals(n_kv * e_kv, 1.0);
        let kv = layer.project_context(&context, 1, n_kv)?;
        let project = ms(|| layer.project_context(&context, 1, n_kv).map(|_| ()), 3)?;
        let forward = ms(|| layer.forward(&x, n_q, &kv, None).map(|_| ()), 5)?;
        let p = layer.problem(&kv, n_q, false);
        let flash = FlashAttention::new(&ctx, &p)?;
        let (q, k, v) = xattn::check::inputs(&p, 3);
        let attention = ms(|| flash.run(&q, &k, &v, None).map(|_| ()), 5)?;
        let y = layer.forward(&x, n_q, &kv, None)?;
        let want = xattn::reference::cross_attention_layer(
            &c, &weights, &x, &context, 1, n_q, n_kv, None,
        )?;
        println!(
            "{name}: project_context {project:.1} ms; forward {forward:.1} ms, of which attention \
             (run alone, uploads included) {attention:.1} ms; max error {:.2e}",
            max_err(&y, &want)
        );
    }
    Ok(())
}
