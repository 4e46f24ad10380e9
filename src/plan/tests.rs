//! Planner unit tests: every adapter preset, no device needed.
use super::*;
use crate::dtype::Dtype;
use crate::mask::{MaskShape, Window};

fn webgpu() -> DeviceCaps {
    DeviceCaps::webgpu_defaults(wgpu::AdapterInfo::new(
        wgpu::DeviceType::DiscreteGpu,
        wgpu::Backend::Vulkan,
    ))
}

/// The four adapters the planner is reasoned for.
fn adapters() -> [(&'static str, DeviceCaps); 4] {
    [
        ("lavapipe", DeviceCaps::lavapipe(2)),
        ("gpu32", DeviceCaps::discrete_gpu(32)),
        ("gpu64", DeviceCaps::discrete_gpu(64)),
        ("webgpu", webgpu()),
    ]
}

fn seeds() -> Vec<AttentionProblem> {
    let p = AttentionProblem::new;
    vec![
        p(2, 8, 4096, 77, 40),
        p(2, 8, 64, 77, 160),
        p(1, 20, 1, 1500, 64),
        p(1, 20, 448, 1500, 64),
        p(4, 12, 32, 257, 64),
        p(1, 1, 512, 50_176, 64),
        p(1, 8, 2048, 2048, 64),
        p(1, 4, 300, 300, 256).with_causal(),
        p(2, 8, 129, 65, 59)
            .with_kv_heads(2)
            .with_bias(MaskShape::full())
            .with_bool_mask(MaskShape::default()),
    ]
}

fn go(p: &AttentionProblem, caps: &DeviceCaps) -> FlashPlan {
    plan(p, caps, TileOverride::default()).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

#[test]
fn every_plan_fits_its_adapter_and_covers_every_key() {
    for (name, caps) in adapters() {
        for p in seeds() {
            let plan = go(&p, &caps);
            let what = format!("{name} {p:?}: {plan:?}");
            assert!(plan.workgroup_bytes <= caps.max_workgroup_storage, "{what}");
            assert!(plan.wg <= caps.max_invocations, "{what}");
            assert!(plan.grid.0 <= caps.max_workgroups_per_dim, "{what}");
            assert!(plan.grid.1 <= caps.max_workgroups_per_dim, "{what}");
            assert!(
                plan.splits as usize * plan.split_keys as usize >= p.n_kv,
                "{what}"
            );
            assert!(
                plan.chunk_keys >= 1 && plan.chunk_keys <= plan.split_keys.max(1),
                "{what}"
            );
            let slots = plan.grid.0 as usize * plan.grid.1 as usize;
            assert!(slots >= plan.q_blocks as usize * p.batch, "{what}");
            assert!(!plan.why.is_empty());
        }
    }
}

#[test]
fn variants_follow_the_query_rows_per_kv_head() {
    for (name, caps) in adapters() {
        let whisper = go(&AttentionProblem::new(1, 20, 1, 1500, 64), &caps);
        let want = if name == "lavapipe" {
            FlashVariant::Decode
        } else {
            FlashVariant::Lanes
        };
        assert_eq!(whisper.variant, want, "{name}");
        let square = go(&AttentionProblem::new(1, 8, 2048, 2048, 64), &caps);
        // GPUs: the lanes kernel, its sums by subgroup shuffles where the
        // adapter has subgroups and through workgroup memory where it has
        // none (WebGPU defaults), within the register budget either way.
        let want = if name == "lavapipe" {
            FlashVariant::Simd
        } else {
            FlashVariant::Lanes
        };
        assert_eq!(square.variant, want, "{name}");
        if name != "lavapipe" {
            assert_eq!(square.subgroups, caps.subgroups, "{name}");
            assert!(
                square.live_floats <= GPU_LIVE_FLOATS,
                "{name}: {}",
                square.why
            );
        }
        // GQA 8:1 with 2 query rows: 16 rows share one kv head.
        let gqa = AttentionProblem::new(1, 8, 2, 999, 64).with_kv_heads(1);
        assert_eq!(go(&gqa, &caps).variant, want, "{name}");
    }
}

#[test]
fn gpu_decode_plans_fill_subgroups_and_keep_the_register_budget() {
    for (name, caps) in adapters().into_iter().skip(1) {
        for d in [40, 64, 80, 128, 160, 256] {
            // Whisper's step and GQA 8:2 with 2 queries (8 rows per kv head).
            for p in [
                AttentionProblem::new(1, 20, 1, 1500, d),
                AttentionProblem::new(2, 8, 2, 3000, d).with_kv_heads(2),
            ] {
                let plan = go(&p, &caps);
                let what = format!("{name} d {d}: {}", plan.why);
                assert_eq!(plan.variant, FlashVariant::Lanes, "{what}");
                assert!(plan.live_floats <= GPU_LIVE_FLOATS, "{what}");
                let kl = plan.wg / plan.bc;
                assert!(
                    plan.wg >= 128 && plan.wg >= caps.subgroup_max_size,
                    "{what}"
                );
                assert_eq!(plan.subgroups, caps.subgroups, "{what}");
                if caps.subgroups {
                    assert!(kl <= caps.subgroup_min_size, "{what}");
                } else {
                    assert!(kl <= 4 || d == 256, "{what}");
                }
                // At least 128 keys per split.
                assert!(plan.split_keys >= 128, "{what}");
            }
        }
    }
    // d 64: 8 lanes of two vec4 columns per key, 16 keys per step.
    let p = AttentionProblem::new(1, 20, 1, 1500, 64);
    let plan = go(&p, &DeviceCaps::discrete_gpu(32));
    assert_eq!((plan.wg, plan.bc, plan.br), (128, 16, 1));
    // A forced subgroup plan on an adapter without subgroups says why.
    let force = TileOverride {
        variant: Some(FlashVariant::Lanes),
        subgroups: Some(true),
        ..Default::default()
    };
    assert!(matches!(
        plan_with(&p, &webgpu(), force),
        Err(Error::Unplannable { .. })
    ));
}

fn plan_with(p: &AttentionProblem, caps: &DeviceCaps, force: TileOverride) -> Result<FlashPlan> {
    plan(p, caps, force)
}

#[test]
fn tiles_per_adapter() {
    let square = AttentionProblem::new(1, 8, 2048, 2048, 64);
    // The tiled kernel on a CPU adapter (where it is not the default).
    let tiled = TileOverride {
        variant: Some(FlashVariant::Tiled),
        ..Default::default()
    };
    let cpu_tiled = |p: &AttentionProblem| plan(p, &DeviceCaps::lavapipe(2), tiled).unwrap();
    let cpu = cpu_tiled(&square);
    assert_eq!((cpu.tr, cpu.wg, cpu.bc, cpu.br), (4, 32, 16, 128));
    let gpu_tiled = plan(&square, &DeviceCaps::discrete_gpu(32), tiled).unwrap();
    assert_eq!((gpu_tiled.tr, gpu_tiled.wg, gpu_tiled.bc), (1, 64, 32));
    // The lanes kernel on a GPU: 16 row groups of 4 rows, 8 lanes per key
    // at d 64, one key per step; at d 128, 16 lanes per key.
    let gpu = go(&square, &DeviceCaps::discrete_gpu(32));
    assert_eq!(
        (gpu.variant, gpu.tr, gpu.wg, gpu.bc, gpu.br),
        (FlashVariant::Lanes, 4, 128, 1, 64)
    );
    let d128 = go(
        &AttentionProblem::new(1, 8, 2048, 2048, 128),
        &DeviceCaps::discrete_gpu(32),
    );
    assert_eq!((d128.tr, d128.br), (4, 32), "{}", d128.why);
    // WebGPU's 16 KiB: 32 rows of K and V at d 64 need 16 400 bytes.
    let web = plan(&square, &webgpu(), tiled).unwrap();
    assert_eq!(web.bc, 16);
    assert_eq!(tiled::workgroup_bytes(&square, 32), 16_400);
    // Few query rows: a narrower workgroup, never under 16.
    let blip = cpu_tiled(&AttentionProblem::new(4, 12, 32, 257, 64));
    assert_eq!((blip.tr, blip.wg), (2, 16));
    // d 256 at WebGPU's limit still plans, with small key blocks.
    let wide = plan(
        &AttentionProblem::new(1, 1, 300, 300, 256),
        &webgpu(),
        tiled,
    )
    .unwrap();
    assert!(wide.bc >= 4 && wide.workgroup_bytes <= 16_384, "{wide:?}");
    // Its default is the lanes kernel with workgroup-memory sums, within
    // the workgroup memory and the register budget.
    let lanes = go(&AttentionProblem::new(1, 1, 300, 300, 256), &webgpu());
    assert_eq!(
        (lanes.variant, lanes.subgroups),
        (FlashVariant::Lanes, false)
    );
    assert!(lanes.workgroup_bytes <= 16_384 && lanes.live_floats <= GPU_LIVE_FLOATS);
}

#[test]
fn host_threads_enter_through_the_caps() {
    // A grid of 3 workgroups: a CPU adapter splits keys to give each
    // thread about 4 workgroups, so the split count follows the threads.
    let p = AttentionProblem::new(1, 20, 1, 1500, 64);
    let two = go(&p, &DeviceCaps::lavapipe(2));
    let sixteen = go(&p, &DeviceCaps::lavapipe(16));
    assert!(sixteen.splits > two.splits, "{two:?} vs {sixteen:?}");
    // The same problem on the same caps plans the same: no hidden input.
    assert_eq!(go(&p, &DeviceCaps::lavapipe(2)), two);
    let mut packed = DeviceCaps::lavapipe(2);
    packed.packed_f16 = true;
    let half = p.with_dtype(Dtype::F16);
    assert_eq!(go(&half, &DeviceCaps::lavapipe(2)).io, TensorIo::F16);
    assert_eq!(go(&half, &packed).io, TensorIo::F16Packed);
}

#[test]
fn gpus_split_idle_grids_and_keep_full_ones() {
    for subgroup in [32, 64] {
        let gpu = DeviceCaps::discrete_gpu(subgroup);
        let perceiver = go(&AttentionProblem::new(1, 1, 512, 50_176, 64), &gpu);
        assert!(perceiver.splits >= 32, "{perceiver:?}");
        let full = go(&AttentionProblem::new(4, 16, 2048, 2048, 64), &gpu);
        assert_eq!(full.splits, 1);
        // 320 workgroups (under four per SM of a 132-SM part): split.
        let partial = go(&AttentionProblem::new(1, 10, 2048, 4096, 64), &gpu);
        assert_eq!(partial.q_blocks as usize * 10, 320, "{}", partial.why);
        assert!(partial.splits >= 2, "{}", partial.why);
        // The tiled kernel never leaves a subgroup partly empty.
        let tiled = TileOverride {
            variant: Some(FlashVariant::Tiled),
            ..Default::default()
        };
        let few = plan(&AttentionProblem::new(1, 2, 9, 300, 64), &gpu, tiled).unwrap();
        assert!(few.wg >= subgroup.max(16), "{}", few.why);
        assert_eq!(full.chunk_keys, 2048, "GPUs have no loop budget");
        assert_eq!(full.grid_stride, 1, "GPUs keep the plain order");
    }
}

#[test]
fn cpu_launches_stay_under_the_loop_budget() {
    let caps = DeviceCaps::lavapipe(2);
    for p in seeds() {
        let plan = go(&p, &caps);
        if plan.variant != FlashVariant::Tiled {
            continue;
        }
        let budget = loop_safe_keys(&p, plan.bc, plan.tr, plan.wg);
        assert!(plan.chunk_keys <= budget, "{p:?}: {plan:?}");
        assert_eq!(budget % plan.bc, 0, "whole blocks");
    }
    // The budget shrinks as the head dim and the rows per lane grow, and
    // masked builds (per-score checks) get less of it.
    let p = AttentionProblem::new(1, 1, 64, 100_000, 64);
    let wide = AttentionProblem::new(1, 1, 64, 100_000, 256);
    assert!(loop_safe_keys(&wide, 16, 4, 32) < loop_safe_keys(&p, 16, 4, 32));
    assert!(loop_safe_keys(&p, 16, 4, 32) < loop_safe_keys(&p, 16, 2, 32));
    assert!(loop_safe_keys(&p.with_causal(), 16, 4, 32) < loop_safe_keys(&p, 16, 4, 32));
    // Masked problems on CPU adapters get the strided workgroup order.
    let causal = go(
        &AttentionProblem::new(1, 8, 2048, 2048, 64).with_causal(),
        &caps,
    );
    assert_eq!(causal.grid_stride, CPU_GRID_STRIDE as u32);
}

#[test]
fn simd_is_the_cpu_default_and_needs_a_fixed_subgroup() {
    let p = AttentionProblem::new(1, 8, 256, 256, 64);
    let cpu = go(&p, &DeviceCaps::lavapipe(2));
    assert_eq!(
        (cpu.variant, cpu.wg, cpu.bc, cpu.tr),
        (FlashVariant::Simd, 8, 8, 2)
    );
    // Two rows per lane with texture K/V only where a row is at most 32
    // vec4s (d ≤ 64) or the scores loop (below), one launch covers the
    // keys (no carried state: one head's K/V within 1 MiB), and as many as
    // the queries fill.
    let lavapipe = DeviceCaps::lavapipe(2);
    for (d, n_q, n_kv, tr) in [
        (8, 256, 256, 2),
        (40, 256, 256, 2),
        (40, 64, 8192, 1),
        (48, 256, 256, 2),
        (64, 256, 256, 2),
        (80, 256, 256, 1),
        (128, 256, 256, 1),
        // Past 64 vec4s per row the scores loop: TR 2 up to d_v 160, not
        // for carried state (1 024 keys at d 160 pass 1 MiB).
        (160, 256, 77, 2),
        (160, 256, 1024, 1),
        (256, 256, 77, 1),
        (64, 8, 256, 1),
        (64, 9, 256, 2),
        (64, 64, 2048, 2),
        (64, 64, 4096, 1),
    ] {
        let got = go(&AttentionProblem::new(1, 8, n_q, n_kv, d), &lavapipe);
        assert_eq!(
            (got.variant, got.tr),
            (FlashVariant::Simd, tr),
            "d {d}, n_q {n_q}, n_kv {n_kv}"
        );
    }
    // f16 halves the bytes: Flamingo's 4 096 keys fit one launch again.
    let half = AttentionProblem::new(1, 8, 64, 4096, 64).with_dtype(Dtype::F16);
    assert_eq!(go(&half, &lavapipe).tr, 2);
    // K/V through texture mirrors 16 384 texels wide where the head dims
    // are multiples of 4; the storage buffers (and more rows per lane)
    // for odd head dims, for a forced storage plan and for a tensor too
    // large for the adapter's textures.
    assert_eq!(
        cpu.kv,
        KvAccess::Texture {
            width_log2: 14,
            q: true
        }
    );
    let odd = go(
        &AttentionProblem::new(1, 8, 256, 256, 59),
        &DeviceCaps::lavapipe(2),
    );
    assert_eq!((odd.kv, odd.tr), (KvAccess::Storage, 4));
    let storage = TileOverride {
        kv_texture: Some(false),
        ..Default::default()
    };
    let forced = plan(&p, &DeviceCaps::lavapipe(2), storage).unwrap();
    assert_eq!((forced.kv, forced.tr), (KvAccess::Storage, 4));
    let mut small = DeviceCaps::lavapipe(2);
    small.max_texture_dim = 64;
    assert_eq!(go(&p, &small).kv, KvAccess::Storage);
    // Masks, windows and lengths are the simd kernel's too.
    let masked = p.with_window(Window::sliding(4, 4)).with_kv_lens(true);
    assert_eq!(
        go(&masked, &DeviceCaps::lavapipe(2)).variant,
        FlashVariant::Simd
    );
    // With storage K/V, wide heads hold fewer rows per lane and few
    // queries fill fewer.
    let wide = plan(
        &AttentionProblem::new(1, 1, 256, 256, 160),
        &DeviceCaps::lavapipe(2),
        storage,
    )
    .unwrap();
    assert_eq!(wide.tr, 1);
    let few = plan(
        &AttentionProblem::new(1, 8, 20, 256, 64),
        &DeviceCaps::lavapipe(2),
        storage,
    )
    .unwrap();
    assert_eq!((few.variant, few.tr), (FlashVariant::Simd, 3));
    // No subgroups (WebGPU's defaults): the lanes kernel with its sums
    // through workgroup memory, and a forced simd plan says why it cannot
    // run.
    let web = go(&p, &webgpu());
    assert_eq!((web.variant, web.subgroups), (FlashVariant::Lanes, false));
    let simd = TileOverride {
        variant: Some(FlashVariant::Simd),
        ..Default::default()
    };
    assert!(matches!(
        plan(&p, &webgpu(), simd),
        Err(Error::Unplannable { .. })
    ));
}

#[test]
fn simd_plans_run_heads_fastest_while_all_kv_heads_fit_the_cache() {
    let cpu = DeviceCaps::lavapipe(2);
    // SD 64² (8 heads × 77 keys × d 40: 197 KiB of K/V), SDXL 4096×77 (394 KiB).
    let sd = AttentionProblem::new(2, 8, 4096, 77, 40);
    let sdxl = AttentionProblem::new(2, 10, 4096, 77, 64);
    for p in [&sd, &sdxl] {
        let plan = go(p, &cpu);
        assert!(plan.heads_inner, "{}", plan.why);
        assert!(plan.why.contains("heads fastest"), "{}", plan.why);
    }
    // Past HEADS_INNER_KV_BYTES (T5-base: 3 MiB), in BHSD (each head's rows
    // already contiguous), with one head, and on GPUs: the plain order.
    let t5 = AttentionProblem::new(1, 12, 512, 512, 64);
    const { assert!(12 * 512 * 128 * 4 > HEADS_INNER_KV_BYTES) };
    let bhsd = sd.with_layout(crate::layout::Layout::Bhsd);
    let one_head = AttentionProblem::new(2, 1, 4096, 77, 40);
    for p in [&t5, &bhsd, &one_head] {
        assert!(!go(p, &cpu).heads_inner, "{p:?}");
    }
    assert!(!go(&sd, &DeviceCaps::discrete_gpu(32)).heads_inner);
    // f16 halves the bytes: 8 kv heads of 256 keys at d 64 are 1 MiB in f32,
    // 512 KiB in f16.
    let half = AttentionProblem::new(1, 8, 1024, 256, 64);
    assert!(!go(&half, &cpu).heads_inner);
    assert!(go(&half.with_dtype(Dtype::F16), &cpu).heads_inner);
}

#[test]
fn simd_plans_cut_kv_past_a_megabyte_per_head_into_launches() {
    let cpu = DeviceCaps::lavapipe(2);
    // Perceiver IO: 50 176 keys × 128 floats × 4 B = 24.5 MiB of one head's
    // K/V, in 25 launches of at most 1 MiB (whole key blocks).
    let perceiver = go(&AttentionProblem::new(1, 1, 512, 50_176, 64), &cpu);
    assert_eq!(perceiver.splits, 1, "{}", perceiver.why);
    assert_eq!(perceiver.launches(), 25, "{}", perceiver.why);
    assert!(perceiver.chunk_keys as u64 * 512 <= split::CHUNK_KV_BYTES);
    assert_eq!(perceiver.chunk_keys % perceiver.bc, 0);
    assert!(
        perceiver.why.contains("stays in cache"),
        "{}",
        perceiver.why
    );
    // Flamingo's 2 MiB per head: two launches of 2 048 keys.
    let flamingo = go(&AttentionProblem::new(1, 8, 64, 4096, 64), &cpu);
    assert_eq!(flamingo.chunk_keys, 2048, "{}", flamingo.why);
    // Up to 1 MiB per head (square 2k), other kernels, and GPUs: one launch.
    let square = AttentionProblem::new(1, 8, 2048, 2048, 64);
    assert_eq!(go(&square, &cpu).launches(), 1);
    let gpu = go(
        &AttentionProblem::new(1, 1, 512, 50_176, 64),
        &DeviceCaps::discrete_gpu(32),
    );
    assert_eq!(gpu.launches(), 1, "{}", gpu.why);
    let tiled = TileOverride {
        variant: Some(FlashVariant::Tiled),
        ..Default::default()
    };
    let flamingo_tiled = plan(&AttentionProblem::new(1, 8, 64, 4096, 64), &cpu, tiled).unwrap();
    assert_eq!(flamingo_tiled.launches(), 1, "{}", flamingo_tiled.why);
    // f16 halves the bytes: Flamingo fits one launch.
    let half = AttentionProblem::new(1, 8, 64, 4096, 64).with_dtype(Dtype::F16);
    assert_eq!(go(&half, &cpu).launches(), 1);
}

#[test]
fn mirror_heights_are_never_powers_of_two() {
    // 16 384 texels per row: a fraction of a row, exact powers of two and
    // the rows around them all land on one side of llvmpipe's variant key.
    let cases = [
        (1, 3),
        (16_384, 3),
        (32_768, 3),
        (40_000, 3),
        (65_536, 5),
        (65_537, 5),
    ];
    for (texels, rows) in cases {
        assert_eq!(super::mirror_rows(texels, 14), rows, "{texels} texels");
    }
    for texels in (1..5_000_000).step_by(9_973) {
        let rows = super::mirror_rows(texels, 14);
        assert!(!rows.is_power_of_two() && rows * 16_384 >= texels && rows <= texels / 16_384 + 3);
    }
}
