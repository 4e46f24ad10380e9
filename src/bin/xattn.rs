//! `xattn`: adapter info, one-off runs on .npy files, correctness checks and
//! the bench harness.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xattn::bench::{self, BenchOptions};
use xattn::npy;
use xattn::report::{DecodeFigures, Report, ReportRow};
use xattn::{
    pack_mask, AttentionProblem, Context, ContextOptions, Error, FlashAttention, MaskShape, Masks,
    TileOverride, VarLen, Window,
};
use xattn::{Dtype, FlashVariant};

#[derive(Parser)]
#[command(
    name = "xattn",
    version,
    about = "Fused cross-attention kernels on wgpu: info, run, check, bench"
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
    Info {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Attention on .npy inputs (float32 or float16, C order, BSHD).
    ///
    /// Examples: xattn run --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy ·
    /// xattn run … --causal --q-lens ql.npy --kv-lens kl.npy · xattn run … --mask m.npy ·
    /// xattn run --q q.npy (packed [total_q, H, d]) … --cu-seqlens-q cq.npy --cu-seqlens-k ck.npy
    Run {
        /// Queries [B, n_q, H, d] ([total_q, H, d] with --cu-seqlens-q).
        #[arg(long)]
        q: PathBuf,
        /// Keys [B, n_kv, H_kv, d].
        #[arg(long)]
        k: PathBuf,
        /// Values [B, n_kv, H_kv, d_v].
        #[arg(long)]
        v: PathBuf,
        /// Output O [B, n_q, H, d_v].
        #[arg(long)]
        out: PathBuf,
        /// Also write LSE [B, H, n_q] (natural log).
        #[arg(long)]
        lse: Option<PathBuf>,
        /// Per-batch key lengths [B], int32 or int64.
        #[arg(long)]
        kv_lens: Option<PathBuf>,
        /// Per-batch query lengths [B], int32 or int64: rows past them get O = 0.
        #[arg(long)]
        q_lens: Option<PathBuf>,
        /// Packed batch: cumulative query rows [B+1] (int32/int64); q and o
        /// are then [total_q, H, d], lse [H, total_q].
        #[arg(long, requires = "cu_seqlens_k")]
        cu_seqlens_q: Option<PathBuf>,
        /// Packed batch: cumulative key rows [B+1]; k and v [total_kv, H_kv, d].
        #[arg(long, requires = "cu_seqlens_q")]
        cu_seqlens_k: Option<PathBuf>,
        /// Additive float32 bias [B|1, H|1, n_q|1, n_kv] (-inf hides a key).
        #[arg(long, conflicts_with = "mask")]
        bias: Option<PathBuf>,
        /// Boolean mask [B|1, H|1, n_q|1, n_kv], true = attend (bool or int).
        #[arg(long)]
        mask: Option<PathBuf>,
        /// Causal, aligned bottom-right (key j visible to query i iff
        /// j <= i + n_kv - n_q), as flash-attn; PyTorch's is_causal is top-left.
        #[arg(long, conflicts_with = "window")]
        causal: bool,
        /// Sliding window L,R: query i sees keys i+n_kv-n_q-L ..= i+n_kv-n_q+R;
        /// -1 for no limit on that side.
        #[arg(long, allow_hyphen_values = true)]
        window: Option<String>,
        /// Softmax scale (default 1/sqrt(d)).
        #[arg(long)]
        scale: Option<f32>,
        /// Compute with the f64 CPU reference instead of the GPU.
        #[arg(long)]
        reference: bool,
        /// Storage type on the device: float16 .npy inputs mean f16 (and O
        /// is written as float16); with float32 files, f16 or bf16 converts
        /// on the way in and O back to float32 on the way out.
        #[arg(long, value_enum)]
        dtype: Option<DtypeArg>,
    },
    /// Checks the fused kernel against the f64 reference on a shape grid.
    ///
    /// Prints one line per case and "N passed, N failed"; exit code 1 if any
    /// case fails. Example: xattn check --quick
    Check {
        /// Every third case only.
        #[arg(long)]
        quick: bool,
        /// One storage type instead of all three (f32, f16, bf16).
        #[arg(long, value_enum)]
        dtype: Option<DtypeArg>,
    },
    /// Times fused vs naive vs CPU reference (the harness).
    ///
    /// Examples: xattn bench (the seeds suite) · xattn bench --suite decode ·
    /// xattn bench --shape 1,8,8,2048,2048,64 --runs 10 · xattn bench --json
    /// out.json --svg chart.svg
    Bench {
        /// One shape B,H,HKV,NQ,NKV,D instead of a suite.
        #[arg(long)]
        shape: Option<String>,
        /// Suite: seeds (the literature's workloads), square (n = 256 … 8192,
        /// d 64), decode (n_q 1 and 16 against n_kv 512 … 32 768, split-KV
        /// on and off, K/V GB/s, and a 448-step decode loop) or masks (block
        /// skipping on and off: causal 2k², a sliding window, 50% padding).
        #[arg(long, value_enum, default_value_t = Suite::Seeds)]
        suite: Suite,
        /// Timed runs per kernel.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Force Bc (key rows per block).
        #[arg(long)]
        bc: Option<u32>,
        /// Force rows per invocation.
        #[arg(long)]
        tr: Option<u32>,
        /// Force invocations per workgroup.
        #[arg(long)]
        wg: Option<u32>,
        /// Skip the naive kernel.
        #[arg(long)]
        no_naive: bool,
        /// Force the fused kernel's variant: tiled, decode, or lanes (CPU
        /// adapters with fixed-size subgroups, e.g. lavapipe).
        #[arg(long, value_enum)]
        variant: Option<VariantArg>,
        /// Force the number of key splits (split-KV); 1 turns splitting off.
        #[arg(long)]
        splits: Option<u32>,
        /// Force the workgroup order's stride (1: plain order; the planner
        /// uses 16 on CPU adapters for masked or padded problems).
        #[arg(long)]
        grid_stride: Option<u32>,
        /// Storage type of q, k, v and o; for f16/bf16 the table adds the
        /// speed-up over the same kernel in f32 (the naive baseline is f32-only).
        #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
        dtype: DtypeArg,
        /// Write every figure, the adapter and the versions as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw a bar chart of GFLOP/s per shape and kernel (SVG).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    fn dtype(self) -> Dtype {
        match self {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::Bf16,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Seeds,
    Square,
    Decode,
    Masks,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VariantArg {
    Tiled,
    Decode,
    Lanes,
}

impl VariantArg {
    fn variant(self) -> xattn::FlashVariant {
        match self {
            VariantArg::Tiled => xattn::FlashVariant::Tiled,
            VariantArg::Decode => xattn::FlashVariant::Decode,
            VariantArg::Lanes => xattn::FlashVariant::Lanes,
        }
    }
}

/// Exit codes: 0 ok, 1 a check failed, 2 bad input or no device.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Info { json } => info(json),
        Command::Run {
            q,
            k,
            v,
            out,
            lse,
            kv_lens,
            q_lens,
            cu_seqlens_q,
            cu_seqlens_k,
            bias,
            mask,
            causal,
            window,
            scale,
            reference,
            dtype,
        } => run(&RunArgs {
            q,
            k,
            v,
            out,
            lse,
            kv_lens,
            q_lens,
            cu_seqlens: cu_seqlens_q.zip(cu_seqlens_k),
            bias,
            mask,
            causal,
            window,
            scale,
            reference,
            dtype: dtype.map(DtypeArg::dtype),
        }),
        Command::Check { quick, dtype } => check(quick, dtype.map(DtypeArg::dtype)),
        Command::Bench {
            shape,
            suite,
            runs,
            bc,
            tr,
            wg,
            no_naive,
            variant,
            splits,
            grid_stride,
            dtype,
            json,
            svg,
        } => bench_cmd(BenchArgs {
            shape,
            suite,
            dtype: dtype.dtype(),
            opt: BenchOptions {
                runs,
                tiles: TileOverride {
                    bc,
                    tr,
                    wg,
                    chunk_keys: None,
                    variant: variant.map(VariantArg::variant),
                    splits,
                    packed_f16: None,
                    block_skip: None,
                    grid_stride,
                },
                naive: !no_naive,
                ..Default::default()
            },
            json,
            svg,
        }),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn info(json: bool) -> Result<ExitCode, Error> {
    let opts = ContextOptions::default();
    let adapter_json = |i: &xattn::wgpu::AdapterInfo| {
        serde_json::json!({
            "name": i.name, "backend": format!("{:?}", i.backend),
            "device_type": format!("{:?}", i.device_type),
            "driver": i.driver, "driver_info": i.driver_info,
        })
    };
    let adapters: Vec<_> = Context::adapters(&opts)
        .iter()
        .map(|a| a.get_info())
        .collect();
    let why = "hardware adapters first, then native APIs before GL";
    let ctx = Context::with_options(&opts)?;
    let c = ctx.caps();
    let p = AttentionProblem::new(1, 8, 2048, 2048, 64);
    let plan = xattn::plan(&p, c, TileOverride::default())?;
    let decode = AttentionProblem::new(1, 20, 1, 1500, 64);
    let decode_plan = xattn::plan(&decode, c, TileOverride::default())?;
    let probe = bench::probe(&ctx)?;
    if json {
        let doc = serde_json::json!({
            "schema": "xattn-info/1",
            "xattn_version": env!("CARGO_PKG_VERSION"),
            "wgpu_version": xattn::report::WGPU_VERSION,
            "adapters": adapters.iter().map(adapter_json).collect::<Vec<_>>(),
            "chosen": adapter_json(&c.info),
            "why": why,
            "features": {
                "shader_f16": c.shader_f16, "subgroups": c.subgroups,
                "subgroup_min_size": c.subgroup_min_size, "subgroup_max_size": c.subgroup_max_size,
                "timestamps": c.timestamps,
            },
            "limits": {
                "max_workgroup_storage_bytes": c.max_workgroup_storage,
                "max_invocations": c.max_invocations,
                "max_storage_binding_bytes": c.max_storage_binding,
                "max_buffer_bytes": c.max_buffer_size,
                "max_workgroups_per_dim": c.max_workgroups_per_dim,
            },
            "plans": {
                "square_2k_d64": plan.why,
                "whisper_decode_step": decode_plan.why,
            },
            "probe": { "fma_gflops": probe.fma_gflops, "copy_gbps": probe.copy_gbps },
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
        return Ok(ExitCode::SUCCESS);
    }
    for i in &adapters {
        println!(
            "adapter: {} ({:?}, {:?}, driver {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        );
    }
    println!("chosen: {} ({:?}): {why}", c.info.name, c.info.backend);
    println!(
        "f16: {}  subgroups: {} (size {}..{})  timestamps: {}",
        c.shader_f16, c.subgroups, c.subgroup_min_size, c.subgroup_max_size, c.timestamps
    );
    println!(
        "workgroup storage: {} B  invocations: {}  max storage binding: {} B",
        c.max_workgroup_storage, c.max_invocations, c.max_storage_binding
    );
    println!("plan for 1x8, 2048x2048, d64: {}", plan.why);
    println!(
        "plan for 1x20, 1x1500, d64 (Whisper decode step): {}",
        decode_plan.why
    );
    println!(
        "probe: FMA peak {:.1} GFLOP/s, copy {:.1} GB/s",
        probe.fma_gflops, probe.copy_gbps
    );
    Ok(ExitCode::SUCCESS)
}

struct RunArgs {
    q: PathBuf,
    k: PathBuf,
    v: PathBuf,
    out: PathBuf,
    lse: Option<PathBuf>,
    kv_lens: Option<PathBuf>,
    q_lens: Option<PathBuf>,
    cu_seqlens: Option<(PathBuf, PathBuf)>,
    bias: Option<PathBuf>,
    mask: Option<PathBuf>,
    causal: bool,
    window: Option<String>,
    scale: Option<f32>,
    reference: bool,
    dtype: Option<Dtype>,
}

fn shape_err(name: &str, got: &[usize], want: &str) -> Error {
    Error::Npy {
        path: name.to_string(),
        reason: format!("shape {got:?} does not fit: expected {want}"),
    }
}

/// A 1-D int array of `n` non-negative entries as u32.
fn read_u32s(path: &std::path::Path, name: &str, n: usize) -> Result<Vec<u32>, Error> {
    let l = npy::read_int(path)?;
    if l.shape != [n] {
        return Err(shape_err(name, &l.shape, &format!("[{n}]")));
    }
    l.data
        .iter()
        .map(|&x| {
            u32::try_from(x).map_err(|_| Error::Npy {
                path: path.display().to_string(),
                reason: format!("{name} holds {x}; expected values in 0..=4294967295"),
            })
        })
        .collect()
}

/// The broadcast shape of a [B|1, H|1, n_q|1, n_kv] bias or mask file.
fn mask_shape(name: &str, got: &[usize], p: &AttentionProblem) -> Result<MaskShape, Error> {
    let want = format!("[{}|1, {}|1, {}|1, {}]", p.batch, p.heads, p.n_q, p.n_kv);
    let dims = <[usize; 4]>::try_from(got).map_err(|_| shape_err(name, got, &want))?;
    let full = |i: usize, n: usize| match dims[i] {
        x if x == n => Ok(true),
        1 => Ok(false),
        _ => Err(shape_err(name, got, &want)),
    };
    if dims[3] != p.n_kv {
        return Err(shape_err(name, got, &want));
    }
    Ok(MaskShape {
        batch: full(0, p.batch)?,
        heads: full(1, p.heads)?,
        rows: full(2, p.n_q)?,
    })
}

/// `L,R` with -1 for no limit.
fn parse_window(s: &str) -> Result<Window, Error> {
    let bad = || Error::BadSeqLens {
        name: "window",
        reason: format!("{s:?}: expected L,R (keys before and after the diagonal, -1 = no limit)"),
    };
    let side = |x: &str| -> Result<Option<usize>, Error> {
        match x.trim().parse::<i64>().map_err(|_| bad())? {
            -1 => Ok(None),
            v if v >= 0 => Ok(Some(v as usize)),
            _ => Err(bad()),
        }
    };
    let (l, r) = s.split_once(',').ok_or_else(bad)?;
    Ok(Window {
        left: side(l)?,
        right: side(r)?,
    })
}

fn run(a: &RunArgs) -> Result<ExitCode, Error> {
    let (q, q16) = npy::read_float(&a.q)?;
    let (k, k16) = npy::read_float(&a.k)?;
    let (v, v16) = npy::read_float(&a.v)?;
    let name = |f16: bool| if f16 { "float16" } else { "float32" };
    for (arr, path, f16) in [("k", &a.k, k16), ("v", &a.v, v16)] {
        if f16 != q16 {
            return Err(Error::Npy {
                path: path.display().to_string(),
                reason: format!(
                    "{arr} is {} but q is {}; give q, k and v in one dtype",
                    name(f16),
                    name(q16)
                ),
            });
        }
    }
    let dtype = match (q16, a.dtype) {
        (true, None | Some(Dtype::F16)) => Dtype::F16,
        (true, Some(d)) => {
            return Err(Error::Npy {
                path: a.q.display().to_string(),
                reason: format!("float16 inputs cannot run as --dtype {d}; give float32 files"),
            })
        }
        (false, d) => d.unwrap_or(Dtype::F32),
    };
    // Packed batches: [total, H, d] tensors, read as BSHD with B = 1.
    let packed = a.cu_seqlens.is_some();
    let rank = |arr: &npy::Array<f32>, name: &str, want4: &str, want3: &str| {
        let s = &arr.shape;
        match (packed, s.len()) {
            (false, 4) => Ok([s[0], s[1], s[2], s[3]]),
            (true, 3) => Ok([1, s[0], s[1], s[2]]),
            _ => Err(shape_err(name, s, if packed { want3 } else { want4 })),
        }
    };
    let [b, nq, h, d] = rank(&q, "q", "[B, n_q, H, d]", "[total_q, H, d]")?;
    let [kb, nkv, hkv, kd] = rank(&k, "k", "[B, n_kv, H_kv, d]", "[total_kv, H_kv, d]")?;
    let want_k = format!("[{b}, n_kv, H_kv, {d}] (batch and d of q)");
    if kb != b || kd != d {
        return Err(shape_err("k", &k.shape, &want_k));
    }
    let [vb, vn, vh, dv] = rank(&v, "v", "[B, n_kv, H_kv, d_v]", "[total_kv, H_kv, d_v]")?;
    let want_v = format!("[{b}, {nkv}, {hkv}, d_v] (B, n_kv, H_kv of k)");
    if (vb, vn, vh) != (b, nkv, hkv) {
        return Err(shape_err("v", &v.shape, &want_v));
    }
    // The batch as the kernels see it: packed batches take B, the longest
    // sequences and the totals from cu_seqlens.
    let cu = match &a.cu_seqlens {
        None => None,
        Some((cq, ck)) => {
            let nq_file = npy::read_int(cq)?.shape;
            let n = nq_file.first().copied().unwrap_or(0);
            if nq_file.len() != 1 || n < 2 {
                return Err(shape_err("cu_seqlens_q", &nq_file, "[B+1] with B >= 1"));
            }
            Some((
                read_u32s(cq, "cu_seqlens_q", n)?,
                read_u32s(ck, "cu_seqlens_k", n)?,
            ))
        }
    };
    let mut p = match &cu {
        None => AttentionProblem::new(b, h, nq, nkv, d),
        Some((cq, ck)) => {
            let (vl, max_q, max_k) = VarLen::from_cu_seqlens(cq, ck);
            if (vl.total_q, vl.total_kv) != (nq, nkv) {
                return Err(Error::BadSeqLens {
                    name: "cu_seqlens_q",
                    reason: format!(
                        "cu_seqlens end at {} and {}, but q and k hold {nq} and {nkv} rows",
                        vl.total_q, vl.total_kv
                    ),
                });
            }
            AttentionProblem::new(cq.len() - 1, h, max_q, max_k, d).with_varlen(vl)
        }
    }
    .with_kv_heads(hkv)
    .with_head_dim_v(dv)
    .with_dtype(dtype);
    let batch = p.batch;
    let kv_lens = a
        .kv_lens
        .as_ref()
        .map(|f| read_u32s(f, "kv_lens", batch))
        .transpose()?;
    let q_lens = a
        .q_lens
        .as_ref()
        .map(|f| read_u32s(f, "q_lens", batch))
        .transpose()?;
    p = p
        .with_kv_lens(kv_lens.is_some())
        .with_q_lens(q_lens.is_some());
    if let Some(s) = a.scale {
        p = p.with_scale(s);
    }
    if a.causal {
        p = p.with_causal();
    }
    if let Some(w) = &a.window {
        p = p.with_window(parse_window(w)?);
    }
    let bias = match &a.bias {
        None => None,
        Some(path) => {
            let x = npy::read_f32(path)?;
            p = p.with_bias(mask_shape("bias", &x.shape, &p)?);
            Some(x.data)
        }
    };
    let bits = match &a.mask {
        None => None,
        Some(path) => {
            let x = npy::read_bool(path)?;
            p = p.with_bool_mask(mask_shape("mask", &x.shape, &p)?);
            Some(pack_mask(&x.data, p.n_kv))
        }
    };
    p.validate()?;
    let masks = Masks {
        kv_lens: kv_lens.as_deref(),
        q_lens: q_lens.as_deref(),
        cu_seqlens_q: cu.as_ref().map(|c| c.0.as_slice()),
        cu_seqlens_k: cu.as_ref().map(|c| c.1.as_slice()),
        bias: bias.as_deref(),
        mask: bits.as_deref(),
    };
    // What the device stores: the inputs rounded to the storage type.
    let round = |x| dtype.round_all(x);
    let (q, k, v) = (round(q.data), round(k.data), round(v.data));
    let (o, lse) = if a.reference {
        let r = xattn::reference::attention_masked(&p, &q, &k, &v, &masks)?;
        (
            r.o.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
            r.lse.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
        )
    } else {
        let ctx = Context::new()?;
        let r = FlashAttention::new(&ctx, &p)?.run_with(&q, &k, &v, &masks)?;
        (r.o, r.lse)
    };
    let (o_shape, lse_shape) = if packed {
        (vec![nq, h, dv], vec![h, nq])
    } else {
        (vec![b, nq, h, dv], vec![b, h, nq])
    };
    if q16 {
        npy::write_f16(&a.out, &o_shape, &o)?;
    } else {
        npy::write_f32(&a.out, &o_shape, &o)?;
    }
    if let Some(path) = &a.lse {
        npy::write_f32(path, &lse_shape, &lse)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(quick: bool, dtype: Option<Dtype>) -> Result<ExitCode, Error> {
    let ctx = Context::new()?;
    println!(
        "adapter: {} ({:?})",
        ctx.caps().info.name,
        ctx.caps().info.backend
    );
    let (mut passed, mut failed) = (0, 0);
    let dtypes = dtype.map_or(vec![Dtype::F32, Dtype::F16, Dtype::Bf16], |d| vec![d]);
    for (dtype, case) in dtypes
        .iter()
        .flat_map(|&d| xattn::check::grid(quick).into_iter().map(move |c| (d, c)))
    {
        let p = case.problem.with_dtype(dtype);
        let r = xattn::check::check(&ctx, &p, case.kv_lens.as_deref(), case.seed)?;
        let ok = r.passed();
        println!(
            "{:<4} {:<4} {:<48} O {:.2e} (bound {:.2e})  LSE {:.2e} (bound {:.2e})",
            if ok { "ok" } else { "FAIL" },
            dtype.to_string(),
            case.name(),
            r.fused.o,
            r.o_bound(),
            r.fused.lse,
            r.lse_bound()
        );
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn parse_shape(s: &str) -> Result<AttentionProblem, Error> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Npy {
            path: "--shape".into(),
            reason: format!("{s:?}: {e}; expected B,H,HKV,NQ,NKV,D"),
        })?;
    match v.as_slice() {
        &[b, h, hkv, nq, nkv, d] => Ok(AttentionProblem::new(b, h, nq, nkv, d).with_kv_heads(hkv)),
        _ => Err(Error::Npy {
            path: "--shape".into(),
            reason: format!("{s:?} has {} numbers; expected B,H,HKV,NQ,NKV,D", v.len()),
        }),
    }
}

/// What `xattn bench` was asked for.
struct BenchArgs {
    shape: Option<String>,
    suite: Suite,
    dtype: Dtype,
    opt: BenchOptions,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
}

fn bench_cmd(a: BenchArgs) -> Result<ExitCode, Error> {
    let ctx = Context::new()?;
    let (suite_name, shapes) = match (&a.shape, a.suite) {
        (Some(s), _) => ("custom", vec![("custom".to_string(), parse_shape(s)?)]),
        (None, Suite::Seeds) => ("seeds", bench::seeds()),
        (None, Suite::Square) => (
            "square",
            (8..=13)
                .map(|e| {
                    let n = 1usize << e;
                    (format!("square {n}"), AttentionProblem::new(1, 1, n, n, 64))
                })
                .collect(),
        ),
        (None, Suite::Decode) => ("decode", bench::decode_suite()),
        (None, Suite::Masks) => ("masks", Vec::new()),
    };
    // Check the output paths before minutes of measuring.
    for path in a.json.iter().chain(&a.svg) {
        std::fs::write(path, b"").map_err(|e| Error::Npy {
            path: path.display().to_string(),
            reason: format!("cannot write: {e}"),
        })?;
    }
    let decode = a.suite == Suite::Decode && a.shape.is_none();
    let probe = bench::probe(&ctx)?;
    println!(
        "adapter: {} ({:?})  FMA probe {:.1} GFLOP/s  copy {:.1} GB/s",
        ctx.caps().info.name,
        ctx.caps().info.backend,
        probe.fma_gflops,
        probe.copy_gbps
    );
    let masks = a.suite == Suite::Masks && a.shape.is_none();
    if !masks {
        print_header(decode, a.dtype);
    }
    let bar = indicatif::ProgressBar::new(shapes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})")
            .expect("progress template"),
    );
    let mut report = Report {
        suite: suite_name.to_string(),
        runs: a.opt.runs,
        adapter: ctx.caps().info.clone(),
        probe,
        rows: Vec::new(),
        skipped: Vec::new(),
        decode_loop: None,
        skipping: Vec::new(),
    };
    if masks {
        println!(
            "{:<28} {:>8} {:>10} {:>11} {:>8} {:>10} {:>9} {:>9}",
            "workload",
            "visible",
            "skip ms",
            "no-skip ms",
            "speedup",
            "dense ms",
            "GFLOP/s",
            "max diff"
        );
        for w in bench::masks_suite() {
            let r = bench::bench_skipping(&ctx, &w, &a.opt)?;
            println!(
                "{:<28} {:>7.1}% {:>10.2} {:>11.2} {:>7.2}x {:>10.2} {:>9.2} {:>9.1e}",
                w.name,
                100.0 * w.visible_fraction(),
                r.skip_ms,
                r.no_skip_ms,
                r.no_skip_ms / r.skip_ms,
                r.dense_ms,
                r.visible_gflops(),
                r.max_diff
            );
            report.skipping.push(r);
        }
        println!(
            "skip: block skipping on (default); no-skip: every allocated key loaded and masked; \
             dense: same shape, no mask or lengths; GFLOP/s counts visible pairs only"
        );
    }
    for (name, p) in shapes {
        let p = p.with_dtype(a.dtype);
        bar.set_message(name.clone());
        let row = match bench::bench_problem(&ctx, &p, &a.opt) {
            Err(e @ Error::BindingTooLarge { .. }) => {
                bar.suspend(|| println!("{name:<22} skipped: {e}"));
                report.skipped.push((name, e.to_string()));
                bar.inc(1);
                continue;
            }
            r => r?,
        };
        let figures = if decode {
            let one = |variant| TileOverride {
                variant: Some(variant),
                splits: Some(1),
                ..a.opt.tiles
            };
            Some(DecodeFigures {
                one_split_ms: bench::time_fused(&ctx, &p, one(FlashVariant::Decode), &a.opt)?.0,
                fa2_ms: bench::time_fused(&ctx, &p, one(FlashVariant::Tiled), &a.opt)?.0,
            })
        } else {
            None
        };
        let f32_ms = if a.dtype == Dtype::F32 {
            None
        } else {
            let p32 = p.with_dtype(Dtype::F32);
            Some(bench::time_fused(&ctx, &p32, a.opt.tiles, &a.opt)?.0)
        };
        let r = ReportRow {
            name,
            row,
            decode: figures,
            f32_ms,
        };
        bar.suspend(|| print_row(&r, &report.probe));
        report.rows.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Why a column shows "-".
    let mut notes: Vec<String> = Vec::new();
    let mut over_budget: Vec<&str> = Vec::new();
    // Naive skips grouped by reason: (reason, shapes).
    let mut naive_skips: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in &report.rows {
        if let Err(note) = &r.row.naive_ms {
            if note.starts_with("skipped") {
                match naive_skips.iter_mut().find(|(n, _)| n == note) {
                    Some((_, names)) => names.push(&r.name),
                    None => naive_skips.push((note, vec![&r.name])),
                }
            }
        }
        if r.row.cpu_ms.is_err() {
            over_budget.push(&r.name);
        }
    }
    for (note, names) in naive_skips {
        notes.push(format!("naive {note}: {}", names.join(", ")));
    }
    if !over_budget.is_empty() {
        notes.push(format!(
            "CPU reference skipped above {:.1} GFLOP: {}",
            a.opt.cpu_flop_budget / 1e9,
            over_budget.join(", ")
        ));
    }
    for n in &notes {
        println!("note: {n}");
    }
    if decode {
        let whisper = AttentionProblem::new(1, 20, 1, 1500, 64);
        let steps = 448;
        let per_step = bench::decode_loop_ms(&ctx, &whisper, steps)?;
        println!(
            "Whisper decode loop, {steps} steps (1x20, 1x1500, d64, K/V bound once, one submit \
             per step): {per_step:.3} ms per step, {:.2} GB/s of K/V",
            bench::kv_bytes(&whisper) / (per_step * 1e-3) / 1e9
        );
        report.decode_loop = Some((steps, per_step));
    }
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| Error::Npy {
            path: path.display().to_string(),
            reason: format!("cannot write: {e}"),
        })
    };
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report.json()).expect("JSON of plain values");
        write(path, text)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &a.svg {
        write(path, report.svg()?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_header(decode: bool, dtype: Dtype) {
    if dtype != Dtype::F32 {
        println!("storage: {dtype} (×f32: the same fused kernel storing f32, timed in this run)");
    }
    if decode {
        println!(
            "{:<24} {:>9} {:>6} {:>8} {:>6} {:>10} {:>6} {:>10} {:>9} {:>7}",
            "workload",
            "fused ms",
            "splits",
            "K/V GB/s",
            "%copy",
            "1-split ms",
            "×",
            "FA-2 ms",
            "naive ms",
            "×naive"
        );
    } else {
        println!(
            "{:<22} {:>26} {:>9} {:>8} {:>6} {:>9} {:>7} {:>9} {:>10} {:>15}{}",
            "workload",
            "B×H:Hkv nq×nkv d",
            "fused ms",
            "GFLOP/s",
            "%peak",
            "naive ms",
            "×naive",
            "CPU ms",
            "tiles",
            "MiB fused/naive",
            if dtype == Dtype::F32 {
                ""
            } else {
                "    f32 ms   ×f32"
            }
        );
    }
}

fn print_row(r: &ReportRow, probe: &bench::Probe) {
    let (row, p) = (&r.row, &r.row.problem);
    let naive = row.naive_ms.as_ref().ok();
    let naive_ms = naive.map_or("-".to_string(), |ms| format!("{ms:.2}"));
    let speedup = naive.map_or("-".to_string(), |ms| format!("{:.1}", ms / row.fused_ms));
    if let Some(d) = r.decode {
        let gbps = bench::kv_bytes(p) / (row.fused_ms * 1e-3) / 1e9;
        println!(
            "{:<24} {:>9.3} {:>6} {:>8.2} {:>5.0}% {:>10.3} {:>6.2} {:>10.3} {:>9} {:>7}",
            r.name,
            row.fused_ms,
            row.plan.splits,
            gbps,
            100.0 * gbps / probe.copy_gbps,
            d.one_split_ms,
            d.one_split_ms / row.fused_ms,
            d.fa2_ms,
            naive_ms,
            speedup,
        );
        return;
    }
    let gf = row.fused_gflops();
    let cpu = row
        .cpu_ms
        .as_ref()
        .map_or("-".to_string(), |ms| format!("{ms:.1}"));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let vs_f32 = r.f32_ms.map_or(String::new(), |ms| {
        format!(" {:>9.3} {:>6.2}", ms, ms / row.fused_ms)
    });
    println!(
        "{:<22} {:>26} {:>9.3} {:>8.1} {:>5.0}% {:>9} {:>7} {:>9} {:>10} {:>15}{vs_f32}",
        r.name,
        format!(
            "{}×{}:{} {}×{} d{}",
            p.batch, p.heads, p.kv_heads, p.n_q, p.n_kv, p.head_dim
        ),
        row.fused_ms,
        gf,
        100.0 * gf / probe.fma_gflops,
        naive_ms,
        speedup,
        cpu,
        format!("{}x{}/{}", row.plan.br, row.plan.bc, row.plan.tr),
        format!("{:.1}/{:.1}", mib(row.fused_bytes), mib(row.naive_bytes)),
    );
}
