//! The host API: validation errors, the integration path, caching, threads.

mod common;

use common::ctx;
use xattn::check::{inputs, max_err};
use xattn::wgpu;
use xattn::{
    AttentionBuffers, AttentionOutput, AttentionProblem, Context, ContextOptions, Error,
    FlashAttention, FlashVariant, MaskShape, Masks, NaiveAttention, TileOverride, VarLen, Window,
};

#[test]
fn no_matching_adapter_says_how_to_get_one() {
    let opts = ContextOptions {
        adapter_name: Some("no-such-adapter-anywhere".into()),
        ..Default::default()
    };
    let e = Context::with_options(&opts).unwrap_err();
    assert!(matches!(e, Error::NoAdapter { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
    assert!(msg.contains("no-such-adapter-anywhere"), "{msg}");
}

#[test]
fn bad_problems_get_typed_errors() {
    let ok = AttentionProblem::new(2, 8, 10, 20, 64);
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(
        AttentionProblem { batch: 0, ..ok }.validate(),
        Err(Error::ZeroDim { name: "batch" })
    );
    assert_eq!(
        AttentionProblem { n_q: 0, ..ok }.validate(),
        Err(Error::ZeroDim { name: "n_q" })
    );
    assert_eq!(
        ok.with_kv_heads(3).validate(),
        Err(Error::HeadsMismatch {
            heads: 8,
            kv_heads: 3
        })
    );
    assert!(matches!(
        AttentionProblem {
            head_dim: 257,
            ..ok
        }
        .validate(),
        Err(Error::HeadDim {
            name: "head_dim",
            got: 257,
            ..
        })
    ));
    assert!(matches!(
        ok.with_head_dim_v(0).validate(),
        Err(Error::HeadDim {
            name: "head_dim_v",
            got: 0,
            ..
        })
    ));
    assert!(matches!(
        ok.with_scale(f32::NAN).validate(),
        Err(Error::BadScale { .. })
    ));
    let lens = ok.with_kv_lens(true);
    assert_eq!(
        lens.validate_kv_lens(Some(&[1])),
        Err(Error::KvLensCount {
            got: 1,
            expected: 2
        })
    );
    assert_eq!(
        lens.validate_kv_lens(Some(&[3, 21])),
        Err(Error::KvLenTooLong {
            batch: 1,
            got: 21,
            n_kv: 20
        })
    );
    assert_eq!(
        lens.validate_kv_lens(None),
        Err(Error::KvLensCount {
            got: 0,
            expected: 2
        })
    );
}

#[test]
fn n_kv_zero_is_a_valid_problem_with_empty_rows() {
    let p = AttentionProblem::new(1, 2, 5, 0, 8);
    let (q, k, v) = inputs(&p, 1);
    let out = ctx().attention(&p, &q, &k, &v, None).unwrap();
    assert!(out.o.iter().all(|&x| x == 0.0));
    assert!(out.lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

#[test]
fn wrong_host_sizes_are_rejected_before_the_gpu() {
    let p = AttentionProblem::new(1, 2, 4, 6, 8);
    let (q, k, v) = inputs(&p, 1);
    let e = ctx().attention(&p, &q[1..], &k, &v, None).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                name: "q",
                got: 63,
                expected: 64,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("[1, 4, 2, 8]"), "{e}");
    let e = ctx().attention(&p, &q, &k, &v[..5], None).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { name: "v", .. }), "{e:?}");
}

#[test]
fn small_device_buffers_are_rejected() {
    let c = ctx();
    let p = AttentionProblem::new(1, 2, 4, 6, 8);
    let small = c.storage("small", 16);
    let big = c.storage("big", 4096);
    let bufs = AttentionBuffers {
        q: &big,
        k: &small,
        v: &big,
        lens: None,
        mask: None,
        o: &big,
        lse: &big,
    };
    let flash = FlashAttention::new(c, &p).unwrap();
    let mut enc = c.device().create_command_encoder(&Default::default());
    let e = flash.record(&mut enc, &bufs).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                name: "k",
                got: 4,
                expected: 96,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn tensors_past_the_binding_limit_are_rejected() {
    let c = ctx();
    let limit = c.caps().max_storage_binding.min(c.caps().max_buffer_size);
    // n_kv chosen so k alone needs more than the limit.
    let n_kv = (limit / (4 * 64)) as usize + 1;
    let p = AttentionProblem::new(1, 1, 1, n_kv, 64);
    let e = FlashAttention::new(c, &p).unwrap_err();
    assert!(
        matches!(e, Error::BindingTooLarge { name: "k", .. }),
        "{e:?}"
    );
    // The naive kernel's score matrix hits the limit long before the inputs do.
    let p = AttentionProblem::new(1, 8, 4096, 4096, 64);
    let e = NaiveAttention::new(c, &p).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BindingTooLarge {
                name: "naive score matrix",
                ..
            }
        ),
        "{e:?}"
    );
    // ... while the fused kernel needs no such buffer.
    assert!(FlashAttention::new(c, &p).is_ok());
}

#[test]
fn integration_api_records_into_the_callers_encoder() {
    let c = ctx();
    let p = AttentionProblem::new(2, 4, 33, 65, 32).with_kv_heads(2);
    let (q, k, v) = inputs(&p, 3);
    let reference = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
    let (qb, kb, vb) = (c.upload("q", &q), c.upload("k", &k), c.upload("v", &v));
    let ob = c.storage("o", 4 * p.o_len() as u64);
    let lb = c.storage("lse", 4 * p.lse_len() as u64);
    let flash = FlashAttention::new(c, &p).unwrap();
    let bufs = AttentionBuffers {
        q: &qb,
        k: &kb,
        v: &vb,
        lens: None,
        mask: None,
        o: &ob,
        lse: &lb,
    };
    // Two launches in one caller-owned encoder, one submit.
    let mut enc = c.device().create_command_encoder(&Default::default());
    flash.record(&mut enc, &bufs).unwrap();
    flash.record(&mut enc, &bufs).unwrap();
    c.queue().submit([enc.finish()]);
    let o: Vec<f32> = c.download(&ob, p.o_len()).unwrap();
    assert!(max_err(&o, &reference.o) < 1e-4);
}

#[test]
fn context_from_a_callers_device() {
    let c = ctx();
    let adapter_name = c.caps().info.name.clone();
    let opts = ContextOptions {
        adapter_name: Some(adapter_name),
        ..Default::default()
    };
    let adapter = Context::adapters(&opts).into_iter().next().unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let own = Context::from_device(device, queue);
    // WebGPU default limits on this device: the planner must fit them.
    assert_eq!(
        own.caps().max_workgroup_storage,
        wgpu::Limits::default().max_compute_workgroup_storage_size
    );
    let p = AttentionProblem::new(1, 2, 40, 50, 256);
    let flash = FlashAttention::new(&own, &p).unwrap();
    assert!(flash.plan().workgroup_bytes <= 16384, "{:?}", flash.plan());
    let (q, k, v) = inputs(&p, 4);
    let reference = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
    let out = flash.run(&q, &k, &v, None).unwrap();
    assert!(max_err(&out.o, &reference.o) < 1e-4);
}

#[test]
fn pipelines_are_compiled_once_per_key() {
    let c = Context::new().unwrap_or_else(|e| panic!("{e}"));
    let p = AttentionProblem::new(1, 2, 10, 10, 16);
    let (q, k, v) = inputs(&p, 5);
    c.attention(&p, &q, &k, &v, None).unwrap();
    let n = c.cached_pipelines();
    c.attention(&p, &q, &k, &v, None).unwrap();
    // Different batch and lengths, same head dims and tiles: same pipeline.
    let p2 = AttentionProblem::new(3, 2, 10, 30, 16);
    let (q, k, v) = inputs(&p2, 6);
    c.attention(&p2, &q, &k, &v, None).unwrap();
    assert_eq!(c.cached_pipelines(), n);
}

#[test]
fn concurrent_use_from_threads_is_safe() {
    // wgpu-core 30 can assert when two threads poll one device at once; the
    // Context serialises waits. Four threads, several launches each.
    let c = ctx();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let p = AttentionProblem::new(1, 2, 20 + t as usize, 40, 32);
                let (q, k, v) = inputs(&p, 100 + t);
                let reference = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
                for _ in 0..5 {
                    let out = c.attention(&p, &q, &k, &v, None).unwrap();
                    assert!(max_err(&out.o, &reference.o) < 1e-4);
                }
            });
        }
    });
}

#[test]
fn a_cold_compile_does_not_block_another_threads_cache_hit() {
    // The pipeline cache is locked per key while compiling: a cached kernel
    // is served while another thread compiles a new one (seconds on a CPU
    // driver with an empty shader cache). A device of its own: the other
    // tests of this binary run on the shared ones at the same time, and
    // wgpu's own device locks (a poll waiting on their kernels) are not
    // what this measures.
    let own = xattn::Context::new().unwrap();
    let c = &own;
    let warm = AttentionProblem::new(1, 2, 16, 16, 32);
    FlashAttention::new(c, &warm).unwrap();
    // A specialisation no other test builds, with a large generated source
    // (d 236, 4 rows per lane): wgpu's shader translation alone takes a
    // while, and drivers that compile at pipeline creation take longer.
    let cold = AttentionProblem::new(1, 1, 64, 24, 236).with_head_dim_v(220);
    let force = TileOverride {
        tr: Some(4),
        kv_texture: Some(false),
        ..Default::default()
    };
    std::thread::scope(|s| {
        let compile = s.spawn(|| {
            let t = std::time::Instant::now();
            FlashAttention::with_tiles(c, &cold, force).unwrap();
            t.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let t = std::time::Instant::now();
        FlashAttention::new(c, &warm).unwrap();
        let hit = t.elapsed();
        let compile = compile.join().unwrap();
        // Only meaningful when the compile was slow; then the hit must not
        // have waited for it.
        if compile > std::time::Duration::from_millis(300) {
            assert!(
                hit < compile / 4,
                "a cache hit took {hit:?} while another thread compiled for {compile:?}"
            );
        }
        eprintln!("cold compile {compile:?}, concurrent cache hit {hit:?}");
    });
}

#[test]
fn bad_masks_and_lengths_are_typed_errors() {
    let ctx = ctx();
    let p = AttentionProblem::new(2, 2, 5, 9, 8);
    let (q, k, v) = inputs(&p, 1);
    let run = |p: &AttentionProblem, m: &Masks<'_>| {
        FlashAttention::new(ctx, p).and_then(|f| f.run_with(&q, &k, &v, m))
    };
    let bad = |r: Result<AttentionOutput, Error>, name: &str| match r {
        Err(Error::BadSeqLens { name: n, .. }) if n == name => {}
        other => panic!("expected BadSeqLens({name}), got {other:?}"),
    };
    // Query lengths past n_q, missing or undeclared.
    bad(
        run(
            &p.with_q_lens(true),
            &Masks {
                q_lens: Some(&[5, 6]),
                ..Masks::default()
            },
        ),
        "q_lens",
    );
    bad(run(&p.with_q_lens(true), &Masks::default()), "q_lens");
    bad(
        run(
            &p,
            &Masks {
                q_lens: Some(&[1, 1]),
                ..Masks::default()
            },
        ),
        "q_lens",
    );
    // A bias with NaN or +∞; a mask of the wrong size.
    let shape = MaskShape::default();
    let mut bias = vec![0.0f32; 9];
    bias[4] = f32::NAN;
    let r = run(
        &p.with_bias(shape),
        &Masks {
            bias: Some(&bias),
            ..Masks::default()
        },
    );
    assert!(
        matches!(
            r,
            Err(Error::NonFinite {
                name: "bias",
                index: 4,
                ..
            })
        ),
        "{r:?}"
    );
    bias[4] = f32::INFINITY;
    let r = run(
        &p.with_bias(shape),
        &Masks {
            bias: Some(&bias),
            ..Masks::default()
        },
    );
    assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}");
    let r = run(
        &p.with_bool_mask(MaskShape::full()),
        &Masks {
            mask: Some(&[0u32; 3]),
            ..Masks::default()
        },
    );
    assert!(
        matches!(
            r,
            Err(Error::SizeMismatch {
                name: "mask",
                expected: 20,
                ..
            })
        ),
        "{r:?}"
    );
    // A bias or mask declared but not given, or given but not declared.
    for (p, m, name) in [
        (p.with_bias(shape), Masks::default(), "bias"),
        (
            p,
            Masks {
                bias: Some(&bias),
                ..Masks::default()
            },
            "bias",
        ),
        (
            p.with_bool_mask(shape).with_bias(shape),
            Masks {
                bias: Some(&[0.0; 9]),
                ..Masks::default()
            },
            "mask",
        ),
        (
            p,
            Masks {
                mask: Some(&[0u32; 1]),
                ..Masks::default()
            },
            "mask",
        ),
    ] {
        let r = run(&p, &m);
        assert!(
            matches!(r, Err(Error::BadMask { name: n, .. }) if n == name),
            "{name}: {r:?}"
        );
    }
    // Packed batches: cu_seqlens that decrease, do not end at the total, or
    // hold a sequence longer than the declared maximum.
    let vp = AttentionProblem::new(2, 2, 5, 9, 8).with_varlen(VarLen {
        total_q: 8,
        total_kv: 12,
    });
    let (vq, vk, vv) = inputs(&vp, 1);
    let runv = |cu_q: &[u32], cu_k: &[u32]| {
        FlashAttention::new(ctx, &vp).and_then(|f| {
            f.run_with(
                &vq,
                &vk,
                &vv,
                &Masks {
                    cu_seqlens_q: Some(cu_q),
                    cu_seqlens_k: Some(cu_k),
                    ..Masks::default()
                },
            )
        })
    };
    assert!(runv(&[0, 4, 8], &[0, 6, 12]).is_ok());
    bad(runv(&[0, 9, 8], &[0, 6, 12]), "cu_seqlens_q");
    bad(runv(&[0, 4, 7], &[0, 6, 12]), "cu_seqlens_q");
    bad(runv(&[0, 2, 8], &[0, 6, 12]), "cu_seqlens_q");
    bad(runv(&[0, 4, 8], &[0, 1, 12]), "cu_seqlens_k");
    bad(runv(&[0, 4, 8], &[0, 6]), "cu_seqlens_k");
    // Windows past the indexable range; the naive kernel says it does not do
    // masks, the simd kernel that it needs fixed-size subgroups.
    let r = FlashAttention::new(ctx, &p.with_window(Window::sliding(1 << 31, 0)));
    assert!(matches!(r, Err(Error::BadWindow { .. })), "{r:?}");
    let r = NaiveAttention::new(ctx, &p.with_causal());
    assert!(
        matches!(
            r,
            Err(Error::Unsupported {
                kernel: "naive",
                ..
            })
        ),
        "{r:?}"
    );
    let simd = TileOverride {
        variant: Some(FlashVariant::Simd),
        ..Default::default()
    };
    let mut no_subgroups = ctx.caps().clone();
    no_subgroups.subgroups = false;
    let r = xattn::plan(&p.with_causal(), &no_subgroups, simd);
    assert!(
        matches!(
            r,
            Err(Error::Unplannable {
                kernel: "flash_simd",
                ..
            })
        ),
        "{r:?}"
    );
    // Device buffers: a declared mask with no buffer.
    let pm = p.with_bool_mask(shape);
    let t = xattn::AttentionTensors::upload(ctx, &p, &q, &k, &v, None).unwrap();
    let fa = FlashAttention::new(ctx, &pm).unwrap();
    let r = fa.bind(&t.buffers());
    assert!(
        matches!(r, Err(Error::SizeMismatch { name: "mask", .. })),
        "{r:?}"
    );
    assert_eq!(pm.with_bool_mask(MaskShape::full()).bool_mask_words(), 20);
}
