//! Hostile and unusual .npy files, and the outputs' safety: each file is
//! read correctly or refused with exit 2 and a one-line message; nothing is
//! allocated at a size the file does not hold; outputs are complete or
//! absent and never overwrite an input; `--check-finite`.

mod cli_common;

use std::path::{Path, PathBuf};

use cli_common::{write, RunFiles};
use xattn::check::inputs;
use xattn::harness::npy;
use xattn::AttentionProblem;

/// A hand-written .npy (format 1.0): `dict` is the header's Python
/// literal, `data` the raw bytes after it.
fn raw_npy(path: &Path, dict: &str, data: &[u8]) {
    let mut header = dict.to_string();
    // Magic, version, length, header: padded with spaces to 64 bytes, then \n.
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// The problem of these tests and its three input files (C order,
/// little-endian float32).
fn setup(tag: &str) -> (AttentionProblem, RunFiles, [Vec<f32>; 3]) {
    let p = AttentionProblem::new(1, 2, 3, 5, 4);
    let (q, k, v) = inputs(&p, 9);
    let f = RunFiles::new(tag);
    write(&f.q, &[1, 3, 2, 4], &q);
    write(&f.k, &[1, 5, 2, 4], &k);
    write(&f.v, &[1, 5, 2, 4], &v);
    (p, f, [q, k, v])
}

/// Exit 2 with one line on stderr containing `what`.
fn refused(r: (i32, String), what: &str) {
    let (code, err) = r;
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "{err}");
}

#[test]
fn truncated_corrupt_and_unsupported_files_are_refused_in_one_line() {
    let (_, f, [q, ..]) = setup("bad");
    let original = std::fs::read(&f.q).unwrap();
    let run = |f: &RunFiles| f.run(&[]);
    // Data cut short.
    std::fs::write(&f.q, &original[..original.len() - 7]).unwrap();
    refused(run(&f), "truncated or corrupt");
    // No magic.
    std::fs::write(&f.q, b"q,k,v\n1,2,3\n").unwrap();
    refused(run(&f), "not a .npy file");
    // A header longer than the file.
    let mut long = b"\x93NUMPY\x01\x00".to_vec();
    long.extend(60000u16.to_le_bytes());
    long.extend(b"{'descr': '<f4'");
    std::fs::write(&f.q, long).unwrap();
    refused(run(&f), "header declares 60000 bytes");
    // A shape far past the file (10^15 elements): refused before any
    // allocation at that size (this would abort on the allocation).
    raw_npy(
        &f.q,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000, 1000, 1), }",
        &[0; 64],
    );
    refused(
        run(&f),
        "declares 4000000000000000 bytes of data but the file holds",
    );
    // A shape whose byte count overflows 64 bits.
    raw_npy(
        &f.q,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }",
        &[0; 64],
    );
    refused(run(&f), "more than 2^64");
    // Unsupported dtypes: complex, unsigned, structured.
    for (descr, what) in [
        ("'<c8'", "dtype <c8 is not float32 or float16"),
        ("'<u2'", "dtype <u2 is not float32 or float16"),
        ("[('a', '<f4')]", "dtype structured is not float32"),
    ] {
        raw_npy(
            &f.q,
            &format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1, 3, 2, 4), }}"),
            &[0; 24 * 8],
        );
        refused(run(&f), what);
    }
    // The same file, whole again, runs.
    write(&f.q, &[1, 3, 2, 4], &q);
    let (code, err) = run(&f);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn big_endian_and_fortran_order_arrays_are_read_as_numpy_means_them() {
    let (_, f, [q, ..]) = setup("order");
    let (code, err) = f.run(&[]);
    assert_eq!(code, 0, "{err}");
    let want = npy::read_f32(&f.o).unwrap();
    // q as big-endian float32.
    let be: Vec<u8> = q.iter().flat_map(|x| x.to_be_bytes()).collect();
    raw_npy(
        &f.q,
        "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 3, 2, 4), }",
        &be,
    );
    let (code, err) = f.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(npy::read_f32(&f.o).unwrap(), want, "big-endian");
    // q in Fortran order: element (a, b, c, e) at a + b + 3c + 6e.
    let shape = [1usize, 3, 2, 4];
    let mut fortran = vec![0f32; q.len()];
    for b in 0..3 {
        for c in 0..2 {
            for e in 0..4 {
                fortran[b + 3 * c + 6 * e] = q[(b * 2 + c) * 4 + e];
            }
        }
    }
    let le: Vec<u8> = fortran.iter().flat_map(|x| x.to_le_bytes()).collect();
    raw_npy(
        &f.q,
        &format!(
            "{{'descr': '<f4', 'fortran_order': True, 'shape': {:?}, }}",
            (shape[0], shape[1], shape[2], shape[3])
        ),
        &le,
    );
    let (code, err) = f.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(npy::read_f32(&f.o).unwrap(), want, "Fortran order");
}

#[test]
fn outputs_never_overwrite_inputs_and_failed_runs_keep_old_outputs() {
    let (_, f, _) = setup("outs");
    // --out naming an input (another spelling of the same file too).
    let o = |flag: &str, path: &Path| -> (i32, String) {
        let out = cli_common::bin()
            .args(["run", "--q"])
            .arg(&f.q)
            .arg("--k")
            .arg(&f.k)
            .arg("--v")
            .arg(&f.v)
            .arg(flag)
            .arg(path)
            .args(if flag == "--out" {
                vec![]
            } else {
                vec!["--out".into(), f.o.clone().into_os_string()]
            })
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let q_before = std::fs::read(&f.q).unwrap();
    refused(o("--out", &f.q), "is also an input or another output");
    let dotted: PathBuf =
        f.q.parent()
            .unwrap()
            .join(".")
            .join(f.q.file_name().unwrap());
    refused(o("--out", &dotted), "is also an input");
    refused(o("--lse", &f.o), "another output");
    assert_eq!(
        std::fs::read(&f.q).unwrap(),
        q_before,
        "the input is untouched"
    );
    // A run that fails (k of the wrong shape) leaves an existing output as
    // it was, and no temporary file behind.
    std::fs::write(&f.o, b"previous result").unwrap();
    write(&f.k, &[1, 5, 3, 4], &[0.5; 60]);
    let (code, err) = f.run(&[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read(&f.o).unwrap(), b"previous result");
    let dir = f.o.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".outso.npy.xattn-")
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn check_finite_names_the_tensor_and_position() {
    let (_, f, [_, k, _]) = setup("finite");
    let mut bad = k.clone();
    bad[13] = f32::NAN;
    write(&f.k, &[1, 5, 2, 4], &bad);
    refused(
        f.run(&[Path::new("--check-finite")]),
        "k holds a non-finite value (NaN) at flat index 13",
    );
    // Without the check the run goes ahead; every query row attends to key
    // 1 (flat index 13 is key 1, head 1), so head 1's rows are NaN and
    // head 0's are not.
    let (code, err) = f.run(&[]);
    assert_eq!(code, 0, "{err}");
    let o = npy::read_f32(&f.o).unwrap();
    for row in 0..3 {
        assert!(o.data[row * 8..row * 8 + 4].iter().all(|x| x.is_finite()));
        assert!(o.data[row * 8 + 4..row * 8 + 8].iter().all(|x| x.is_nan()));
    }
}
