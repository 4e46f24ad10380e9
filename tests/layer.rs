//! The cross-attention layer (projections, attention, output projection,
//! Flamingo's gate) against the f64 reference of the same layer with the
//! tolerance rule (the naive baseline: the same layer in f32 on the CPU); a
//! decode loop on a cached EncoderKv; typed errors for bad weights.

mod common;

use common::{ctx, gpu_plan_ctx};
use xattn::check::{layer_weights, max_err, Rng};
use xattn::reference::{
    cross_attention_layer, cross_attention_layer_in, cross_attention_layer_probs_in,
};
use xattn::{Context, CrossAttention, Dtype, Error, LayerConfig, LayerWeights, ProbHeads};

#[test]
fn layer_matches_the_reference_with_gqa_biases_scale_and_gate() {
    // CPU plans read X and W through texture mirrors; GPU plans
    // (XATTN_PLAN=gpu) the storage buffers.
    for c in [ctx(), gpu_plan_ctx()] {
        layer_cases(c);
    }
}

fn layer_cases(ctx: &Context) {
    // Whisper-like (biases but k_proj's, E_kv = E), Stable-Diffusion-like
    // (no biases, E_kv ≠ E), GQA, T5's scale 1, Flamingo's gate, odd widths.
    let cases = [
        (
            LayerConfig::new(64, 64, 4, 4),
            [true, false, true, true],
            None,
            None,
        ),
        (LayerConfig::new(80, 48, 8, 2), [false; 4], None, None),
        (
            LayerConfig::new(64, 40, 4, 1),
            [true; 4],
            Some(1.0),
            Some(0.7),
        ),
        // Widths that are not multiples of 4: the 16 × 16 tiled projection.
        (
            LayerConfig::new(66, 37, 6, 3),
            [true, true, false, true],
            None,
            Some(-0.3),
        ),
    ];
    for (i, (mut c, bias, scale, gate)) in cases.into_iter().enumerate() {
        c.scale = scale;
        c.gate = gate;
        let w = layer_weights(&c, bias, 10 + i as u64);
        let layer = CrossAttention::new(ctx, c, &w).unwrap();
        let (b, n_q, n_kv) = (2, 7, 33);
        let mut rng = Rng::new(20 + i as u64);
        let x = rng.normals(b * n_q * c.embed, 3.0);
        let context = rng.normals(b * n_kv * c.kv_embed, 3.0);
        let lens = [33u32, 20];
        let kv = layer.project_context(&context, b, n_kv).unwrap();
        let y = layer.forward(&x, n_q, &kv, Some(&lens)).unwrap();
        let want = cross_attention_layer(&c, &w, &x, &context, b, n_q, n_kv, Some(&lens)).unwrap();
        let naive =
            cross_attention_layer_in::<f32>(&c, &w, &x, &context, b, n_q, n_kv, Some(&lens))
                .unwrap();
        let err = max_err(&y, &want);
        let bound = 2.0 * max_err(&naive, &want) + 1e-5;
        println!("case {i}: layer error {err:.3e} (bound {bound:.3e})");
        assert!(err <= bound, "case {i}: {err:.3e} > {bound:.3e}");
    }
}

#[test]
fn decode_steps_on_a_cached_encoder_kv_equal_the_uncached_layer() {
    for ctx in [ctx(), gpu_plan_ctx()] {
        let c = LayerConfig::new(64, 48, 4, 2);
        let w = layer_weights(&c, [true; 4], 3);
        let layer = CrossAttention::new(ctx, c, &w).unwrap();
        let mut rng = Rng::new(4);
        let context = rng.normals(99 * c.kv_embed, 3.0);
        let cached = layer.project_context(&context, 1, 99).unwrap();
        // One bound step for the whole loop: plan, buffers, launches once.
        let step = layer.bind(1, &cached, None).unwrap();
        for i in 0..5 {
            let x = rng.normals(c.embed, 3.0);
            let y = step.run(&x).unwrap();
            let fresh = layer.project_context(&context, 1, 99).unwrap();
            assert_eq!(y, layer.forward(&x, 1, &fresh, None).unwrap(), "step {i}");
            let want = cross_attention_layer(&c, &w, &x, &context, 1, 1, 99, None).unwrap();
            let naive =
                cross_attention_layer_in::<f32>(&c, &w, &x, &context, 1, 1, 99, None).unwrap();
            let (err, bound) = (max_err(&y, &want), 2.0 * max_err(&naive, &want) + 1e-5);
            assert!(err <= bound, "step {i}: {err:.3e} > {bound:.3e}");
        }
    }
}

#[test]
fn half_storage_layers_match_the_reference() {
    // Weights, x, Q, K, V, O and y in f16 or bf16 (f32 arithmetic), under
    // both plan families: the reference rounds where the device stores.
    for ctx in [ctx(), gpu_plan_ctx()] {
        for dtype in [Dtype::F16, Dtype::Bf16] {
            for (i, (mut c, gate)) in [
                (LayerConfig::new(64, 48, 4, 2), None),
                (LayerConfig::new(96, 40, 6, 6), Some(0.4)),
            ]
            .into_iter()
            .enumerate()
            {
                c.dtype = dtype;
                c.gate = gate;
                let w = layer_weights(&c, [true, false, true, true], 30 + i as u64);
                let layer = CrossAttention::new(ctx, c, &w).unwrap();
                let (b, n_q, n_kv) = (2, 5, 37);
                let mut rng = Rng::new(40 + i as u64);
                let x = rng.normals(b * n_q * c.embed, 3.0);
                let context = rng.normals(b * n_kv * c.kv_embed, 3.0);
                let lens = [37u32, 9];
                let kv = layer.project_context(&context, b, n_kv).unwrap();
                let y = layer.forward(&x, n_q, &kv, Some(&lens)).unwrap();
                let want =
                    cross_attention_layer(&c, &w, &x, &context, b, n_q, n_kv, Some(&lens)).unwrap();
                let naive = cross_attention_layer_in::<f32>(
                    &c,
                    &w,
                    &x,
                    &context,
                    b,
                    n_q,
                    n_kv,
                    Some(&lens),
                )
                .unwrap();
                let err = max_err(&y, &want);
                // Slack: one storage ulp of the largest output (y is stored
                // in the storage type: a value that rounds the other way).
                let top = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let ulp = top
                    * if dtype == Dtype::F16 {
                        1.0 / 1024.0
                    } else {
                        1.0 / 128.0
                    };
                let naive_err = max_err(&naive, &want);
                let bound = 2.0 * naive_err + ulp;
                println!(
                    "{dtype} case {i}: layer error {err:.3e} (naive {naive_err:.3e}, largest |y| \
                     {top:.2}, bound {bound:.3e})"
                );
                assert!(err <= bound, "{dtype} case {i}: {err:.3e} > {bound:.3e}");
            }
        }
    }
}

#[test]
fn layer_probabilities_match_the_reference_and_sum_to_one() {
    for ctx in [ctx(), gpu_plan_ctx()] {
        let c = LayerConfig::new(64, 40, 4, 2);
        let w = layer_weights(&c, [true; 4], 50);
        let layer = CrossAttention::new(ctx, c, &w).unwrap();
        let (b, n_q, n_kv) = (2, 6, 45);
        let mut rng = Rng::new(51);
        let x = rng.normals(b * n_q * c.embed, 3.0);
        let context = rng.normals(b * n_kv * c.kv_embed, 3.0);
        let lens = [45u32, 17];
        let kv = layer.project_context(&context, b, n_kv).unwrap();
        for heads in [ProbHeads::Heads(vec![3, 0]), ProbHeads::Mean] {
            let (y, p) = layer
                .forward_probs(&x, n_q, &kv, Some(&lens), heads.clone())
                .unwrap();
            // The output is the layer's, maps or not.
            assert_eq!(y, layer.forward(&x, n_q, &kv, Some(&lens)).unwrap());
            let args = (&c, &w, &x[..], &context[..], b, n_q, n_kv, Some(&lens[..]));
            let want = probs_ref::<f64>(args, &heads);
            let naive = probs_ref::<f32>(args, &heads);
            // The slack of tests/probs.rs: P = exp(S·scale − LSE) carries the
            // LSE's f32 rounding, which the naive row softmax does not.
            let (err, bound) = (max_err(&p, &want), 2.0 * max_err(&naive, &want) + 1e-5);
            println!("{heads:?}: probabilities error {err:.3e} (bound {bound:.3e})");
            assert!(err <= bound, "{heads:?}: {err:.3e} > {bound:.3e}");
            for (r, row) in p.chunks(n_kv).enumerate() {
                let (sum, batch) = (row.iter().sum::<f32>(), r / (p.len() / n_kv / b));
                assert!((sum - 1.0).abs() < 1e-4, "{heads:?} row {r}: sum {sum}");
                // Keys past the batch entry's length get nothing.
                assert!(row[lens[batch] as usize..].iter().all(|&v| v == 0.0));
            }
        }
    }
}

type LayerArgs<'a> = (
    &'a LayerConfig,
    &'a LayerWeights,
    &'a [f32],
    &'a [f32],
    usize,
    usize,
    usize,
    Option<&'a [u32]>,
);

fn probs_ref<T: xattn::reference::Real>(a: LayerArgs<'_>, heads: &ProbHeads) -> Vec<T> {
    cross_attention_layer_probs_in::<T>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, heads).unwrap()
}

#[test]
fn bad_weights_and_inputs_are_typed_errors() {
    let c = LayerConfig::new(64, 48, 4, 2);
    let good = layer_weights(&c, [true; 4], 5);
    let mut short = good.clone();
    short.w_k.pop();
    match CrossAttention::new(ctx(), c, &short) {
        Err(Error::SizeMismatch { name, shape, .. }) => {
            assert_eq!((name, shape.as_str()), ("w_k", "[32, 48]"))
        }
        other => panic!("{other:?}"),
    }
    let mut bias = good.clone();
    bias.b_o = Some(vec![0.0; 3]);
    assert!(matches!(
        CrossAttention::new(ctx(), c, &bias),
        Err(Error::SizeMismatch { name: "w_o", .. })
    ));
    assert!(matches!(
        CrossAttention::new(ctx(), LayerConfig::new(64, 48, 4, 3), &good),
        Err(Error::HeadsMismatch { .. })
    ));
    assert!(matches!(
        CrossAttention::new(ctx(), LayerConfig::new(66, 48, 4, 2), &good),
        Err(Error::BadArgument { .. })
    ));
    let layer = CrossAttention::new(ctx(), c, &good).unwrap();
    assert!(matches!(
        layer.project_context(&[0.0; 47], 1, 1),
        Err(Error::SizeMismatch {
            name: "context",
            ..
        })
    ));
    let kv = layer.project_context(&[0.0; 48], 1, 1).unwrap();
    assert!(matches!(
        layer.forward(&[0.0; 63], 1, &kv, None),
        Err(Error::SizeMismatch { name: "x", .. })
    ));
    let step = layer.bind(1, &kv, None).unwrap();
    assert!(matches!(
        step.run_probs(&[0.0; 64]),
        Err(Error::BadArgument { .. })
    ));
    // Lengths past n_kv, and per batch entry.
    assert!(layer.bind(1, &kv, Some(&[2])).is_err());
    assert!(layer.bind(1, &kv, Some(&[1, 1])).is_err());
    // Half storage needs widths that are multiples of 4.
    let mut half = LayerConfig::new(66, 37, 6, 3);
    half.dtype = Dtype::F16;
    let odd = layer_weights(&half, [true; 4], 6);
    assert!(matches!(
        CrossAttention::new(ctx(), half, &odd),
        Err(Error::Unsupported {
            kernel: "linear",
            ..
        })
    ));
}
