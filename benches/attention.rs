//! Criterion benches: the fused kernel against the naive unfused kernel on the
//! issue's three shapes, throughput in FLOPs (4·B·H·n_q·n_kv·d); and causal
//! 1×8×1024² with block skipping on and off (throughput in dense FLOPs).
//!
//! `cargo bench` — each shape is checked against the f64 reference first.

use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xattn::check::inputs;
use xattn::{
    AttentionProblem, AttentionTensors, Context, FlashAttention, NaiveAttention, TileOverride,
};

fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| Context::new().unwrap_or_else(|e| panic!("{e}")))
}

fn bench(c: &mut Criterion) {
    let ctx = ctx();
    let shapes = [
        (
            "square_2k_d64_f32",
            AttentionProblem::new(1, 8, 2048, 2048, 64),
        ),
        (
            "sd_4096x77_d40_f32",
            AttentionProblem::new(2, 8, 4096, 77, 40),
        ),
        (
            "whisper_decode_1x1500_d64_f32",
            AttentionProblem::new(1, 20, 1, 1500, 64),
        ),
    ];
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    for (name, p) in shapes {
        // Correctness before timing.
        let report = xattn::check::check(ctx, &p, None, 1).expect("check");
        assert!(report.passed(), "{name}: {report:?}");

        let (q, k, v) = inputs(&p, 1);
        let tensors = AttentionTensors::upload(ctx, &p, &q, &k, &v, None).expect("upload");
        let bufs = tensors.buffers();
        group.throughput(Throughput::Elements(p.flops() as u64));
        let flash = FlashAttention::new(ctx, &p).expect("plan");
        group.bench_function(format!("fused/{name}"), |b| {
            b.iter(|| ctx.submit(|enc| flash.record(enc, &bufs)).expect("run"))
        });
        let naive = NaiveAttention::new(ctx, &p).expect("naive");
        let scores = ctx.storage("scores", NaiveAttention::scratch_bytes(&p));
        group.bench_function(format!("naive/{name}"), |b| {
            b.iter(|| {
                ctx.submit(|enc| naive.record(enc, &bufs, &scores))
                    .expect("run")
            })
        });
    }
    // Block skipping: causal, each launch checked against the reference.
    let p = AttentionProblem::new(1, 8, 1024, 1024, 64).with_causal();
    let (q, k, v) = inputs(&p, 1);
    let tensors = AttentionTensors::upload(ctx, &p, &q, &k, &v, None).expect("upload");
    let bufs = tensors.buffers();
    group.throughput(Throughput::Elements(p.flops() as u64));
    for (name, skip) in [("skip", true), ("no_skip", false)] {
        let force = TileOverride {
            block_skip: Some(skip),
            ..Default::default()
        };
        let flash = FlashAttention::with_tiles(ctx, &p, force).expect("plan");
        let report = xattn::check::check_masked(ctx, &p, &Default::default(), 1, |q, k, v| {
            flash.run(q, k, v, None)
        })
        .expect("check");
        assert!(report.passed(), "causal {name}: {report:?}");
        let bound = flash.bind(&bufs).expect("bind");
        group.bench_function(format!("fused/causal_1k_d64_{name}"), |b| {
            b.iter(|| {
                ctx.submit(|enc| {
                    bound.record(enc);
                    Ok(())
                })
                .expect("run")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
