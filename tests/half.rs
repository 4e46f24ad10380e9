//! f16 and bf16 storage (f32 arithmetic) against the f64 reference on the
//! same half inputs, with the tolerance rule against the naive kernel in the
//! same storage precision (`check::check_with`, slack `check::o_slack`).

mod common;

use common::{ctx, ctx_at, each_on_devices, gpu_plan_ctx_at};
use xattn::check::{check_with, inputs, max_err, max_rel_err};
use xattn::{AttentionProblem, Context, Dtype, FlashAttention, TensorIo, TileOverride};

/// The storage paths this adapter runs: f16 natively where it has
/// SHADER_F16, f16 through u32 words, bf16 through u32 words.
fn paths() -> Vec<(Dtype, Option<bool>, TensorIo)> {
    let mut v = vec![
        (Dtype::F16, Some(true), TensorIo::F16Packed),
        (Dtype::Bf16, None, TensorIo::Bf16),
    ];
    if ctx().caps().shader_f16 {
        v.push((Dtype::F16, Some(false), TensorIo::F16));
    }
    v
}

fn problems() -> Vec<(AttentionProblem, Option<Vec<u32>>)> {
    vec![
        // Odd head dims: a u32 word holds the end of one row and the start
        // of the next, in loads and in the (atomic) stores of O.
        (AttentionProblem::new(1, 2, 37, 41, 59), None),
        (
            AttentionProblem::new(2, 3, 13, 77, 7).with_head_dim_v(13),
            None,
        ),
        // GQA with key lengths including 0, ragged blocks.
        (
            AttentionProblem::new(3, 8, 65, 130, 64)
                .with_kv_heads(2)
                .with_kv_lens(true),
            Some(vec![0, 130, 71]),
        ),
        // Decode kernel with splits, d 111.
        (AttentionProblem::new(1, 4, 1, 1500, 111), None),
        // Large head dim, d_v ≠ d.
        (
            AttentionProblem::new(1, 2, 33, 200, 256).with_head_dim_v(40),
            None,
        ),
    ]
}

#[test]
fn half_storage_matches_the_reference_on_every_path() {
    half_storage_on(ctx_at);
}

#[test]
fn half_storage_matches_the_reference_under_gpu_plans() {
    // XATTN_PLAN=gpu: the lanes kernel reading every storage form.
    half_storage_on(gpu_plan_ctx_at);
}

/// Every storage path on every problem, the cases spread over the test
/// devices (`device`: [`ctx_at`] or [`gpu_plan_ctx_at`]).
fn half_storage_on(device: fn(usize) -> &'static Context) {
    let cases: Vec<_> = paths()
        .into_iter()
        .flat_map(|path| problems().into_iter().enumerate().map(move |c| (path, c)))
        .collect();
    each_on_devices(
        &cases,
        device,
        |ctx, &((dtype, packed, io), (i, (p, ref lens)))| {
            let p = p.with_dtype(dtype);
            let force = TileOverride {
                packed_f16: packed,
                ..Default::default()
            };
            let flash = FlashAttention::with_tiles(ctx, &p, force).unwrap();
            assert_eq!(flash.plan().io, io);
            let lens = lens.as_deref();
            let r = check_with(ctx, &p, lens, 50 + i as u64, |q, k, v| {
                flash.run(q, k, v, lens)
            })
            .unwrap();
            println!(
                "{} {io:?} {p:?}: O {:.2e} (bound {:.2e}), LSE {:.2e} (bound {:.2e})",
                flash.plan().variant.label(),
                r.fused.o,
                r.o_bound(),
                r.fused.lse,
                r.lse_bound()
            );
            assert!(r.passed(), "{io:?} {p:?}: {r:?}");
        },
    );
}

#[test]
fn all_large_logits_do_not_overflow_in_half_storage() {
    // Inputs × 30 (|x| up to ~300): Q·Kᵀ reaches ~10⁶, far past f16's 65 504;
    // Q is pre-scaled in f32, so only finite f16 inputs are stored.
    let base = AttentionProblem::new(1, 2, 40, 300, 64);
    for (dtype, packed, io) in paths() {
        let p = base.with_dtype(dtype);
        let (q, k, v) = inputs(&p, 60);
        let big = |x: Vec<f32>| -> Vec<f32> { x.iter().map(|&a| dtype.round(a * 30.0)).collect() };
        let (q, k, v) = (big(q), big(k), big(v));
        let reference = xattn::reference::attention(&p, &q, &k, &v, None).unwrap();
        let force = TileOverride {
            packed_f16: packed,
            ..Default::default()
        };
        let out = FlashAttention::with_tiles(ctx(), &p, force)
            .and_then(|f| f.run(&q, &k, &v, None))
            .unwrap();
        assert!(
            out.o.iter().chain(&out.lse).all(|x| x.is_finite()),
            "{io:?}"
        );
        // Near-one-hot rows: O is a row of V, rounded once to the storage type.
        let max_v = v.iter().fold(0.0f32, |a, b| a.max(b.abs())) as f64;
        let ulp = if dtype == Dtype::F16 {
            2f64.powi(-10)
        } else {
            2f64.powi(-7)
        };
        assert!(
            max_err(&out.o, &reference.o) <= max_v * ulp + 1e-3,
            "{io:?}: O {:.3e}",
            max_err(&out.o, &reference.o)
        );
        let rel = max_rel_err(&out.lse, &reference.lse);
        assert!(rel < 1e-5, "{io:?}: LSE relative error {rel:.3e}");
    }
}

#[test]
fn f16_uses_the_native_path_exactly_where_the_device_has_it() {
    let p = AttentionProblem::new(1, 1, 8, 8, 8).with_dtype(Dtype::F16);
    let flash = FlashAttention::new(ctx(), &p).unwrap();
    let want = if ctx().caps().shader_f16 && std::env::var("XATTN_F16").is_err() {
        TensorIo::F16
    } else {
        TensorIo::F16Packed
    };
    assert_eq!(flash.plan().io, want);
    // Half the bytes of f32 in every buffer the caller provides.
    assert_eq!(p.tensor_bytes("q"), 2 * 8 * 8);
    assert_eq!(p.tensor_bytes("lse"), 4 * 8);
}
