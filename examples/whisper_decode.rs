//! A Whisper-large-shaped decode loop: 448 steps of cross-attention from one
//! new token per step (20 heads, d 64) to 1 500 encoder frames whose K and V
//! are uploaded and bound once.
//!
//! ```text
//! cargo run --release --example whisper_decode
//! ```
//!
//! Each step writes the new query into the same buffer and records one launch
//! into its own command encoder, as a model's decoder would between its own
//! kernels. Step 0 is checked against the f64 CPU reference.

use xattn::check::{inputs, max_err};
use xattn::{AttentionProblem, AttentionTensors, Context, FlashAttention};

fn main() -> xattn::Result<()> {
    let ctx = Context::new()?;
    let step = AttentionProblem::new(1, 20, 1, 1500, 64);
    let flash = FlashAttention::new(&ctx, &step)?;
    println!("adapter: {}", ctx.caps().info.name);
    println!("plan: {}", flash.plan().why);

    // Encoder K/V once (here seeded; a model writes its projections here),
    // bound as fixed for the whole utterance.
    let (q0, k, v) = inputs(&step, 7);
    let tensors = AttentionTensors::upload(&ctx, &step, &q0, &k, &v, None)?;
    let bound = flash.bind_fixed_kv(&tensors.buffers())?;

    let steps = 448;
    let queries: Vec<Vec<f32>> = (0..steps as u64)
        .map(|s| inputs(&step, 1000 + s).0)
        .collect();
    let t = std::time::Instant::now();
    for (i, q) in queries.iter().enumerate() {
        tensors.write_q(&ctx, q)?;
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        bound.record(&mut encoder);
        ctx.queue().submit([encoder.finish()]);
        if i == 0 {
            let out = tensors.download(&ctx)?;
            let reference = xattn::reference::attention(&step, q, &k, &v, None)?;
            println!(
                "step 0: max |O - ref| {:.2e}, max |LSE - ref| {:.2e}",
                max_err(&out.o, &reference.o),
                max_err(&out.lse, &reference.lse)
            );
        }
    }
    ctx.wait()?;
    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!(
        "{steps} steps: {ms:.3} ms per step, K/V read at {:.2} GB/s",
        step.kv_bytes() / (ms * 1e-3) / 1e9
    );
    Ok(())
}
