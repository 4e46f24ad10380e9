//! The command-line tool's `layer`: a cross-attention layer from a
//! safetensors file on .npy inputs, its maps, its errors and exit codes.

mod cli_common;

use std::path::{Path, PathBuf};

use cli_common::{bin, tmp, write};
use xattn::check::{layer_weights, max_err, Rng};
use xattn::harness::npy;
use xattn::reference::{cross_attention_layer, cross_attention_layer_in};
use xattn::{Dtype, LayerConfig, LayerWeights, WeightNames};

const PREFIX: &str = "model.decoder.layers.0.encoder_attn.";

/// Whisper-like weights (every bias but k_proj's).
fn weights(c: &LayerConfig) -> LayerWeights {
    layer_weights(c, [true, false, true, true], 7)
}

/// `xattn layer` with the files and extra arguments; (exit code, stderr).
fn layer(files: &[(&str, &Path)], extra: &[&str]) -> (i32, String) {
    let mut cmd = bin();
    cmd.arg("layer");
    for (flag, path) in files {
        cmd.arg(flag).arg(path);
    }
    let o = cmd.args(extra).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn layer_from_safetensors_matches_the_reference_and_draws_maps() {
    // GQA 4:2, E_kv ≠ E, two batch entries with context lengths.
    let mut c = LayerConfig::new(64, 48, 4, 2);
    let w = weights(&c);
    let st = tmp("layer_w.safetensors");
    let bytes = w
        .to_safetensors(&c, PREFIX, WeightNames::HuggingFace, Dtype::F32)
        .unwrap();
    std::fs::write(&st, bytes).unwrap();
    let (b, n_q, n_kv) = (2, 5, 40);
    let mut rng = Rng::new(8);
    let x = rng.normals(b * n_q * 64, 3.0);
    let context = rng.normals(b * n_kv * 48, 3.0);
    let (xf, cf, yf) = (tmp("layer_x.npy"), tmp("layer_c.npy"), tmp("layer_y.npy"));
    write(&xf, &[b, n_q, 64], &x);
    write(&cf, &[b, n_kv, 48], &context);
    let lens = tmp("layer_lens.npy");
    npyz::to_file_1d(&lens, [40i64, 13]).unwrap();
    let (pf, svg) = (tmp("layer_p.npy"), tmp("layer_p.svg"));
    let files: Vec<(&str, &Path)> = vec![
        ("--weights", &st),
        ("--x", &xf),
        ("--context", &cf),
        ("--out", &yf),
        ("--kv-lens", &lens),
        ("--probs", &pf),
        ("--svg", &svg),
    ];
    let args = [
        "--prefix",
        PREFIX,
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--probs-heads",
        "2",
    ];
    let l = Some(&[40u32, 13][..]);
    // Flamingo's gate read from the file: α = 0.8 written as attn_gate.
    let mut gated = c;
    gated.gate = Some(0.8);
    let gate_file = tmp("layer_w_gate.safetensors");
    let bytes = w
        .to_safetensors(&gated, PREFIX, WeightNames::HuggingFace, Dtype::F32)
        .unwrap();
    std::fs::write(&gate_file, bytes).unwrap();
    let mut with_gate = files.clone();
    with_gate[0] = ("--weights", &gate_file);
    let (code, err) = layer(&with_gate, &[&args[..], &["--gate"]].concat());
    assert_eq!(code, 0, "{err}");
    let lens_ = Some(&[40u32, 13][..]);
    let want = cross_attention_layer(&gated, &w, &x, &context, b, n_q, n_kv, lens_).unwrap();
    let naive =
        cross_attention_layer_in::<f32>(&gated, &w, &x, &context, b, n_q, n_kv, lens_).unwrap();
    let e = max_err(&npy::read_f32(&yf).unwrap().data, &want);
    let bound = 2.0 * max_err(&naive, &want) + 1e-5;
    assert!(e <= bound, "gate from the file: {e:.3e} > {bound:.3e}");
    for (gate, dtype) in [(None, "f32"), (Some("-0.6"), "f32"), (None, "f16")] {
        c.gate = gate.map(|g| g.parse().unwrap());
        c.dtype = if dtype == "f16" {
            Dtype::F16
        } else {
            Dtype::F32
        };
        let want = cross_attention_layer(&c, &w, &x, &context, b, n_q, n_kv, l).unwrap();
        let naive = cross_attention_layer_in::<f32>(&c, &w, &x, &context, b, n_q, n_kv, l).unwrap();
        // f16: one storage ulp of the largest output as slack (y is f16).
        let top = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let slack = if dtype == "f16" { top / 1024.0 } else { 1e-5 };
        let bound = 2.0 * max_err(&naive, &want) + slack;
        for reference in [false, true] {
            let mut extra = args.to_vec();
            extra.extend(["--dtype", dtype]);
            if let Some(g) = gate {
                extra.extend(["--gate", g]);
            }
            if reference {
                extra.push("--reference");
            }
            let (code, err) = layer(&files, &extra);
            assert_eq!(code, 0, "{err}");
            let y = npy::read_f32(&yf).unwrap();
            assert_eq!(y.shape, [b, n_q, 64]);
            let e = max_err(&y.data, &want);
            assert!(
                e <= bound,
                "gate {gate:?} {dtype} reference {reference}: {e:.3e} > {bound:.3e}"
            );
            let p = npy::read_f32(&pf).unwrap();
            assert_eq!(p.shape, [b, 1, n_q, n_kv]);
            // Rows sum to 1; keys past the second entry's 13 get nothing.
            for (r, row) in p.data.chunks(n_kv).enumerate() {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-3, "row {r}");
                if r >= n_q {
                    assert!(row[13..].iter().all(|&v| v == 0.0), "row {r}");
                }
            }
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(text.starts_with("<svg") && text.contains("head 2: queries × keys"));
        }
    }
}

#[test]
fn bad_layer_inputs_are_exit_2_naming_the_problem() {
    let c = LayerConfig::new(32, 32, 4, 4);
    let st = tmp("layer_bad_w.safetensors");
    let mut w = weights(&c);
    w.b_k = Some(vec![0.0; 32]);
    let bytes = w
        .to_safetensors(&c, "", WeightNames::TorchMha, Dtype::F32)
        .unwrap();
    std::fs::write(&st, bytes).unwrap();
    let (xf, cf, yf) = (
        tmp("layer_bad_x.npy"),
        tmp("layer_bad_c.npy"),
        tmp("layer_bad_y.npy"),
    );
    write(&xf, &[1, 3, 32], &[0.5; 96]);
    write(&cf, &[1, 6, 32], &[0.25; 192]);
    let files = |x: &PathBuf, c: &PathBuf| -> Vec<(&'static str, PathBuf)> {
        vec![
            ("--weights", st.clone()),
            ("--x", x.clone()),
            ("--context", c.clone()),
            ("--out", yf.clone()),
        ]
    };
    let run = |f: Vec<(&'static str, PathBuf)>, extra: &[&str]| {
        let f: Vec<(&str, &Path)> = f.iter().map(|(a, p)| (*a, p.as_path())).collect();
        layer(&f, extra)
    };
    // The torch names load without a prefix.
    let (code, err) = run(files(&xf, &cf), &["--heads", "4"]);
    assert_eq!(code, 0, "{err}");
    // --gate without a value reads attn_gate, which this file lacks.
    let (code, err) = run(files(&xf, &cf), &["--heads", "4", "--gate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("attn_gate is missing"), "{err}");
    // A prefix the file does not have: the first tensor looked for.
    let (code, err) = run(files(&xf, &cf), &["--heads", "4", "--prefix", "encoder."]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("encoder.q_proj.weight is missing"), "{err}");
    // Heads that do not divide E.
    let (code, err) = run(files(&xf, &cf), &["--heads", "5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("E = 32 does not split into H = 5"), "{err}");
    // x of the wrong rank; a context of another batch.
    let x2 = tmp("layer_bad_x2.npy");
    write(&x2, &[3, 32], &[0.5; 96]);
    let (code, err) = run(files(&x2, &cf), &["--heads", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected [B, n, E]"), "{err}");
    let c2 = tmp("layer_bad_c2.npy");
    write(&c2, &[2, 3, 32], &[0.25; 192]);
    let (code, err) = run(files(&xf, &c2), &["--heads", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[1, n_kv, E_kv] (the batch of x)"), "{err}");
    // An E_kv the weights do not have.
    let c3 = tmp("layer_bad_c3.npy");
    write(&c3, &[1, 4, 48], &[0.25; 192]);
    let (code, err) = run(files(&xf, &c3), &["--heads", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected"), "{err}");
}
