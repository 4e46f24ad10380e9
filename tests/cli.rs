//! The command-line tool's `run`: .npy files, every mask, errors and exit
//! codes.

mod cli_common;

use std::path::Path;

use cli_common::{bin, stdout_of_success, tmp, write, write_nd, RunFiles};
use xattn::check::{inputs, max_err};
use xattn::harness::npy;
use xattn::AttentionProblem;

#[test]
fn run_matches_the_reference_and_writes_lse() {
    let p = AttentionProblem::new(2, 4, 33, 70, 40)
        .with_kv_heads(2)
        .with_kv_lens(true);
    let (q, k, v) = inputs(&p, 21);
    let (qp, kp, vp, op, lp, lensp) = (
        tmp("q.npy"),
        tmp("k.npy"),
        tmp("v.npy"),
        tmp("o.npy"),
        tmp("lse.npy"),
        tmp("lens.npy"),
    );
    write(&qp, &[2, 33, 4, 40], &q);
    write(&kp, &[2, 70, 2, 40], &k);
    write(&vp, &[2, 70, 2, 40], &v);
    npyz::to_file_1d(&lensp, [5i64, 70]).unwrap();
    let status = bin()
        .args(["run", "--q"])
        .arg(&qp)
        .arg("--k")
        .arg(&kp)
        .arg("--v")
        .arg(&vp)
        .arg("--out")
        .arg(&op)
        .arg("--lse")
        .arg(&lp)
        .arg("--kv-lens")
        .arg(&lensp)
        .status()
        .unwrap();
    assert!(status.success());
    let o = npy::read_f32(&op).unwrap();
    assert_eq!(o.shape, [2, 33, 4, 40]);
    let lse = npy::read_f32(&lp).unwrap();
    assert_eq!(lse.shape, [2, 4, 33]);
    let r = xattn::reference::attention(&p, &q, &k, &v, Some(&[5, 70])).unwrap();
    assert!(max_err(&o.data, &r.o) < 1e-4);
    assert!(max_err(&lse.data, &r.lse) < 1e-4);

    // --reference gives the same within f32 rounding.
    let status = bin()
        .args(["run", "--reference", "--q"])
        .arg(&qp)
        .arg("--k")
        .arg(&kp)
        .arg("--v")
        .arg(&vp)
        .arg("--out")
        .arg(&op)
        .arg("--kv-lens")
        .arg(&lensp)
        .status()
        .unwrap();
    assert!(status.success());
    let o = npy::read_f32(&op).unwrap();
    assert!(max_err(&o.data, &r.o) < 1e-5);
}

fn run_err(
    q_shape: &[usize],
    k_shape: &[usize],
    v_shape: &[usize],
    tag: &str,
) -> (i32, String, bool) {
    let n = |s: &[usize]| s.iter().product::<usize>();
    let (qp, kp, vp, op) = (
        tmp(&format!("{tag}q.npy")),
        tmp(&format!("{tag}k.npy")),
        tmp(&format!("{tag}v.npy")),
        tmp(&format!("{tag}o.npy")),
    );
    write(&qp, q_shape, &vec![0.5; n(q_shape)]);
    write(&kp, k_shape, &vec![0.5; n(k_shape)]);
    write(&vp, v_shape, &vec![0.5; n(v_shape)]);
    let _ = std::fs::remove_file(&op);
    let out = bin()
        .args(["run", "--q"])
        .arg(&qp)
        .arg("--k")
        .arg(&kp)
        .arg("--v")
        .arg(&vp)
        .arg("--out")
        .arg(&op)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        op.exists(),
    )
}

#[test]
fn bad_shapes_are_exit_2_naming_the_problem_and_write_nothing() {
    type Shape = &'static [usize];
    let cases: [(&str, Shape, Shape, Shape, &[&str]); 4] = [
        (
            "wrong rank",
            &[2, 3, 4],
            &[2, 5, 1, 4],
            &[2, 5, 1, 4],
            &["q", "[B, n_q, H, d]"],
        ),
        (
            "head dim",
            &[1, 3, 2, 8],
            &[1, 5, 1, 6],
            &[1, 5, 1, 6],
            &["k", "8"],
        ),
        (
            "heads",
            &[1, 3, 3, 8],
            &[1, 5, 2, 8],
            &[1, 5, 2, 8],
            &["multiple"],
        ),
        (
            "v rows",
            &[1, 3, 2, 8],
            &[1, 5, 2, 8],
            &[1, 6, 2, 8],
            &["v", "[1, 5, 2, d_v]"],
        ),
    ];
    for (i, (what, q, k, v, needles)) in cases.into_iter().enumerate() {
        let (code, err, wrote) = run_err(q, k, v, &format!("case{i}"));
        assert_eq!(code, 2, "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {err:?} lacks {n:?}");
        }
        assert!(!wrote, "{what}: no output may be written on error");
    }
}

#[test]
fn non_float_input_and_missing_file_are_exit_2() {
    let qp = tmp("int_q.npy");
    npyz::to_file_1d(&qp, [1i32, 2, 3]).unwrap();
    let out = bin()
        .args(["run", "--q"])
        .arg(&qp)
        .args([
            "--k",
            "/nonexistent/k.npy",
            "--v",
            "/nonexistent/v.npy",
            "--out",
        ])
        .arg(tmp("never.npy"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("float32"), "{err}");
    let out = bin()
        .args([
            "run",
            "--q",
            "/nonexistent/q.npy",
            "--k",
            "/x",
            "--v",
            "/y",
            "--out",
            "/z",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
}

#[test]
fn key_length_past_n_kv_is_exit_2() {
    let (qp, kp, vp, lp) = (tmp("lq.npy"), tmp("lk.npy"), tmp("lv.npy"), tmp("ll.npy"));
    write(&qp, &[1, 2, 1, 4], &[0.1; 8]);
    write(&kp, &[1, 3, 1, 4], &[0.1; 12]);
    write(&vp, &[1, 3, 1, 4], &[0.1; 12]);
    npyz::to_file_1d(&lp, [4i32]).unwrap();
    let out = bin()
        .args(["run", "--q"])
        .arg(&qp)
        .arg("--k")
        .arg(&kp)
        .arg("--v")
        .arg(&vp)
        .arg("--kv-lens")
        .arg(&lp)
        .arg("--out")
        .arg(tmp("lo.npy"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds n_kv = 3"));
}

#[test]
fn run_reads_and_writes_float16_and_converts_for_bf16() {
    // Odd head dim: half words straddle rows.
    let p = AttentionProblem::new(1, 3, 5, 19, 7);
    let (q, k, v) = inputs(&p, 23);
    let dir = |n: &str| tmp(&format!("h-{n}.npy"));
    let shapes = [[1, 5, 3, 7], [1, 19, 3, 7], [1, 19, 3, 7]];
    for (name, (data, shape)) in
        ["q", "k", "v"]
            .into_iter()
            .zip([(&q, shapes[0]), (&k, shapes[1]), (&v, shapes[2])])
    {
        npy::write_f16(&dir(name), &shape, data).unwrap();
        npy::write_f32(&dir(&format!("{name}32")), &shape, data).unwrap();
    }
    let run = |suffix: &str, extra: &[&str]| {
        bin()
            .args(["run", "--q"])
            .arg(dir(&format!("q{suffix}")))
            .arg("--k")
            .arg(dir(&format!("k{suffix}")))
            .arg("--v")
            .arg(dir(&format!("v{suffix}")))
            .arg("--out")
            .arg(dir("o"))
            .args(extra)
            .output()
            .unwrap()
    };
    for (suffix, extra, dtype, f16_out) in [
        ("", &[][..], xattn::Dtype::F16, true),
        ("32", &["--dtype", "bf16"][..], xattn::Dtype::Bf16, false),
    ] {
        let out = run(suffix, extra);
        stdout_of_success(&out);
        let (o, is_f16) = npy::read_float(&dir("o")).unwrap();
        assert_eq!((o.shape.as_slice(), is_f16), (&[1, 5, 3, 7][..], f16_out));
        let round = |x: &[f32]| dtype.round_all(x.to_vec());
        let r = xattn::reference::attention(&p, &round(&q), &round(&k), &round(&v), None).unwrap();
        let max_o = r.o.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        let ulp = if dtype == xattn::Dtype::F16 {
            2f64.powi(-10)
        } else {
            2f64.powi(-7)
        };
        assert!(
            max_err(&o.data, &r.o) <= max_o * ulp,
            "{dtype}: {:.3e}",
            max_err(&o.data, &r.o)
        );
    }
    // f16 q with f32 k: one dtype for all three, exit 2 naming k.
    let out = bin()
        .args(["run", "--q"])
        .arg(dir("q"))
        .arg("--k")
        .arg(dir("k32"))
        .arg("--v")
        .arg(dir("v"))
        .arg("--out")
        .arg(dir("o2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("k is float32 but q is float16"), "{err}");
    assert!(!dir("o2").exists());
}

#[test]
fn run_with_masks_windows_and_lengths_matches_the_reference() {
    use xattn::{pack_mask, MaskShape, Masks, Window};
    let (b, h, nq, nk, d) = (2, 2, 20, 50, 16);
    let base = AttentionProblem::new(b, h, nq, nk, d);
    let (q, k, v) = inputs(&base, 5);
    let f = |n: &str| tmp(&format!("m{n}.npy"));
    let files = RunFiles::new("m");
    let (qp, kp, vp, op, lp) = (&files.q, &files.k, &files.v, &files.o, &files.lse);
    write(qp, &[b, nq, h, d], &q);
    write(kp, &[b, nk, h, d], &k);
    write(vp, &[b, nk, h, d], &v);
    // The run's O and LSE files against the reference of `p` on `masks`.
    let matches_reference = |p: &AttentionProblem, masks: &Masks<'_>| {
        let r = xattn::reference::attention_masked(p, &q, &k, &v, masks).unwrap();
        assert!(
            max_err(&npy::read_f32(op).unwrap().data, &r.o) < 1e-4,
            "{p:?}"
        );
        assert!(
            max_err(&npy::read_f32(lp).unwrap().data, &r.lse) < 1e-4,
            "{p:?}"
        );
    };
    // Boolean mask [B, 1, n_q, n_kv] as numpy bool, causal, both lengths.
    let bools: Vec<bool> = (0..b * nq * nk).map(|i| (i * 7919) % 10 < 7).collect();
    write_nd(&f("mask"), &[b, 1, nq, nk], &bools);
    npyz::to_file_1d(f("ql"), [20i32, 9]).unwrap();
    npyz::to_file_1d(f("kl"), [31i64, 50]).unwrap();
    let (code, err) = files.run(&[
        Path::new("--causal"),
        Path::new("--mask"),
        &f("mask"),
        Path::new("--q-lens"),
        &f("ql"),
        Path::new("--kv-lens"),
        &f("kl"),
    ]);
    assert_eq!(code, 0, "{err}");
    let shape = MaskShape {
        batch: true,
        heads: false,
        rows: true,
    };
    let p = base
        .with_causal()
        .with_bool_mask(shape)
        .with_q_lens(true)
        .with_kv_lens(true);
    let bits = pack_mask(&bools, nk);
    let masks = Masks {
        q_lens: Some(&[20, 9]),
        kv_lens: Some(&[31, 50]),
        mask: Some(&bits),
        ..Masks::default()
    };
    matches_reference(&p, &masks);

    // A bias [1, H, 1, n_kv] with -inf entries and a sliding window.
    let bias: Vec<f32> = (0..h * nk)
        .map(|i| {
            if i % 5 == 0 {
                f32::NEG_INFINITY
            } else {
                (i % 7) as f32 * 0.3
            }
        })
        .collect();
    write(&f("bias"), &[1, h, 1, nk], &bias);
    let (code, err) = files.run(&[
        Path::new("--bias"),
        &f("bias"),
        Path::new("--window"),
        Path::new("4,-1"),
    ]);
    assert_eq!(code, 0, "{err}");
    let p = base
        .with_bias(MaskShape {
            batch: false,
            heads: true,
            rows: false,
        })
        .with_window(Window {
            left: Some(4),
            right: None,
        });
    let masks = Masks {
        bias: Some(&bias),
        ..Masks::default()
    };
    matches_reference(&p, &masks);

    // Everything together: bias and boolean mask, causal with a window
    // (flash-attn's meaning: causal caps the window's right side at 0).
    let (code, err) = files.run(&[
        Path::new("--bias"),
        &f("bias"),
        Path::new("--mask"),
        &f("mask"),
        Path::new("--causal"),
        Path::new("--window"),
        Path::new("6,3"),
    ]);
    assert_eq!(code, 0, "{err}");
    let p = base
        .with_bias(MaskShape {
            batch: false,
            heads: true,
            rows: false,
        })
        .with_bool_mask(shape)
        .with_window(Window::sliding(6, 3))
        .with_causal();
    let masks = Masks {
        bias: Some(&bias),
        mask: Some(&bits),
        ..Masks::default()
    };
    matches_reference(&p, &masks);
    // The window's right side really is capped: not the uncapped answer.
    let uncapped = AttentionProblem { causal: false, ..p };
    let r2 = xattn::reference::attention_masked(&uncapped, &q, &k, &v, &masks).unwrap();
    assert!(max_err(&npy::read_f32(op).unwrap().data, &r2.o) > 1e-2);

    // Bad window and a mask of the wrong shape: exit 2 naming the problem.
    let (code, err) = files.run(&[Path::new("--window"), Path::new("3")]);
    assert_eq!(code, 2);
    assert!(err.contains("window"), "{err}");
    write_nd(&f("badmask"), &[b, 3, nq, nk], &vec![true; b * 3 * nq * nk]);
    let (code, err) = files.run(&[Path::new("--mask"), &f("badmask")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("mask") && err.contains("[2|1, 2|1, 20|1, 50]"),
        "{err}"
    );
}

#[test]
fn run_packed_varlen_batch_matches_the_reference() {
    use xattn::{Masks, VarLen};
    let cu_q = [0u32, 7, 7, 30];
    let cu_k = [0u32, 12, 40, 41];
    let (vl, mq, mk) = VarLen::from_cu_seqlens(&cu_q, &cu_k);
    let (h, d) = (3, 24);
    let p = AttentionProblem::new(3, h, mq, mk, d)
        .with_varlen(vl)
        .with_causal();
    let (q, k, v) = inputs(&p, 8);
    let f = |n: &str| tmp(&format!("v{n}.npy"));
    let files = RunFiles::new("v");
    let (qp, kp, vp, op, lp) = (&files.q, &files.k, &files.v, &files.o, &files.lse);
    write(qp, &[30, h, d], &q);
    write(kp, &[41, h, d], &k);
    write(vp, &[41, h, d], &v);
    npyz::to_file_1d(f("cq"), cu_q.map(i32::try_from).map(Result::unwrap)).unwrap();
    npyz::to_file_1d(f("ck"), cu_k.map(i64::from)).unwrap();
    let (code, err) = files.run(&[
        Path::new("--cu-seqlens-q"),
        &f("cq"),
        Path::new("--cu-seqlens-k"),
        &f("ck"),
        Path::new("--causal"),
    ]);
    assert_eq!(code, 0, "{err}");
    let masks = Masks {
        cu_seqlens_q: Some(&cu_q),
        cu_seqlens_k: Some(&cu_k),
        ..Masks::default()
    };
    let r = xattn::reference::attention_masked(&p, &q, &k, &v, &masks).unwrap();
    let o = npy::read_f32(op).unwrap();
    assert_eq!(o.shape, [30, h, d]);
    assert!(max_err(&o.data, &r.o) < 1e-4);
    let lse = npy::read_f32(lp).unwrap();
    assert_eq!(lse.shape, [h, 30]);
    assert!(max_err(&lse.data, &r.lse) < 1e-4);
    // cu_seqlens that do not end at the tensors' rows: exit 2.
    npyz::to_file_1d(f("cq2"), [0i32, 7, 7, 29]).unwrap();
    let (code, err) = files.run(&[
        Path::new("--cu-seqlens-q"),
        &f("cq2"),
        Path::new("--cu-seqlens-k"),
        &f("ck"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cu_seqlens"), "{err}");
}

#[test]
fn run_writes_attention_probabilities_for_heads_or_their_mean() {
    // GQA 4:2 with key lengths: every head, two heads in a chosen order, the
    // mean; the GPU against the f64 reference, and --reference.
    let p = AttentionProblem::new(2, 4, 9, 30, 16)
        .with_kv_heads(2)
        .with_kv_lens(true);
    let (q, k, v) = inputs(&p, 31);
    let f = RunFiles::new("probs");
    write(&f.q, &[2, 9, 4, 16], &q);
    write(&f.k, &[2, 30, 2, 16], &k);
    write(&f.v, &[2, 30, 2, 16], &v);
    let lens = tmp("probs_lens.npy");
    npyz::to_file_1d(&lens, [30i64, 7]).unwrap();
    let pp = tmp("probs_p.npy");
    let masks = xattn::Masks::kv_lens(Some(&[30, 7]));
    for (which, args, shape) in [
        (xattn::ProbHeads::All, vec![], vec![2, 4, 9, 30]),
        (
            xattn::ProbHeads::Heads(vec![3, 1]),
            vec!["--probs-heads", "3,1"],
            vec![2, 2, 9, 30],
        ),
        (xattn::ProbHeads::Mean, vec!["--probs-mean"], vec![2, 9, 30]),
    ] {
        let want = xattn::reference::probabilities(&p, &q, &k, &masks, &which).unwrap();
        for reference in [false, true] {
            let mut extra = vec![Path::new("--kv-lens"), &lens, Path::new("--probs"), &pp];
            extra.extend(args.iter().map(Path::new));
            if reference {
                extra.push(Path::new("--reference"));
            }
            let (code, err) = f.run(&extra);
            assert_eq!(code, 0, "{err}");
            let got = npy::read_f32(&pp).unwrap();
            assert_eq!(got.shape, shape, "{which:?}");
            assert!(
                max_err(&got.data, &want) < 1e-5,
                "{which:?} reference {reference}"
            );
        }
    }
    // Heat maps: a panel per head; the 9 queries folded into a 3 × 3 grid,
    // a panel per head and key; a grid that does not hold n_q is exit 2.
    let svg = tmp("probs_maps.svg");
    let (s, g) = (Path::new("--svg"), Path::new("--grid"));
    let (code, err) = f.run(&[Path::new("--probs"), &pp, s, &svg]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("head 3: queries × keys"));
    let keys = Path::new("--svg-keys");
    let (code, err) = f.run(&[
        Path::new("--probs"),
        &pp,
        Path::new("--probs-mean"),
        s,
        &svg,
        g,
        Path::new("3,3"),
        keys,
        Path::new("0,5"),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("mean of heads, key 5"), "{text}");
    let (code, err) = f.run(&[Path::new("--probs"), &pp, s, &svg, g, Path::new("4,4")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("there are 9 queries"), "{err}");
    // A head past H is exit 2 with a message naming it.
    let (code, err) = f.run(&[
        Path::new("--probs"),
        &pp,
        Path::new("--probs-heads"),
        Path::new("4"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("head 4 does not exist"), "{err}");
}
