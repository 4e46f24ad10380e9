//! Helpers of the command-line tests (tests/cli.rs, tests/cli_bench.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use xattn::harness::npy;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xattn"))
}

pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xattn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn write(path: &Path, shape: &[usize], data: &[f32]) {
    npy::write_f32(path, shape, data).unwrap();
}

/// Stdout of a command that must have succeeded (else both streams in the
/// failure message).
pub fn stdout_of_success(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

pub fn write_nd<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(
            std::fs::File::create(path).unwrap(),
        ))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// The .npy files of one `xattn run`: inputs q, k, v and outputs o, lse.
pub struct RunFiles {
    pub q: PathBuf,
    pub k: PathBuf,
    pub v: PathBuf,
    pub o: PathBuf,
    pub lse: PathBuf,
}

impl RunFiles {
    pub fn new(tag: &str) -> Self {
        let f = |n: &str| tmp(&format!("{tag}{n}.npy"));
        Self {
            q: f("q"),
            k: f("k"),
            v: f("v"),
            o: f("o"),
            lse: f("lse"),
        }
    }

    /// `xattn run` on these files with extra arguments; (exit code, stderr).
    pub fn run(&self, extra: &[&Path]) -> (i32, String) {
        let o = bin()
            .args(["run", "--q"])
            .arg(&self.q)
            .arg("--k")
            .arg(&self.k)
            .arg("--v")
            .arg(&self.v)
            .arg("--out")
            .arg(&self.o)
            .arg("--lse")
            .arg(&self.lse)
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}
