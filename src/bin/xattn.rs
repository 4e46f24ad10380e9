//! `xattn`: adapter info, one-off runs on .npy files, correctness checks and
//! the bench harness.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xattn::bench::{self, BenchOptions};
use xattn::npy;
use xattn::{AttentionProblem, Context, ContextOptions, Error, TileOverride};

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
    Info,
    /// Attention on .npy inputs (float32, C order, BSHD).
    ///
    /// Example: xattn run --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy
    Run {
        /// Queries [B, n_q, H, d].
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
        /// Softmax scale (default 1/sqrt(d)).
        #[arg(long)]
        scale: Option<f32>,
        /// Compute with the f64 CPU reference instead of the GPU.
        #[arg(long)]
        reference: bool,
    },
    /// Checks the fused kernel against the f64 reference on a shape grid.
    Check {
        /// Every third case only.
        #[arg(long)]
        quick: bool,
    },
    /// Times fused vs naive vs CPU reference.
    ///
    /// Example: xattn bench --shape 1,8,8,2048,2048,64
    Bench {
        /// One shape B,H,HKV,NQ,NKV,D instead of a suite.
        #[arg(long)]
        shape: Option<String>,
        /// Suite: seeds (the literature's workloads), square (n = 256 … 8192,
        /// d 64) or decode (n_q 1 and 16 against n_kv 512 … 32 768, split-KV
        /// on and off, K/V GB/s, and a 448-step decode loop).
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
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Seeds,
    Square,
    Decode,
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
        Command::Info => info(),
        Command::Run {
            q,
            k,
            v,
            out,
            lse,
            kv_lens,
            scale,
            reference,
        } => run(&RunArgs {
            q,
            k,
            v,
            out,
            lse,
            kv_lens,
            scale,
            reference,
        }),
        Command::Check { quick } => check(quick),
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
        } => bench_cmd(
            shape,
            suite,
            runs,
            TileOverride {
                bc,
                tr,
                wg,
                chunk_keys: None,
                variant: variant.map(VariantArg::variant),
                splits,
            },
            !no_naive,
        ),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn info() -> Result<ExitCode, Error> {
    let opts = ContextOptions::default();
    for a in Context::adapters(&opts) {
        let i = a.get_info();
        println!(
            "adapter: {} ({:?}, {:?}, driver {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        );
    }
    let ctx = Context::with_options(&opts)?;
    let c = ctx.caps();
    println!(
        "chosen: {} ({:?}): hardware adapters first, then native APIs before GL",
        c.info.name, c.info.backend
    );
    println!(
        "f16: {}  subgroups: {} (size {}..{})  timestamps: {}",
        c.shader_f16, c.subgroups, c.subgroup_min_size, c.subgroup_max_size, c.timestamps
    );
    println!(
        "workgroup storage: {} B  invocations: {}  max storage binding: {} B",
        c.max_workgroup_storage, c.max_invocations, c.max_storage_binding
    );
    let p = AttentionProblem::new(1, 8, 2048, 2048, 64);
    let plan = xattn::plan(&p, c, TileOverride::default())?;
    println!("plan for 2048x2048 d64: {}", plan.why);
    let probe = bench::probe(&ctx)?;
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
    scale: Option<f32>,
    reference: bool,
}

fn shape_err(name: &str, got: &[usize], want: &str) -> Error {
    Error::Npy {
        path: name.to_string(),
        reason: format!("shape {got:?} does not fit: expected {want}"),
    }
}

fn run(a: &RunArgs) -> Result<ExitCode, Error> {
    let q = npy::read_f32(&a.q)?;
    let k = npy::read_f32(&a.k)?;
    let v = npy::read_f32(&a.v)?;
    let rank4 = |arr: &npy::Array<f32>, name: &str, want: &str| -> Result<[usize; 4], Error> {
        <[usize; 4]>::try_from(arr.shape.as_slice()).map_err(|_| shape_err(name, &arr.shape, want))
    };
    let [b, nq, h, d] = rank4(&q, "q", "[B, n_q, H, d]")?;
    let [kb, nkv, hkv, kd] = rank4(&k, "k", "[B, n_kv, H_kv, d]")?;
    let want_k = format!("[{b}, n_kv, H_kv, {d}] (batch and d of q)");
    if kb != b || kd != d {
        return Err(shape_err("k", &k.shape, &want_k));
    }
    let [vb, vn, vh, dv] = rank4(&v, "v", "[B, n_kv, H_kv, d_v]")?;
    let want_v = format!("[{b}, {nkv}, {hkv}, d_v] (B, n_kv, H_kv of k)");
    if (vb, vn, vh) != (b, nkv, hkv) {
        return Err(shape_err("v", &v.shape, &want_v));
    }
    let lens: Option<Vec<u32>> = match &a.kv_lens {
        None => None,
        Some(path) => {
            let l = npy::read_int(path)?;
            if l.shape != [b] {
                return Err(shape_err("kv_lens", &l.shape, &format!("[{b}]")));
            }
            let mut out = Vec::with_capacity(b);
            for (i, &x) in l.data.iter().enumerate() {
                if x < 0 || x as usize > nkv {
                    return Err(Error::KvLenTooLong {
                        batch: i,
                        got: x,
                        n_kv: nkv,
                    });
                }
                out.push(x as u32);
            }
            Some(out)
        }
    };
    let mut p = AttentionProblem::new(b, h, nq, nkv, d)
        .with_kv_heads(hkv)
        .with_head_dim_v(dv)
        .with_kv_lens(lens.is_some());
    if let Some(s) = a.scale {
        p = p.with_scale(s);
    }
    p.validate()?;
    let (o, lse) = if a.reference {
        let r = xattn::reference::attention(&p, &q.data, &k.data, &v.data, lens.as_deref())?;
        (
            r.o.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
            r.lse.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
        )
    } else {
        let ctx = Context::new()?;
        let r = ctx.attention(&p, &q.data, &k.data, &v.data, lens.as_deref())?;
        (r.o, r.lse)
    };
    npy::write_f32(&a.out, &[b, nq, h, dv], &o)?;
    if let Some(path) = &a.lse {
        npy::write_f32(path, &[b, h, nq], &lse)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(quick: bool) -> Result<ExitCode, Error> {
    let ctx = Context::new()?;
    println!(
        "adapter: {} ({:?})",
        ctx.caps().info.name,
        ctx.caps().info.backend
    );
    let (mut passed, mut failed) = (0, 0);
    for case in xattn::check::grid(quick) {
        let r = xattn::check::check(&ctx, &case.problem, case.kv_lens.as_deref(), case.seed)?;
        let ok = r.passed();
        println!(
            "{:<4} {:<48} O {:.2e} (bound {:.2e})  LSE {:.2e} (bound {:.2e})",
            if ok { "ok" } else { "FAIL" },
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

/// The decode suite: the planner's choice (decode kernel, split-KV by the
/// heuristic), the decode kernel with one split, and the FA-2 tiled kernel
/// with one split (one workgroup per query block, no key parallelism); K/V
/// bytes read per second against the copy probe; then a 448-step loop.
fn decode_cmd(ctx: &Context, opt: &BenchOptions) -> Result<ExitCode, Error> {
    let probe = bench::probe(ctx)?;
    println!(
        "adapter: {} ({:?})  copy probe {:.1} GB/s",
        ctx.caps().info.name,
        ctx.caps().info.backend,
        probe.copy_gbps
    );
    println!(
        "{:<20} {:>9} {:>6} {:>8} {:>6} {:>13} {:>7} {:>10} {:>9} {:>7}",
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
    for (name, p) in bench::decode_suite() {
        let row = match bench::bench_problem(ctx, &p, opt) {
            Err(e @ Error::BindingTooLarge { .. }) => {
                println!("{name:<20} skipped: {e}");
                continue;
            }
            r => r?,
        };
        let gbps = bench::kv_bytes(&p) / (row.fused_ms * 1e-3) / 1e9;
        let one = |variant| TileOverride {
            variant: Some(variant),
            splits: Some(1),
            ..opt.tiles
        };
        let (one_split, _) = bench::time_fused(ctx, &p, one(xattn::FlashVariant::Decode), opt)?;
        let (tiled, _) = bench::time_fused(ctx, &p, one(xattn::FlashVariant::Tiled), opt)?;
        let naive = row.naive_ms.as_ref().ok();
        println!(
            "{:<20} {:>9.3} {:>6} {:>8.2} {:>5.0}% {:>13.3} {:>7.2} {:>10.3} {:>9} {:>7}",
            name,
            row.fused_ms,
            row.plan.splits,
            gbps,
            100.0 * gbps / probe.copy_gbps,
            one_split,
            one_split / row.fused_ms,
            tiled,
            naive.map_or("-".into(), |ms| format!("{ms:.2}")),
            naive.map_or("-".into(), |ms| format!("{:.1}", ms / row.fused_ms)),
        );
    }
    let whisper = AttentionProblem::new(1, 20, 1, 1500, 64);
    let per_step = bench::decode_loop_ms(ctx, &whisper, 448)?;
    println!(
        "Whisper decode loop, 448 steps (1x20, 1x1500, d64, K/V bound once, one submit per step): \
         {per_step:.3} ms per step, {:.2} GB/s of K/V",
        bench::kv_bytes(&whisper) / (per_step * 1e-3) / 1e9
    );
    Ok(ExitCode::SUCCESS)
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

fn bench_cmd(
    shape: Option<String>,
    suite: Suite,
    runs: usize,
    tiles: TileOverride,
    naive: bool,
) -> Result<ExitCode, Error> {
    let ctx = Context::new()?;
    let suite = match (shape, suite) {
        (Some(s), _) => vec![("custom".to_string(), parse_shape(&s)?)],
        (None, Suite::Seeds) => bench::seeds(),
        (None, Suite::Square) => (8..=13)
            .map(|e| {
                let n = 1usize << e;
                (format!("square {n}"), AttentionProblem::new(1, 1, n, n, 64))
            })
            .collect(),
        (None, Suite::Decode) => {
            let opt = BenchOptions {
                runs,
                tiles,
                naive,
                ..Default::default()
            };
            return decode_cmd(&ctx, &opt);
        }
    };
    let probe = bench::probe(&ctx)?;
    println!(
        "adapter: {} ({:?})  FMA probe {:.1} GFLOP/s  copy {:.1} GB/s",
        ctx.caps().info.name,
        ctx.caps().info.backend,
        probe.fma_gflops,
        probe.copy_gbps
    );
    println!(
        "{:<22} {:>26} {:>9} {:>8} {:>6} {:>9} {:>7} {:>9} {:>10}",
        "workload",
        "B×H:Hkv nq×nkv d",
        "fused ms",
        "GFLOP/s",
        "%peak",
        "naive ms",
        "×naive",
        "CPU ms",
        "tiles"
    );
    let opt = BenchOptions {
        runs,
        tiles,
        naive,
        ..Default::default()
    };
    for (name, p) in suite {
        let r = match bench::bench_problem(&ctx, &p, &opt) {
            Err(e @ Error::BindingTooLarge { .. }) => {
                println!("{name:<22} skipped: {e}");
                continue;
            }
            r => r?,
        };
        let gf = r.fused_gflops();
        let naive = r
            .naive_ms
            .as_ref()
            .map_or("-".to_string(), |ms| format!("{ms:.2}"));
        let speedup = r
            .naive_ms
            .as_ref()
            .map_or("-".to_string(), |ms| format!("{:.1}", ms / r.fused_ms));
        let cpu = r
            .cpu_ms
            .as_ref()
            .map_or("-".to_string(), |ms| format!("{ms:.1}"));
        println!(
            "{:<22} {:>26} {:>9.3} {:>8.1} {:>5.0}% {:>9} {:>7} {:>9} {:>10}",
            name,
            format!(
                "{}×{}:{} {}×{} d{}",
                p.batch, p.heads, p.kv_heads, p.n_q, p.n_kv, p.head_dim
            ),
            r.fused_ms,
            gf,
            100.0 * gf / probe.fma_gflops,
            naive,
            speedup,
            cpu,
            format!("{}x{}/{}", r.plan.br, r.plan.bc, r.plan.tr)
        );
    }
    Ok(ExitCode::SUCCESS)
}
