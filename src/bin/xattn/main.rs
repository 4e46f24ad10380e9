//! `xattn`: adapter info, one-off runs on .npy files, correctness checks and
//! the bench harness. One file per command, each with its clap `Args`.

mod bench;
mod check;
mod info;
mod layer;
mod maps;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xattn::{Dtype, Error};

#[derive(Parser)]
#[command(
    name = "xattn",
    version,
    about = "Fused cross-attention kernels on wgpu: info, run, layer, check, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Adapters, the chosen one and why, features, limits, tile plan, probes.
    ///
    /// Examples: xattn info · xattn info --json · WGPU_BACKEND=gl xattn info
    Info(info::InfoArgs),
    /// Attention on .npy inputs (float32 or float16, C order, BSHD).
    ///
    /// Examples: xattn run --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy ·
    /// xattn run … --causal --q-lens ql.npy --kv-lens kl.npy · xattn run … --mask m.npy ·
    /// xattn run --q q.npy (packed [total_q, H, d]) … --cu-seqlens-q cq.npy --cu-seqlens-k ck.npy ·
    /// xattn run … --probs p.npy --probs-heads 3,5 --svg maps.svg
    Run(Box<run::RunArgs>),
    /// A cross-attention layer from .safetensors weights on .npy inputs.
    ///
    /// Examples: xattn layer --weights w.safetensors --prefix
    /// model.decoder.layers.0.encoder_attn. --heads 20 --x x.npy --context c.npy
    /// --out y.npy · … --probs p.npy --probs-heads 3 --svg map.svg · … --dtype f16
    Layer(Box<layer::LayerArgs>),
    /// Checks the fused kernel against the f64 reference on a shape grid.
    ///
    /// Prints one line per case and "N passed, N failed"; exit code 1 if any
    /// case fails. Example: xattn check --quick
    Check(check::CheckArgs),
    /// Times fused vs naive vs CPU reference (the harness).
    ///
    /// Examples: xattn bench (the seeds suite) · xattn bench --suite decode ·
    /// xattn bench --shape 1,8,8,2048,2048,64 --runs 10 · xattn bench --json
    /// out.json --svg chart.svg
    Bench(bench::BenchArgs),
}

/// Storage types on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    pub fn dtype(self) -> Dtype {
        match self {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::Bf16,
        }
    }
}

/// Writes `text` to `path`, or a typed error naming the file.
pub fn write_file(path: &std::path::Path, text: &[u8]) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

/// The file a path names, resolved (its directory, for a file not yet
/// written), so that two spellings of one file compare equal.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    }
}

/// Refuses an output that names an input or another output: a run must
/// never overwrite what it reads.
pub fn distinct_outputs(
    inputs: &[&std::path::Path],
    outputs: &[(&str, &std::path::Path)],
) -> Result<(), Error> {
    let ins: Vec<_> = inputs.iter().map(|p| resolved(p)).collect();
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    for (flag, out) in outputs {
        let r = resolved(out);
        if ins.contains(&r) || seen.contains(&r) {
            return Err(Error::BadArgument {
                name: (*flag).into(),
                reason: format!(
                    "{} is also an input or another output of this run; give a new file",
                    out.display()
                ),
            });
        }
        seen.push(r);
    }
    Ok(())
}

/// `--check-finite`: refuses NaN or ±∞ in an input, naming the tensor and
/// the position.
pub fn check_finite(on: bool, tensors: &[(&'static str, &[f32])]) -> Result<(), Error> {
    if on {
        for (name, data) in tensors {
            xattn::check_finite(name, data)?;
        }
    }
    Ok(())
}

/// Keeps the adapter search quiet on a headless machine. Mesa's implicit
/// Vulkan layer `VK_LAYER_MESA_device_select` connects to a Wayland display
/// to rank devices; with none, libwayland prints "error: XDG_RUNTIME_DIR is
/// invalid or not set in the environment." for every Vulkan instance (four
/// per run), an error where there is none. With no display to select for,
/// the layer has nothing to do: disable it the way its manifest offers
/// (`NODEVICE_SELECT=1`), unless the user set that variable.
fn quiet_headless_device_select() {
    let display = ["WAYLAND_DISPLAY", "DISPLAY", "XDG_RUNTIME_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !display && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY (edition 2024 wording): called first thing in main, before
        // any thread exists that could read the environment concurrently.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// Exit codes: 0 ok, 1 a check failed, 2 bad input or no device.
fn main() -> ExitCode {
    quiet_headless_device_select();
    let r = match Cli::parse().command {
        Command::Info(a) => info::info(&a),
        Command::Run(a) => run::run(&a),
        Command::Layer(a) => layer::layer(&a),
        Command::Check(a) => check::check(&a),
        Command::Bench(a) => bench::bench(&a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
