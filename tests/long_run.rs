//! A long decode loop: 10 000 steps through one bound layer step (query
//! projection, attention, output projection; an upload, a submission and
//! a download each), with resident memory and the device's live objects
//! sampled as it runs. Both must stay flat; the outputs stay correct.

mod common;

use common::ctx;
use xattn::check::{layer_weights, max_err, Rng};
use xattn::reference::{cross_attention_layer, cross_attention_layer_in};
use xattn::{CrossAttention, LayerConfig};

/// Resident set size of this process, bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn ten_thousand_decode_steps_keep_memory_and_device_objects_flat() {
    let ctx = ctx();
    let c = LayerConfig::new(64, 64, 4, 4);
    let weights = layer_weights(&c, [true, false, true, true], 1);
    let mut rng = Rng::new(2);
    let layer = CrossAttention::new(ctx, c, &weights).unwrap();
    let n_kv = 300;
    let context = rng.normals(n_kv * 64, 3.0);
    let kv = layer.project_context(&context, 1, n_kv).unwrap();
    let step = layer.bind(1, &kv, None).unwrap();
    // 16 token states, cycled; each checked once against the reference.
    let tokens: Vec<Vec<f32>> = (0..16).map(|_| rng.normals(64, 3.0)).collect();
    let want: Vec<(Vec<f64>, f64)> = tokens
        .iter()
        .map(|x| {
            let r = cross_attention_layer(&c, &weights, x, &context, 1, 1, n_kv, None).unwrap();
            let n = cross_attention_layer_in::<f32>(&c, &weights, x, &context, 1, 1, n_kv, None)
                .unwrap();
            let bound = 2.0 * max_err(&n, &r) + 1e-5;
            (r, bound)
        })
        .collect();
    let counters = || {
        let h = ctx.device().get_internal_counters().hal;
        [
            ("buffers", h.buffers.read()),
            ("textures", h.textures.read()),
            ("bind groups", h.bind_groups.read()),
            ("buffer memory", h.buffer_memory.read()),
            ("memory allocations", h.memory_allocations.read()),
        ]
    };
    let steps = 10_000;
    let t = std::time::Instant::now();
    let mut samples = Vec::new();
    let mut first_outputs = Vec::new();
    for i in 0..steps {
        let y = step.run(&tokens[i % 16]).unwrap();
        if i < 16 {
            let (r, bound) = &want[i];
            let err = max_err(&y, r);
            assert!(err <= *bound, "step {i}: {err:.3e} > {bound:.3e}");
            first_outputs.push(y);
        } else if i % 97 == 0 {
            // Later steps give the same token the same output, bit for bit.
            assert_eq!(y, first_outputs[i % 16], "step {i}");
        }
        if (i + 1) % 1000 == 0 {
            samples.push((i + 1, rss(), counters()));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    for (i, rss, c) in &samples {
        println!(
            "step {i:>5}: RSS {:.1} MiB, {c:?}",
            *rss as f64 / (1 << 20) as f64
        );
    }
    println!(
        "{steps} steps in {secs:.1} s ({:.2} ms per step)",
        secs * 1e3 / steps as f64
    );
    // Flat from the first sample on (the first thousand steps warm the
    // allocators and caches).
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let growth = last.1 as i64 - first.1 as i64;
    assert!(
        growth < 8 << 20,
        "RSS grew {:.1} MiB between step {} and {}",
        growth as f64 / (1 << 20) as f64,
        first.0,
        last.0
    );
    // Live device objects: equal at every sample. (Counters need wgpu's
    // `counters` feature, which the crate enables.)
    for (i, _, c) in &samples[1..] {
        assert_eq!(
            c, &first.2,
            "device objects at step {i} against step {}",
            first.0
        );
    }
}
