//! The cross-attention layer on Whisper-large and Stable Diffusion 1.5
//! shapes with seeded weights, in f32 and f16 storage: the context
//! projection (once per context), a bound step (one submission), each
//! stage of the step on its own (query projection, attention, output
//! projection), and the error of the output against the f64 reference of
//! the layer.
//!
//! ```text
//! cargo run --release --example cross_attention_layer
//! ```

use std::time::Instant;

use xattn::check::{max_err, Rng};
use xattn::{Context, CrossAttention, Dtype, LayerConfig, LayerWeights};

/// Median wall-clock milliseconds of `f` over `runs`, after a warm-up.
fn ms(f: impl Fn() -> xattn::Result<()>, runs: usize) -> xattn::Result<f64> {
    f()?;
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<xattn::Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
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
        let mut rng = Rng::new(2);
        let x = rng.normals(n_q * e, 1.0);
        let context = rng.normals(n_kv * e_kv, 1.0);
        for dtype in [Dtype::F32, Dtype::F16] {
            let mut c = LayerConfig::new(e, e_kv, h, h);
            c.dtype = dtype;
            let layer = CrossAttention::new(&ctx, c, &weights)?;
            let kv = layer.project_context(&context, 1, n_kv)?;
            let project = ms(|| layer.project_context(&context, 1, n_kv).map(|_| ()), 3)?;
            let step = layer.bind(n_q, &kv, None)?;
            let run = ms(|| step.run(&x).map(|_| ()), 7)?;
            let t = step.times(&x, 7)?;
            let y = step.run(&x)?;
            let want = xattn::reference::cross_attention_layer(
                &c, &weights, &x, &context, 1, n_q, n_kv, None,
            )?;
            println!(
                "{name} {dtype}: project_context {project:.1} ms; step {run:.1} ms (upload, \
                 one submission, download); stages alone: q projection {:.2} ms, attention \
                 {:.2} ms, output projection {:.2} ms; max error {:.2e}",
                t.q_proj_ms,
                t.attention_ms,
                t.o_proj_ms,
                max_err(&y, &want)
            );
        }
    }
    Ok(())
}
