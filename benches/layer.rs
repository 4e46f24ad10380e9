//! Criterion benches of the cross-attention layer: a bound step (query
//! projection, attention, output projection; one upload, one submission,
//! one download) and the context projection, on Whisper-large and Stable
//! Diffusion 1.5 shapes, in f32 and f16 storage. Throughput in FLOPs of the
//! four projections' and the attention's multiply-adds (2 per MAC).
//!
//! `cargo bench --bench layer` — each layer is checked against the f64
//! reference of the layer first.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xattn::check::{layer_weights, max_err, Rng};
use xattn::reference::{cross_attention_layer, cross_attention_layer_in};
use xattn::{Context, CrossAttention, Dtype, LayerConfig};

fn bench(c: &mut Criterion) {
    let ctx = Context::new().unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("layer");
    group.sample_size(10);
    // (name, E, E_kv, H, n_q, n_kv)
    for (name, e, e_kv, h, n_q, n_kv) in [
        ("whisper_large_step", 1280, 1280, 20, 1, 1500),
        ("sd15_64x64", 320, 768, 8, 4096, 77),
    ] {
        let c0 = LayerConfig::new(e, e_kv, h, h);
        let weights = layer_weights(&c0, [true, false, true, true], 1);
        let mut rng = Rng::new(2);
        let x = rng.normals(n_q * e, 3.0);
        let context = rng.normals(n_kv * e_kv, 3.0);
        for dtype in [Dtype::F32, Dtype::F16] {
            let mut cfg = LayerConfig::new(e, e_kv, h, h);
            cfg.dtype = dtype;
            let layer = CrossAttention::new(&ctx, cfg, &weights).expect("layer");
            let kv = layer.project_context(&context, 1, n_kv).expect("context");
            let step = layer.bind(n_q, &kv, None).expect("bind");
            // Correctness before timing: the tolerance rule, with one
            // storage ulp of slack for f16's stored output.
            let y = step.run(&x).expect("step");
            let want = cross_attention_layer(&cfg, &weights, &x, &context, 1, n_q, n_kv, None)
                .expect("reference");
            let naive =
                cross_attention_layer_in::<f32>(&cfg, &weights, &x, &context, 1, n_q, n_kv, None)
                    .expect("naive");
            let top = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let slack = if dtype == Dtype::F32 {
                1e-5
            } else {
                top / 1024.0
            };
            let (err, bound) = (max_err(&y, &want), 2.0 * max_err(&naive, &want) + slack);
            assert!(err <= bound, "{name} {dtype}: {err:.3e} > {bound:.3e}");
            let macs = 2 * n_q * e * e + 2 * n_q * n_kv * e;
            group.throughput(Throughput::Elements(2 * macs as u64));
            group.bench_function(format!("step/{name}_{dtype}"), |b| {
                b.iter(|| step.run(&x).expect("step"))
            });
            group.throughput(Throughput::Elements(4 * (n_kv * e_kv * e) as u64));
            group.bench_function(format!("project_context/{name}_{dtype}"), |b| {
                b.iter(|| layer.project_context(&context, 1, n_kv).expect("context"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
