//! Split-KV (flash-decoding), the decode kernel and the bound handle for
//! decode loops, against the f64 reference with the tolerance rule.

mod common;

use common::{ctx, gpu_plan_ctx};
use xattn::check::{check_with, inputs, max_err};
use xattn::wgpu;
use xattn::{
    plan, AttentionBuffers, AttentionProblem, AttentionTensors, Context, DeviceCaps, Dtype, Error,
    FlashAttention, FlashVariant, KvAccess, TileOverride, MAX_SPLITS,
};

fn forced(variant: FlashVariant, splits: u32) -> TileOverride {
    TileOverride {
        variant: Some(variant),
        splits: Some(splits),
        ..Default::default()
    }
}

/// Runs the fused kernel with `force` under the tolerance rule and returns
/// its plan's split count.
fn assert_close_forced(
    p: &AttentionProblem,
    lens: Option<&[u32]>,
    seed: u64,
    force: TileOverride,
) -> u32 {
    let flash = FlashAttention::with_tiles(ctx(), p, force).unwrap();
    let r = check_with(ctx(), p, lens, seed, |q, k, v| flash.run(q, k, v, lens)).unwrap();
    assert!(
        r.passed(),
        "{p:?} {force:?} lens {lens:?}: O {:.3e} (bound {:.3e}), LSE {:.3e} (bound {:.3e})",
        r.fused.o,
        r.o_bound(),
        r.fused.lse,
        r.lse_bound()
    );
    flash.plan().splits
}

#[test]
fn forced_split_counts_on_ragged_key_ranges() {
    // Key lengths: all keys, fewer than one split holds, and none.
    for (variant, n_q, d) in [
        (FlashVariant::Decode, 1, 64),
        (FlashVariant::Decode, 3, 59),
        (FlashVariant::Lanes, 3, 59),
        (FlashVariant::Tiled, 33, 40),
    ] {
        for n_kv in [1usize, 77, 1500, 4097] {
            let p = AttentionProblem::new(3, 4, n_q, n_kv, d)
                .with_kv_heads(2)
                .with_kv_lens(true);
            let lens = [n_kv as u32, n_kv.min(5) as u32, 0];
            for splits in [1, 2, 3, 7, MAX_SPLITS] {
                let seed = (n_kv * 10 + splits as usize) as u64;
                let got = assert_close_forced(&p, Some(&lens), seed, forced(variant, splits));
                // Every split holds at least one key block.
                assert!(got <= splits && (got as usize) <= n_kv, "{got} splits");
                if n_kv >= 1500 {
                    assert!(
                        got >= splits.min(64),
                        "{variant:?} {n_kv}: {got} < {splits}"
                    );
                }
            }
        }
    }
}

#[test]
fn fully_masked_splits_combine_to_zero_and_minus_infinity() {
    let p = AttentionProblem::new(3, 2, 1, 1500, 64).with_kv_lens(true);
    let lens = [0u32, 3, 1500];
    let (q, k, v) = inputs(&p, 21);
    let reference = xattn::reference::attention(&p, &q, &k, &v, Some(&lens)).unwrap();
    let flash = FlashAttention::with_tiles(ctx(), &p, forced(FlashVariant::Decode, 7)).unwrap();
    assert_eq!(flash.plan().splits, 7);
    let out = flash.run(&q, &k, &v, Some(&lens)).unwrap();
    // Batch 0: every split empty. Batch 1: six of seven splits empty.
    let row = p.heads * p.head_dim_v;
    assert!(out.o[..row].iter().all(|&x| x == 0.0), "{:?}", &out.o[..8]);
    assert!(out.lse[..p.heads].iter().all(|&x| x == f32::NEG_INFINITY));
    assert!(out.o[row..]
        .iter()
        .chain(&out.lse[p.heads..])
        .all(|x| x.is_finite()));
    assert!(max_err(&out.o, &reference.o) < 1e-4);
    assert!(max_err(&out.lse, &reference.lse) < 1e-4);
}

#[test]
fn decode_kernel_packs_gqa_heads_and_handles_odd_head_dims() {
    // MQA 8:1 (8 rows per kv head), GQA 8:2 with 3 queries (12 rows: two
    // row blocks, the second ragged), odd and large head dims, d_v ≠ d.
    for (i, p) in [
        AttentionProblem::new(2, 8, 1, 300, 64).with_kv_heads(1),
        AttentionProblem::new(1, 8, 3, 799, 111).with_kv_heads(2),
        AttentionProblem::new(1, 4, 2, 129, 256),
        AttentionProblem::new(2, 3, 1, 77, 7).with_head_dim_v(13),
    ]
    .iter()
    .enumerate()
    {
        let force = TileOverride {
            variant: Some(FlashVariant::Decode),
            ..Default::default()
        };
        assert_close_forced(p, None, 30 + i as u64, force);
    }
}

#[test]
fn decode_kernel_counts_every_key_once_at_every_key_step_edge() {
    // A scale of 1e-4 flattens the softmax, so every key weighs about
    // 1/n_kv and a key dropped or counted twice moves O by about |v|/n_kv
    // (2e-3 at 1 500 keys), far past the tolerance; with the usual scale
    // one key dominates each row and hides such an error. Key counts
    // around the decode kernel's steps of WG·KU keys (8·4 on CPU
    // adapters): fewer than one step, one step and one key, a ragged last
    // step, lengths that end mid-step, and forced splits that cut the
    // range mid-step.
    let force = |splits| TileOverride {
        variant: Some(FlashVariant::Decode),
        splits,
        ..Default::default()
    };
    for (i, (n_kv, lens, splits)) in [
        (1, None, None),
        (31, None, None),
        (33, None, None),
        (1500, None, None),
        (1500, Some(vec![1483, 29]), None),
        (1500, None, Some(3)),
    ]
    .into_iter()
    .enumerate()
    {
        let p = AttentionProblem::new(2, 4, 1, n_kv, 64)
            .with_scale(1e-4)
            .with_kv_lens(lens.is_some());
        assert_close_forced(&p, lens.as_deref(), 50 + i as u64, force(splits));
    }
}

#[test]
fn bound_handle_runs_many_decode_steps_against_one_encoder_kv() {
    bound_decode_loop(ctx());
}

#[test]
fn bound_decode_loop_under_gpu_plans() {
    // XATTN_PLAN=gpu: the lanes kernel (decode shape, splits, the combine)
    // through the same bound handles.
    bound_decode_loop(gpu_plan_ctx());
}

fn bound_decode_loop(c: &Context) {
    // Encoder K/V uploaded and bound once; each step writes a new query into
    // the same buffer (converted to the storage type) and records into its
    // own encoder. An odd row count (1×5×7 = 35 halves) ends mid-word; d 16
    // reads K/V through texture mirrors on CPU adapters. Nine query rows per
    // head run the simd kernel on lavapipe, which reads Q through a mirror
    // as well: refilled at every record, K/V bound once or not.
    for (dtype, ulp, d, n_q) in [
        (Dtype::F32, 0.0, 7, 1),
        (Dtype::F16, 2f64.powi(-10), 7, 1),
        (Dtype::Bf16, 2f64.powi(-7), 7, 1),
        (Dtype::F32, 0.0, 16, 1),
        (Dtype::F16, 2f64.powi(-10), 16, 1),
        (Dtype::Bf16, 2f64.powi(-7), 16, 1),
        (Dtype::F32, 0.0, 16, 9),
        (Dtype::Bf16, 2f64.powi(-7), 16, 9),
    ] {
        let p = AttentionProblem::new(1, 5, n_q, 333, d).with_dtype(dtype);
        let flash = FlashAttention::new(c, &p).unwrap();
        let round = |x| dtype.round_all(x);
        let (q0, k, v) = inputs(&p, 40);
        let (k, v) = (round(k), round(v));
        let t = AttentionTensors::upload(c, &p, &q0, &k, &v, None).unwrap();
        // Encoder K/V bound as fixed, and bound to be copied at every record
        // (texture mirrors on CPU adapters): the same results.
        let fixed = flash.bind_fixed_kv(&t.buffers()).unwrap();
        let bound = flash.bind(&t.buffers()).unwrap();
        for step in 0..10u64 {
            let bound = if step % 2 == 0 { &fixed } else { &bound };
            let q = round(inputs(&p, 41 + step).0);
            t.write_q(c, &q).unwrap();
            let mut enc = c.device().create_command_encoder(&Default::default());
            bound.record(&mut enc);
            c.queue().submit([enc.finish()]);
            let out = t.download(c).unwrap();
            let r = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
            // f32: within 2e-5; half: O rounded once to the storage type.
            let max_o = r.o.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
            let bound_o = 2e-5 + max_o * ulp;
            assert!(
                max_err(&out.o, &r.o) < bound_o,
                "{dtype} step {step}: {:.3e}",
                max_err(&out.o, &r.o)
            );
            assert!(max_err(&out.lse, &r.lse) < 2e-5, "{dtype} step {step}");
        }
    }
}

/// Zero-filled tensors of `p` on the shared context.
fn zero_tensors(p: &AttentionProblem) -> AttentionTensors {
    let zeros = |n| vec![0.0; n];
    AttentionTensors::upload(
        ctx(),
        p,
        &zeros(p.q_len()),
        &zeros(p.k_len()),
        &zeros(p.v_len()),
        None,
    )
    .unwrap()
}

#[test]
fn bind_rejects_buffers_too_small_for_the_problem() {
    let p = AttentionProblem::new(1, 2, 1, 64, 32);
    let flash = FlashAttention::new(ctx(), &p).unwrap();
    let small = ctx().storage("small", 16);
    let t = zero_tensors(&p);
    let bufs = AttentionBuffers {
        k: &small,
        ..t.buffers()
    };
    assert!(matches!(
        flash.bind(&bufs),
        Err(Error::SizeMismatch { name: "k", .. })
    ));
}

#[test]
fn bind_names_a_buffer_without_the_copy_its_mirror_needs() {
    // Nine rows per head: the simd kernel on lavapipe, which copies Q, K and
    // V into texture mirrors; a q buffer without COPY_SRC is refused by
    // name. Where the plan has no mirrors (GPUs, GL) the same buffer binds.
    let p = AttentionProblem::new(1, 2, 9, 64, 32);
    let flash = FlashAttention::new(ctx(), &p).unwrap();
    let t = zero_tensors(&p);
    let q = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("q without COPY_SRC"),
        size: (p.q_len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bufs = AttentionBuffers {
        q: &q,
        ..t.buffers()
    };
    match flash.plan().kv {
        KvAccess::Texture { q: true, .. } => {
            let err = flash.bind(&bufs).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BufferUsage {
                        name: "q",
                        missing: "COPY_SRC",
                        ..
                    }
                ),
                "{err}"
            );
            // Without mirrors the same buffer binds.
            let storage = FlashAttention::with_tiles(
                ctx(),
                &p,
                TileOverride {
                    kv_texture: Some(false),
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(storage.bind(&bufs).is_ok());
        }
        _ => assert!(flash.bind(&bufs).is_ok()),
    }
}

fn caps(device_type: wgpu::DeviceType) -> DeviceCaps {
    let mut c =
        DeviceCaps::webgpu_defaults(wgpu::AdapterInfo::new(device_type, wgpu::Backend::Noop));
    c.max_workgroup_storage = 32768;
    c
}

#[test]
fn planner_splits_where_the_grid_would_leave_the_device_idle() {
    let gpu = caps(wgpu::DeviceType::DiscreteGpu);
    let whisper = AttentionProblem::new(1, 20, 1, 1500, 64);
    let w = plan(&whisper, &gpu, TileOverride::default()).unwrap();
    assert_eq!(w.variant, FlashVariant::Lanes);
    // 20 workgroups: split toward 512, but no split under 128 keys (README).
    assert_eq!((w.splits, w.split_keys), (11, 137), "{w:?}");
    let perceiver = AttentionProblem::new(1, 1, 512, 50_176, 64);
    let pc = plan(&perceiver, &gpu, TileOverride::default()).unwrap();
    assert_eq!((pc.variant, pc.subgroups), (FlashVariant::Lanes, false));
    // Few workgroups: splits of at least 128 keys, toward ~512 workgroups.
    let workgroups = pc.grid.0 as usize * pc.grid.1 as usize;
    assert!(pc.splits > 1 && pc.split_keys >= 128, "{pc:?}");
    assert!(
        pc.splits as usize * pc.split_keys as usize >= 50_176,
        "{pc:?}"
    );
    assert!(
        (256..=1024).contains(&workgroups),
        "{workgroups} workgroups: {pc:?}"
    );
    // Enough workgroups already: no split, one launch.
    let square = AttentionProblem::new(4, 16, 2048, 2048, 64);
    let sq = plan(&square, &gpu, TileOverride::default()).unwrap();
    assert_eq!((sq.splits, sq.chunk_keys, sq.split_keys), (1, 2048, 2048));
    // CPU adapters cut long ranges into parallel splits of one launch each.
    let cpu = caps(wgpu::DeviceType::Cpu);
    let long = AttentionProblem::new(1, 8, 512, 16_384, 64);
    let l = plan(&long, &cpu, TileOverride::default()).unwrap();
    assert!(l.splits > 1 && l.chunk_keys == l.split_keys, "{l:?}");
    assert!(l.splits as usize * l.split_keys as usize >= 16_384);
    // Where the splits' partial state would pass the binding limit (128 MiB
    // here: 4.5 MB per split at 8×2048 rows) the splits are capped and each
    // is cut into carried launches instead.
    let capped = AttentionProblem::new(1, 8, 2048, 16_384, 64);
    let c = plan(&capped, &cpu, TileOverride::default()).unwrap();
    let per_split = 8 * 2048 * (4 + 64) * 4;
    assert_eq!(
        c.splits as u64,
        cpu.max_storage_binding / per_split,
        "{c:?}"
    );
    assert!(c.chunk_keys < c.split_keys, "{c:?}");
    assert!(c.splits as usize * c.split_keys as usize >= 16_384);
}

#[test]
fn forced_splits_are_clamped_and_oversized_state_is_a_typed_error() {
    let cpu = caps(wgpu::DeviceType::Cpu);
    let tiny = AttentionProblem::new(1, 1, 1, 3, 8);
    let t = plan(&tiny, &cpu, forced(FlashVariant::Decode, 100)).unwrap();
    assert_eq!(t.splits, 3);
    let mut small = cpu.clone();
    small.max_storage_binding = 1 << 20;
    small.max_buffer_size = 1 << 20;
    let big = AttentionProblem::new(1, 8, 256, 4096, 64);
    match plan(&big, &small, forced(FlashVariant::Tiled, 64)) {
        Err(Error::Unplannable { reason, .. }) => {
            assert!(reason.contains("partial state"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gpu_decode_kernel_spreads_the_head_dim_across_lanes() {
    // Subgroup and workgroup-memory reductions; head dims whose vec4 columns
    // the lanes divide (64, 256) or not (40, 59, 7 with d_v 13); GQA rows
    // packed (8:1, 8:2 with 3 queries: a ragged second row block); one and
    // several key groups per workgroup, key splits, and launches that carry
    // the state (chunk_keys).
    let cases = [
        (
            AttentionProblem::new(2, 8, 1, 300, 64).with_kv_heads(1),
            8,
            1,
            None,
        ),
        (
            AttentionProblem::new(1, 8, 3, 799, 59).with_kv_heads(2),
            32,
            3,
            None,
        ),
        (AttentionProblem::new(1, 4, 2, 129, 256), 16, 1, Some(50)),
        (
            AttentionProblem::new(2, 3, 1, 77, 7).with_head_dim_v(13),
            64,
            2,
            None,
        ),
        (
            AttentionProblem::new(1, 2, 1, 1000, 40).with_kv_lens(true),
            32,
            7,
            Some(96),
        ),
    ];
    for sub in [true, false] {
        for (i, (p, wg, splits, chunk)) in cases.iter().enumerate() {
            let force = TileOverride {
                variant: Some(FlashVariant::Lanes),
                subgroups: Some(sub),
                wg: Some(*wg),
                splits: Some(*splits),
                chunk_keys: *chunk,
                ..Default::default()
            };
            let lens: Vec<u32> = (0..p.batch as u32).map(|b| 1000 - 333 * b).collect();
            let lens = p.kv_lens.then_some(&lens[..]);
            assert_close_forced(p, lens, 40 + i as u64, force);
            let plan = plan(p, ctx().caps(), force).unwrap();
            assert_eq!(plan.subgroups, sub, "{}", plan.why);
        }
    }
}

#[test]
fn lanes_rows_shape_sums_through_workgroup_memory_without_subgroups() {
    // The rows shape (many rows, 4 per lane, KL lanes per key) with each
    // key's partial sums through workgroup memory: what a GPU without
    // subgroups (GL, WebGPU without the feature) is planned, run here under
    // the GPU plan family with subgroups forced off. Head dims the lanes
    // divide or not, GQA, key lengths, a split.
    let gpu = gpu_plan_ctx();
    let cases = [
        (AttentionProblem::new(1, 4, 100, 130, 64), None),
        (
            AttentionProblem::new(2, 8, 37, 77, 40).with_kv_heads(2),
            None,
        ),
        (
            AttentionProblem::new(1, 2, 64, 200, 59).with_kv_lens(true),
            Some(vec![150u32]),
        ),
        (AttentionProblem::new(1, 2, 40, 90, 160), None),
    ];
    for (i, (p, lens)) in cases.iter().enumerate() {
        let force = TileOverride {
            variant: Some(FlashVariant::Lanes),
            subgroups: Some(false),
            ..Default::default()
        };
        let flash = FlashAttention::with_tiles(gpu, p, force).unwrap();
        assert!(
            !flash.plan().subgroups && flash.plan().tr > 1,
            "{}",
            flash.plan().why
        );
        assert!(
            flash.plan().live_floats <= xattn::GPU_LIVE_FLOATS,
            "{}",
            flash.plan().why
        );
        let lens = lens.as_deref();
        let r = check_with(gpu, p, lens, 60 + i as u64, |q, k, v| {
            flash.run(q, k, v, lens)
        })
        .unwrap();
        assert!(r.passed(), "{p:?}: {r:?} ({})", flash.plan().why);
    }
}
