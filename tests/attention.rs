//! The fused kernel against the f64 CPU reference, with the tolerance rule of
//! design.md: max |fused − ref| ≤ 2 × max |naive_f32 − ref| + 1e-5, on O and LSE.

mod common;

use common::{assert_close, assert_close_on, ctx, gpu_plan_ctx};
use xattn::check::{grid, inputs, max_err, max_rel_err};
use xattn::{
    AttentionBuffers, AttentionProblem, Dtype, FlashAttention, FlashVariant, KvAccess, Masks,
    TileOverride, Window,
};

#[test]
fn shape_grid_matches_reference() {
    let cases = grid(false);
    assert!(cases.len() >= 30, "grid too small: {}", cases.len());
    let mut worst = (0.0f64, 0.0f64);
    for case in &cases {
        let r = assert_close(&case.problem, case.kv_lens.as_deref(), case.seed);
        println!(
            "{:<56} O {:.2e} (naive {:.2e})  LSE {:.2e} (naive {:.2e})",
            case.name(),
            r.fused.o,
            r.naive.o,
            r.fused.lse,
            r.naive.lse
        );
        worst = (worst.0.max(r.fused.o), worst.1.max(r.fused.lse));
    }
    println!(
        "{} cases, worst O {:.3e}, worst LSE {:.3e}",
        cases.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn shape_grid_matches_reference_under_gpu_plans() {
    // XATTN_PLAN=gpu: the lanes kernel (decode and rows shapes, subgroup
    // sums) on every case of the grid, run on this adapter.
    let gpu = gpu_plan_ctx();
    let mut lanes = 0;
    for case in &grid(false) {
        let p = &case.problem;
        let plan = xattn::plan(p, gpu.caps(), TileOverride::default()).unwrap();
        lanes += usize::from(plan.variant == FlashVariant::Lanes);
        let r = assert_close_on(gpu, p, case.kv_lens.as_deref(), case.seed);
        println!(
            "{:<56} {:<6} O {:.2e}  LSE {:.2e}",
            case.name(),
            plan.variant.label(),
            r.fused.o,
            r.fused.lse
        );
    }
    assert!(lanes > 0, "the lanes kernel was never planned");
}

#[test]
fn smaller_than_one_tile_seq_q_and_kv() {
    assert_close(&AttentionProblem::new(1, 1, 1, 1, 32), None, 1);
    assert_close(&AttentionProblem::new(2, 3, 3, 5, 7), None, 2);
}

#[test]
fn every_head_dim_from_1_to_9_and_odd_large_ones() {
    for d in (1..=9).chain([59, 111, 255, 256]) {
        assert_close(&AttentionProblem::new(1, 2, 37, 41, d), None, d as u64);
    }
}

#[test]
fn head_dims_past_128_whose_score_loop_ends_in_a_partial_chunk() {
    // Past 64 vec4s of K and V per row the simd kernel (lavapipe) loops over
    // chunks of the head dim for Q·Kᵀ, reading Q from its mirror: d/4 = 37
    // (5 chunks of 8, the last 3 slots past the row) and 50 (7 of 8, 6
    // past it, with d_v 68), padded query blocks and key lengths.
    let cases = [
        AttentionProblem::new(1, 2, 37, 41, 148),
        AttentionProblem::new(1, 3, 19, 45, 200).with_head_dim_v(68),
        AttentionProblem::new(2, 2, 11, 70, 148).with_kv_lens(true),
    ];
    for (i, p) in cases.iter().enumerate() {
        let lens = p.kv_lens.then_some(&[70u32, 23][..]);
        let plan = xattn::plan(p, ctx().caps(), TileOverride::default()).unwrap();
        if plan.variant == FlashVariant::Simd {
            assert!(plan.kv.q_mirror(), "{p:?}: the loop needs Q's mirror");
        }
        let r = assert_close(p, lens, 40 + i as u64);
        println!(
            "{p:?}: {} ({:?}) O {:.2e} LSE {:.2e}",
            plan.variant.label(),
            plan.kv,
            r.fused.o,
            r.fused.lse
        );
    }
}

#[test]
fn value_head_dim_differs_from_key_head_dim() {
    assert_close(
        &AttentionProblem::new(2, 4, 65, 130, 64).with_head_dim_v(24),
        None,
        3,
    );
    assert_close(
        &AttentionProblem::new(1, 2, 33, 77, 40).with_head_dim_v(160),
        None,
        4,
    );
}

#[test]
fn gqa_and_mqa_read_the_right_kv_head() {
    assert_close(
        &AttentionProblem::new(2, 8, 70, 90, 64).with_kv_heads(2),
        None,
        5,
    );
    assert_close(
        &AttentionProblem::new(1, 8, 33, 257, 64).with_kv_heads(1),
        None,
        6,
    );
}

#[test]
fn custom_scale_t5_style() {
    assert_close(
        &AttentionProblem::new(1, 4, 129, 129, 64).with_scale(1.0),
        None,
        7,
    );
    assert_close(
        &AttentionProblem::new(1, 2, 17, 300, 32).with_scale(0.01),
        None,
        8,
    );
}

#[test]
fn kv_lengths_mask_keys_including_zero_and_full() {
    let p = AttentionProblem::new(4, 2, 50, 203, 40).with_kv_lens(true);
    assert_close(&p, Some(&[0, 203, 1, 65]), 9);
}

#[test]
fn zero_key_length_gives_zero_output_and_negative_infinite_lse() {
    let p = AttentionProblem::new(2, 2, 9, 33, 16).with_kv_lens(true);
    let (q, k, v) = inputs(&p, 10);
    let out = ctx().attention(&p, &q, &k, &v, Some(&[0, 33])).unwrap();
    let per_batch_o = p.o_len() / 2;
    assert!(
        out.o[..per_batch_o].iter().all(|&x| x == 0.0),
        "O must be exactly 0"
    );
    assert!(out.o[per_batch_o..].iter().all(|x| x.is_finite()));
    let per_batch_lse = p.lse_len() / 2;
    assert!(out.lse[..per_batch_lse]
        .iter()
        .all(|&x| x == f32::NEG_INFINITY));
    assert!(out.lse[per_batch_lse..].iter().all(|x| x.is_finite()));
}

#[test]
fn nan_poisoned_padding_is_never_read() {
    // Keys past kv_len and every element past the tensors' ends are NaN: the
    // kernel must neither read them into a sum nor let them reach the output.
    let p = AttentionProblem::new(2, 2, 70, 100, 59).with_kv_lens(true);
    let lens = [37u32, 100];
    let (mut q, mut k, mut v) = inputs(&p, 11);
    let reference = xattn::reference::attention(&p, &q, &k, &v, Some(&lens)).unwrap();
    let row_k = p.kv_heads * p.head_dim;
    let row_v = p.kv_heads * p.head_dim_v;
    for j in lens[0] as usize..p.n_kv {
        k[j * row_k..(j + 1) * row_k].fill(f32::NAN);
        v[j * row_v..(j + 1) * row_v].fill(f32::NAN);
    }
    for x in [&mut q, &mut k, &mut v] {
        x.extend(std::iter::repeat_n(f32::NAN, 1000));
    }
    let c = ctx();
    let (qb, kb, vb) = (c.upload("q", &q), c.upload("k", &k), c.upload("v", &v));
    let lb = c.upload("lens", &lens);
    let ob = c.storage("o", 4 * p.o_len() as u64);
    let lseb = c.storage("lse", 4 * p.lse_len() as u64);
    let flash = FlashAttention::new(c, &p).unwrap();
    let bufs = AttentionBuffers {
        q: &qb,
        k: &kb,
        v: &vb,
        lens: Some(&lb),
        mask: None,
        o: &ob,
        lse: &lseb,
    };
    c.submit(|enc| flash.record(enc, &bufs)).unwrap();
    let o: Vec<f32> = c.download(&ob, p.o_len()).unwrap();
    let lse: Vec<f32> = c.download(&lseb, p.lse_len()).unwrap();
    assert!(o.iter().all(|x| x.is_finite()), "NaN leaked into O");
    assert!(
        max_err(&o, &reference.o) < 1e-3,
        "O error {}",
        max_err(&o, &reference.o)
    );
    assert!(max_err(&lse, &reference.lse) < 1e-3);
}

#[test]
fn every_tile_shape_gives_the_same_answer() {
    let p = AttentionProblem::new(1, 3, 131, 77, 40);
    let (q, k, v) = inputs(&p, 12);
    let reference = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
    for (bc, tr, wg) in [(4, 2, 16), (8, 2, 32), (16, 4, 16), (32, 2, 16), (64, 2, 8)] {
        let force = TileOverride {
            bc: Some(bc),
            tr: Some(tr),
            wg: Some(wg),
            variant: Some(FlashVariant::Tiled),
            ..Default::default()
        };
        let out = FlashAttention::with_tiles(ctx(), &p, force)
            .and_then(|f| f.run(&q, &k, &v, None))
            .unwrap();
        let e = max_err(&out.o, &reference.o);
        assert!(e < 1e-4, "tiles Bc {bc} TR {tr} WG {wg}: O error {e:.3e}");
    }
}

#[test]
fn simd_kernel_rows_per_lane_agree_where_the_adapter_has_it() {
    let c = ctx();
    // Odd head dims (scalar loads, padded vec4s), d_v ≠ d, GQA, key lengths
    // that end mid-block, a query count that ends mid-lane.
    let p = AttentionProblem::new(2, 4, 45, 141, 19)
        .with_kv_heads(2)
        .with_head_dim_v(12)
        .with_kv_lens(true);
    let lens = [141u32, 33];
    let (q, k, v) = inputs(&p, 18);
    let reference = xattn::reference::attention(&p, &q, &k, &v, Some(&lens)).unwrap();
    let fixed = c.caps().subgroups && c.caps().subgroup_min_size == c.caps().subgroup_max_size;
    for rows in [1, 2, 3] {
        let force = TileOverride {
            tr: Some(rows),
            variant: Some(FlashVariant::Simd),
            ..Default::default()
        };
        match FlashAttention::with_tiles(c, &p, force) {
            Ok(f) => {
                assert_eq!(f.plan().tr, rows);
                let out = f.run(&q, &k, &v, Some(&lens)).unwrap();
                let e = max_err(&out.o, &reference.o);
                assert!(e < 1e-4, "simd rows {rows}: O error {e:.3e}");
                assert!(max_err(&out.lse, &reference.lse) < 1e-4);
            }
            // An adapter without fixed-size subgroups must say so, not run.
            Err(e) => assert!(!fixed, "{e}"),
        }
    }
}

#[test]
fn simd_kernel_reads_kv_from_texture_mirrors_or_buffers_alike() {
    let c = ctx();
    if !(c.caps().subgroups && c.caps().subgroup_min_size == c.caps().subgroup_max_size) {
        return assert!(FlashAttention::with_tiles(
            c,
            &AttentionProblem::new(1, 1, 8, 8, 8),
            TileOverride {
                variant: Some(FlashVariant::Simd),
                ..Default::default()
            }
        )
        .is_err());
    }
    // Head dims multiples of 4 (texture rows start on a texel), d_v ≠ d,
    // GQA, key lengths ending mid-block; then a K/V tensor of 67 200 texels,
    // four full texture rows of 16 384 and a part row, in several launches.
    let short = AttentionProblem::new(2, 4, 45, 141, 20)
        .with_kv_heads(2)
        .with_head_dim_v(12)
        .with_kv_lens(true);
    let long = AttentionProblem::new(1, 4, 9, 4200, 16);
    for (p, lens) in [(short, Some(vec![141u32, 33])), (long, None)] {
        let (q, k, v) = inputs(&p, 19);
        let reference = xattn::reference::attention(&p, &q, &k, &v, lens.as_deref()).unwrap();
        for (texture, rows, bc, chunk) in [
            (true, 1, None, None),
            (true, 2, Some(3), Some(1000)),
            (false, 1, None, None),
            (false, 2, None, Some(1000)),
        ] {
            let force = TileOverride {
                tr: Some(rows),
                bc,
                chunk_keys: chunk,
                kv_texture: Some(texture),
                variant: Some(FlashVariant::Simd),
                ..Default::default()
            };
            let f = FlashAttention::with_tiles(c, &p, force).unwrap();
            let is_texture = matches!(f.plan().kv, KvAccess::Texture { .. });
            assert_eq!(is_texture, texture, "{}", f.plan().why);
            let out = f.run(&q, &k, &v, lens.as_deref()).unwrap();
            let e = max_err(&out.o, &reference.o);
            let what = format!("n_kv {} texture {texture} TR {rows} Bc {bc:?}", p.n_kv);
            assert!(e < 1e-4, "{what}: O error {e:.3e}");
            assert!(max_err(&out.lse, &reference.lse) < 1e-4, "{what}: LSE");
        }
    }
}

#[test]
fn gpu_plans_are_chosen_and_the_lanes_kernel_runs_on_this_adapter() {
    // XATTN_PLAN=gpu: the kernels, tiles and splits a discrete GPU of this
    // adapter's subgroup size would get (never the CPU-only simd kernel,
    // never texture mirrors), within the adapter's real limits.
    let gpu = gpu_plan_ctx();
    let problems = [
        AttentionProblem::new(2, 4, 45, 141, 19)
            .with_kv_heads(2)
            .with_head_dim_v(12)
            .with_kv_lens(true),
        AttentionProblem::new(1, 2, 130, 130, 64)
            .with_window(Window::sliding(40, 0))
            .with_dtype(Dtype::F16),
        AttentionProblem::new(1, 8, 2048, 2048, 128),
    ];
    for p in &problems {
        let plan = xattn::plan(p, gpu.caps(), TileOverride::default()).unwrap();
        // The lanes kernel in its rows shape (this adapter has subgroups).
        assert_eq!(plan.variant, FlashVariant::Lanes, "{}", plan.why);
        assert_eq!(plan.kv, KvAccess::Storage);
        assert!(plan.wg >= 16 && plan.why.contains("GPU"), "{}", plan.why);
        assert!(plan.why.contains("rows shape"), "{}", plan.why);
        assert!(plan.live_floats <= xattn::GPU_LIVE_FLOATS, "{}", plan.why);
    }
    // Run here: a Whisper step and GQA 8:2 with two queries, the lanes
    // kernel's decode shape with 128 invocations in key groups, subgroup
    // merges and key splits, against the reference (the grid, mask, half and
    // decode tests run the rest of the GPU family).
    for (i, step) in [
        AttentionProblem::new(1, 20, 1, 1500, 64),
        AttentionProblem::new(2, 8, 2, 700, 40).with_kv_heads(2),
    ]
    .iter()
    .enumerate()
    {
        let flash = FlashAttention::new(gpu, step).unwrap();
        let plan = flash.plan();
        assert_eq!(
            (plan.variant, plan.wg, plan.subgroups),
            (FlashVariant::Lanes, 128, true),
            "{}",
            plan.why
        );
        assert!(plan.splits > 1, "{}", plan.why);
        assert_close_on(gpu, step, None, 50 + i as u64);
    }
}

#[test]
fn grid_past_65535_workgroups_is_folded() {
    // One workgroup per (batch, head) with n_q = 1: 70 000 workgroups.
    let p = AttentionProblem::new(1, 70_000, 1, 3, 4);
    let flash = FlashAttention::new(ctx(), &p).unwrap();
    assert!(
        flash.plan().grid.1 > 1,
        "expected a folded grid: {:?}",
        flash.plan()
    );
    assert_close(&p, None, 13);
}

#[test]
fn all_large_logits_do_not_overflow() {
    // Inputs × 10 on top of × 3: raw logits in the thousands.
    let p = AttentionProblem::new(1, 2, 40, 300, 64).with_scale(1.0);
    let (q, k, v) = inputs(&p, 14);
    let q: Vec<f32> = q.iter().map(|x| x * 10.0).collect();
    let reference = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
    let out = ctx().attention(&p, &q, &k, &v, None).unwrap();
    assert!(out.o.iter().chain(&out.lse).all(|x| x.is_finite()));
    // Near-one-hot rows: O is a row of V; LSE has relative error ~1e-7.
    assert!(max_err(&out.o, &reference.o) < 1e-3);
    let rel = max_rel_err(&out.lse, &reference.lse);
    assert!(rel < 1e-5, "LSE relative error {rel:.3e}");
}

#[test]
fn long_key_ranges_cut_into_launches_carry_the_softmax_state() {
    // Forced chunks (ragged against Bc and n_kv), with key lengths that end
    // inside, at the edge of, and before a chunk.
    let p = AttentionProblem::new(3, 2, 45, 300, 40).with_kv_lens(true);
    let lens = [300u32, 64, 7];
    let (q, k, v) = inputs(&p, 15);
    let reference = xattn::reference::attention(&p, &q, &k, &v, Some(&lens)).unwrap();
    // Chunks inside key splits too: 3 splits of 112 keys in launches of 50.
    for (chunk, splits) in [(1, 1), (16, 1), (50, 3), (64, 1), (299, 1), (16, 2)] {
        let force = TileOverride {
            chunk_keys: Some(chunk),
            splits: Some(splits),
            variant: Some(FlashVariant::Tiled),
            ..Default::default()
        };
        let out = FlashAttention::with_tiles(ctx(), &p, force)
            .and_then(|f| f.run(&q, &k, &v, Some(&lens)))
            .unwrap();
        assert!(
            max_err(&out.o, &reference.o) < 1e-4,
            "chunk {chunk}, {splits} splits: O {:.3e}",
            max_err(&out.o, &reference.o)
        );
        assert!(max_err(&out.lse, &reference.lse) < 1e-4, "chunk {chunk}");
    }
}

#[test]
fn thousands_of_keys_stay_correct_on_every_adapter() {
    // lavapipe stops a shader's loops after 65 535 iterations in total; the
    // planner cuts long key ranges into launches below that. Before it did,
    // this shape gave O errors of ~10.
    assert_close(&AttentionProblem::new(1, 2, 64, 4096, 64), None, 16);
    assert_close(&AttentionProblem::new(1, 1, 8, 16_000, 160), None, 17);
    // On CPU adapters the simd plans cut both into launches that carry the
    // softmax state (2 MiB and 20 MB of one head's K/V, past CHUNK_KV_BYTES).
    for p in [
        AttentionProblem::new(1, 2, 64, 4096, 64),
        AttentionProblem::new(1, 1, 8, 16_000, 160),
    ] {
        let plan = xattn::plan(&p, ctx().caps(), TileOverride::default()).unwrap();
        if plan.variant == FlashVariant::Simd {
            assert!(plan.launches() > 1, "{}", plan.why);
        }
    }
}

#[test]
fn bhsd_layouts_are_read_and_written_in_place_through_strides() {
    use xattn::Layout;
    let (s, h) = (Layout::Bshd, Layout::Bhsd);
    let cases = [
        // Tiled kernel, GQA, key lengths, scalar-path head dim.
        AttentionProblem::new(2, 4, 37, 41, 59)
            .with_kv_heads(2)
            .with_kv_lens(true),
        // Decode kernel (MQA rows packed), split-KV.
        AttentionProblem::new(2, 8, 1, 1500, 64).with_kv_heads(1),
        // Half storage in u32 words or f16.
        AttentionProblem::new(1, 3, 20, 77, 40).with_dtype(Dtype::F16),
    ];
    for (i, base) in cases.iter().enumerate() {
        for (layout, out_layout) in [(h, s), (s, h), (h, h)] {
            let p = base.with_layout(layout).with_out_layout(out_layout);
            let lens = p.kv_lens.then_some(&[41u32, 9][..]);
            // The reference reads through the same strides: a BHSD problem on
            // BHSD data equals the BSHD problem on the transposed data.
            let (q, k, v) = inputs(&p, 70 + i as u64);
            let to_bshd = |x: &[f32], n: usize, heads: usize, d: usize| {
                layout.convert(s, x, [p.batch, n, heads, d])
            };
            let r = xattn::reference::attention(&p, &q, &k, &v, lens).unwrap();
            let r_bshd = xattn::reference::attention(
                &p.with_layout(s).with_out_layout(s),
                &to_bshd(&q, p.n_q, p.heads, p.head_dim),
                &to_bshd(&k, p.n_kv, p.kv_heads, p.head_dim),
                &to_bshd(&v, p.n_kv, p.kv_heads, p.head_dim_v),
                lens,
            )
            .unwrap();
            let o_dims = [p.batch, p.n_q, p.heads, p.head_dim_v];
            assert_eq!(out_layout.convert(s, &r.o, o_dims), r_bshd.o, "{p:?}");
            assert_eq!(r.lse, r_bshd.lse);
            // The fused kernels under the tolerance rule.
            let c = assert_close(&p, lens, 70 + i as u64);
            assert!(c.fused.o.is_finite(), "{p:?}");
        }
    }
}

#[test]
fn heads_fastest_and_query_blocks_fastest_orders_agree() {
    // The workgroup order (FlashPlan::heads_inner) only permutes tiles: GQA,
    // query and key lengths, causal masking (the strided order on CPU
    // adapters), several query blocks per head and key splits, in both
    // orders and with the plain stride, against the f64 reference.
    let p = AttentionProblem::new(2, 4, 45, 141, 20)
        .with_kv_heads(2)
        .with_q_lens(true)
        .with_kv_lens(true)
        .with_causal();
    let masks = Masks {
        q_lens: Some(&[45, 30]),
        kv_lens: Some(&[141, 50]),
        ..Default::default()
    };
    let (q, k, v) = inputs(&p, 21);
    let reference = xattn::reference::attention_masked(&p, &q, &k, &v, &masks).unwrap();
    let default = xattn::plan(&p, ctx().caps(), TileOverride::default()).unwrap();
    let cpu = ctx().caps().is_cpu() && default.variant == FlashVariant::Simd;
    assert_eq!(
        default.heads_inner, cpu,
        "the simd plan runs heads fastest for small K/V, no other plan does: {}",
        default.why
    );
    for (heads_inner, grid_stride, splits) in [
        (true, None, None),
        (false, None, None),
        (true, Some(1), None),
        (true, None, Some(2)),
        (false, Some(1), Some(2)),
    ] {
        let force = TileOverride {
            heads_inner: Some(heads_inner),
            grid_stride,
            splits,
            ..Default::default()
        };
        let f = FlashAttention::with_tiles(ctx(), &p, force).unwrap();
        assert_eq!(f.plan().heads_inner, heads_inner);
        let out = f.run_with(&q, &k, &v, &masks).unwrap();
        let what = format!("heads_inner {heads_inner}, stride {grid_stride:?}, splits {splits:?}");
        let e = max_err(&out.o, &reference.o);
        assert!(e < 1e-4, "{what}: O error {e:.3e}");
        assert!(max_err(&out.lse, &reference.lse) < 1e-4, "{what}: LSE");
    }
}
