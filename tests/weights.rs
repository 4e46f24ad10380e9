//! Layer weights from safetensors: the three naming schemes, a prefix, f32 /
//! f16 / bf16 storage, and typed errors naming the tensor; a layer loaded
//! this way against the f64 reference.

mod common;

use common::ctx;
use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;
use xattn::check::{max_err, Rng};
use xattn::{
    gate_from_safetensors, CrossAttention, Dtype, Error, LayerConfig, LayerWeights, WeightNames,
};

const PREFIX: &str = "model.decoder.layers.0.encoder_attn.";

/// A safetensors file of (name, shape, values) in `dtype`.
fn file(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: StDtype) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            StDtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            StDtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, &None).unwrap()
}

fn t(name: &str, shape: &[usize], v: &[f32]) -> (String, Vec<usize>, Vec<f32>) {
    (format!("{PREFIX}{name}"), shape.to_vec(), v.to_vec())
}

/// Random weights for `c` (all biases but k's, as Whisper).
fn random(c: &LayerConfig) -> LayerWeights {
    let mut rng = Rng::new(1);
    let d = c.head_dim();
    let (hd, kvd) = (c.heads * d, c.kv_heads * d);
    LayerWeights {
        w_q: rng.normals(hd * c.embed, 0.2),
        b_q: Some(rng.normals(hd, 0.2)),
        w_k: rng.normals(kvd * c.kv_embed, 0.2),
        b_k: None,
        w_v: rng.normals(kvd * c.kv_embed, 0.2),
        b_v: Some(rng.normals(kvd, 0.2)),
        w_o: rng.normals(c.embed * hd, 0.2),
        b_o: Some(rng.normals(c.embed, 0.2)),
    }
}

#[test]
fn hugging_face_names_under_a_prefix_in_every_float_type() {
    let c = LayerConfig::new(64, 48, 4, 2);
    let w = random(&c);
    let tensors = vec![
        t("q_proj.weight", &[64, 64], &w.w_q),
        t("q_proj.bias", &[64], w.b_q.as_ref().unwrap()),
        t("k_proj.weight", &[32, 48], &w.w_k),
        t("v_proj.weight", &[32, 48], &w.w_v),
        t("v_proj.bias", &[32], w.b_v.as_ref().unwrap()),
        t("out_proj.weight", &[64, 64], &w.w_o),
        t("out_proj.bias", &[64], w.b_o.as_ref().unwrap()),
    ];
    for (dtype, ulp) in [
        (StDtype::F32, 0.0),
        (StDtype::F16, 1e-3),
        (StDtype::BF16, 8e-3),
    ] {
        let (got, names) =
            LayerWeights::from_safetensors(&file(&tensors, dtype), PREFIX, &c).unwrap();
        assert_eq!(names, WeightNames::HuggingFace);
        assert!(got.b_k.is_none(), "k_proj has no bias");
        assert!(
            max_err(
                &got.w_q,
                &w.w_q.iter().map(|&x| x as f64).collect::<Vec<_>>()
            ) <= ulp
        );
        assert!(
            max_err(
                &got.w_o,
                &w.w_o.iter().map(|&x| x as f64).collect::<Vec<_>>()
            ) <= ulp
        );
    }
    // The loaded layer against the f64 reference of the layer.
    let (got, _) =
        LayerWeights::from_safetensors(&file(&tensors, StDtype::F32), PREFIX, &c).unwrap();
    assert_eq!(got, w);
    let layer = CrossAttention::new(ctx(), c, &got).unwrap();
    let mut rng = Rng::new(2);
    let (x, context) = (rng.normals(3 * 64, 3.0), rng.normals(50 * 48, 3.0));
    let kv = layer.project_context(&context, 1, 50).unwrap();
    let y = layer.forward(&x, 3, &kv, None).unwrap();
    let want =
        xattn::reference::cross_attention_layer(&c, &w, &x, &context, 1, 3, 50, None).unwrap();
    let naive =
        xattn::reference::cross_attention_layer_in::<f32>(&c, &w, &x, &context, 1, 3, 50, None)
            .unwrap();
    let (err, bound) = (max_err(&y, &want), 2.0 * max_err(&naive, &want) + 1e-5);
    assert!(err <= bound, "Hugging Face names: {err:.3e} > {bound:.3e}");
}

#[test]
fn torch_multihead_attention_and_t5_names() {
    // nn.MultiheadAttention with kdim = vdim = E: q, k, v packed in
    // in_proj_weight / in_proj_bias.
    let c = LayerConfig::new(32, 32, 4, 4);
    let w = random(&c);
    let b_k = vec![0.25f32; 32];
    let packed_w = [w.w_q.clone(), w.w_k.clone(), w.w_v.clone()].concat();
    let packed_b = [w.b_q.clone().unwrap(), b_k.clone(), w.b_v.clone().unwrap()].concat();
    let mha = vec![
        t("in_proj_weight", &[96, 32], &packed_w),
        t("in_proj_bias", &[96], &packed_b),
        t("out_proj.weight", &[32, 32], &w.w_o),
        t("out_proj.bias", &[32], w.b_o.as_ref().unwrap()),
    ];
    let (got, names) =
        LayerWeights::from_safetensors(&file(&mha, StDtype::F32), PREFIX, &c).unwrap();
    assert_eq!(names, WeightNames::TorchMha);
    assert_eq!((&got.w_k, got.b_k.as_ref()), (&w.w_k, Some(&b_k)));
    assert_eq!(got.w_v, w.w_v);
    // The layer from torch's names against the f64 reference of the layer.
    let layer = CrossAttention::new(ctx(), c, &got).unwrap();
    let mut rng = Rng::new(3);
    let (x, context) = (rng.normals(2 * 4 * 32, 3.0), rng.normals(2 * 21 * 32, 3.0));
    let kv = layer.project_context(&context, 2, 21).unwrap();
    let y = layer.forward(&x, 4, &kv, None).unwrap();
    let want =
        xattn::reference::cross_attention_layer(&c, &got, &x, &context, 2, 4, 21, None).unwrap();
    let naive =
        xattn::reference::cross_attention_layer_in::<f32>(&c, &got, &x, &context, 2, 4, 21, None)
            .unwrap();
    let (err, bound) = (max_err(&y, &want), 2.0 * max_err(&naive, &want) + 1e-5);
    assert!(err <= bound, "torch names: {err:.3e} > {bound:.3e}");
    // kdim ≠ E: separate q/k/v_proj_weight, one in_proj_bias.
    let c2 = LayerConfig::new(32, 24, 4, 4);
    let w2 = random(&c2);
    let sep = vec![
        t("q_proj_weight", &[32, 32], &w2.w_q),
        t("k_proj_weight", &[32, 24], &w2.w_k),
        t("v_proj_weight", &[32, 24], &w2.w_v),
        t("in_proj_bias", &[96], &packed_b),
        t("out_proj.weight", &[32, 32], &w2.w_o),
    ];
    let (got, names) =
        LayerWeights::from_safetensors(&file(&sep, StDtype::F32), PREFIX, &c2).unwrap();
    assert_eq!(names, WeightNames::TorchMha);
    assert_eq!((got.w_k, got.b_k), (w2.w_k, Some(b_k)));
    assert!(got.b_o.is_none());
    // T5: q, k, v, o, no biases, scale 1.
    let t5 = vec![
        t("q.weight", &[32, 32], &w.w_q),
        t("k.weight", &[32, 32], &w.w_k),
        t("v.weight", &[32, 32], &w.w_v),
        t("o.weight", &[32, 32], &w.w_o),
    ];
    let (got, names) =
        LayerWeights::from_safetensors(&file(&t5, StDtype::F32), PREFIX, &c).unwrap();
    assert_eq!((names, names.scale()), (WeightNames::T5, Some(1.0)));
    assert!(got.b_q.is_none() && got.b_o.is_none());
    // Flamingo's gate: attn_gate, [1] or a scalar.
    for shape in [vec![1], vec![]] {
        let gate = file(
            &[(format!("{PREFIX}attn_gate"), shape.clone(), vec![0.25])],
            StDtype::BF16,
        );
        assert_eq!(
            gate_from_safetensors(&gate, PREFIX).unwrap(),
            0.25,
            "{shape:?}"
        );
    }
    assert!(matches!(
        gate_from_safetensors(&file(&t5, StDtype::F32), PREFIX),
        Err(Error::Weights { .. })
    ));
}

#[test]
fn missing_misshaped_and_unreadable_tensors_are_typed_errors() {
    let c = LayerConfig::new(64, 48, 4, 2);
    let w = random(&c);
    let expect = |bytes: &[u8], name: &str, what: &str| match LayerWeights::from_safetensors(
        bytes, PREFIX, &c,
    ) {
        Err(Error::Weights { name: n, reason }) => {
            assert_eq!(n, name);
            assert!(reason.contains(what), "{reason}");
        }
        other => panic!("{other:?}"),
    };
    let missing = file(&[t("q_proj.weight", &[64, 64], &w.w_q)], StDtype::F32);
    expect(
        &missing,
        &format!("{PREFIX}k_proj.weight"),
        "missing; expected a tensor of shape [32, 48]",
    );
    let misshaped = file(
        &[
            t("q_proj.weight", &[64, 32], &w.w_q[..2048]),
            t("k_proj.weight", &[32, 48], &w.w_k),
        ],
        StDtype::F32,
    );
    expect(
        &misshaped,
        &format!("{PREFIX}q_proj.weight"),
        "shape [64, 32], expected [64, 64]",
    );
    expect(b"not a safetensors file", "safetensors", "cannot be read");
    // Integers are not weights.
    let ints = file(&[t("q_proj.weight", &[64, 64], &w.w_q)], StDtype::I32);
    expect(
        &ints,
        &format!("{PREFIX}q_proj.weight"),
        "expected F32, F16 or BF16",
    );
    // A packed in_proj for a GQA layer cannot be split.
    let packed = file(
        &[t("in_proj_weight", &[128, 64], &[0.0; 8192])],
        StDtype::F32,
    );
    expect(
        &packed,
        &format!("{PREFIX}in_proj_weight"),
        "shape [128, 64], expected [192, 64]",
    );
}

#[test]
fn written_files_read_back_in_every_scheme_and_float_type() {
    // GQA and kdim ≠ E (separate q/k/v_proj_weight), and one width (packed
    // in_proj_weight).
    for c in [
        LayerConfig::new(64, 48, 4, 2),
        LayerConfig::new(32, 32, 4, 4),
    ] {
        let mut w = random(&c);
        w.b_k = Some(vec![0.5; c.kv_heads * c.head_dim()]);
        let bare = LayerWeights {
            b_q: None,
            b_k: None,
            b_v: None,
            b_o: None,
            ..w.clone()
        };
        for (names, w) in [
            (WeightNames::HuggingFace, &w),
            (WeightNames::TorchMha, &w),
            (WeightNames::T5, &bare),
        ] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                let bytes = w.to_safetensors(&c, PREFIX, names, dtype).unwrap();
                let (got, found) = LayerWeights::from_safetensors(&bytes, PREFIX, &c).unwrap();
                assert_eq!(found, names);
                let stored = |v: &Vec<f32>| dtype.round_all(v.clone());
                let opt = |v: &Option<Vec<f32>>| v.as_ref().map(stored);
                let want = LayerWeights {
                    w_q: stored(&w.w_q),
                    b_q: opt(&w.b_q),
                    w_k: stored(&w.w_k),
                    b_k: opt(&w.b_k),
                    w_v: stored(&w.w_v),
                    b_v: opt(&w.b_v),
                    w_o: stored(&w.w_o),
                    b_o: opt(&w.b_o),
                };
                assert_eq!(got, want, "{names:?} {dtype} {c:?}");
            }
        }
        // T5's names take no biases; torch's need all three or none.
        assert!(matches!(
            w.to_safetensors(&c, PREFIX, WeightNames::T5, Dtype::F32),
            Err(Error::Weights { .. })
        ));
        let partial = LayerWeights {
            b_k: None,
            ..w.clone()
        };
        assert!(matches!(
            partial.to_safetensors(&c, PREFIX, WeightNames::TorchMha, Dtype::F32),
            Err(Error::Weights { .. })
        ));
    }
}
